"""Packed sets on an S3-compatible store: a real local server (moto's server mode on 127.0.0.1), reached
through s3fs and a TCP proxy that can cut a response in the middle of its body.

pack writes to s3://, fit and report read from it; a dropped read is retried and the result is the same
as a local copy's; wrong credentials, a missing bucket, a missing prefix and a folder that is not a
packed set are one line and exit code 2, with nothing written and no credential shown.
"""

from __future__ import annotations

import json
import socket
import threading
import urllib.request
from pathlib import Path

import lightning  # noqa: F401  (imported at collection: its log handler keeps pytest's stream, not one test's capsys)
import numpy as np
import pytest

pytest.importorskip("s3fs")
boto3 = pytest.importorskip("boto3")
moto_server = pytest.importorskip("moto.server")

from geotrainr.cli import main  # noqa: E402
from geotrainr.data.packed.location import PackError  # noqa: E402
from geotrainr.data.packed.pack import pack  # noqa: E402
from geotrainr.data.packed.reader import PackedSet  # noqa: E402

from conftest import build_tiny_index  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
REGION = "us-east-1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def close(*socks: socket.socket) -> None:
    """Drop connections at once (a bare close leaves a peer thread's recv, and so the connection, open)."""
    for sock in socks:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()


class FlakyProxy:
    """Forwards 127.0.0.1:port to the server; when armed, cuts the next ``cuts`` ranged-read responses
    (those with a Content-Range header, i.e. every data read) after ``body`` bytes of their body."""

    def __init__(self, upstream: int, body: int = 16):
        self.upstream, self.body = upstream, body
        self.cuts_left = 0
        self.cut = 0
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def arm(self, cuts: int) -> None:
        with self._lock:
            self.cuts_left, self.cut = cuts, 0

    def _take_cut(self) -> bool:
        with self._lock:
            if self.cuts_left <= 0:
                return False
            self.cuts_left -= 1
            self.cut += 1
            return True

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.upstream))
            threading.Thread(target=self._up, args=(client, server), daemon=True).start()
            threading.Thread(target=self._down, args=(server, client), daemon=True).start()

    @staticmethod
    def _up(client: socket.socket, server: socket.socket) -> None:
        try:
            while data := client.recv(65536):
                server.sendall(data)
        except OSError:
            pass
        finally:
            close(client, server)

    def _down(self, server: socket.socket, client: socket.socket) -> None:
        seen, remaining = b"", None  # recent header bytes; body bytes left before the cut
        try:
            while data := server.recv(65536):
                if remaining is None and self.cuts_left > 0:
                    window = seen + data.lower()
                    i = window.find(b"content-range:")
                    j = window.find(b"\r\n\r\n", i) if i >= 0 else -1
                    if j >= 0:
                        remaining, seen = j + 4 + self.body - len(seen), b""
                    else:
                        seen = window[-4096:]
                if remaining is not None:
                    if remaining < len(data) and self._take_cut():
                        client.sendall(data[:remaining])
                        return  # the finally clause drops both connections mid-body
                    remaining = None if remaining < len(data) else remaining - len(data)
                client.sendall(data)
        except OSError:
            pass
        finally:
            close(client, server)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """moto's S3 server on a free port, with an IAM user allowed s3:*, behind a flaky proxy; the user's
    credentials and the proxy's endpoint in the environment, as a user would set them."""
    import logging

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one log line per request otherwise
    port = free_port()
    srv = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    srv.start()
    endpoint = f"http://127.0.0.1:{port}"
    admin = dict(endpoint_url=endpoint, region_name=REGION, aws_access_key_id="admin", aws_secret_access_key="admin")
    iam = boto3.client("iam", **admin)
    iam.create_user(UserName="trainer")
    iam.put_user_policy(UserName="trainer", PolicyName="s3", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
    key = iam.create_access_key(UserName="trainer")["AccessKey"]
    proxy = FlakyProxy(port)
    home = tmp_path_factory.mktemp("aws")
    with pytest.MonkeyPatch.context() as env:
        for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_SESSION_TOKEN"):
            env.delenv(name, raising=False)
        env.setenv("AWS_CONFIG_FILE", str(home / "config"))  # none: a developer's own profile stays out
        env.setenv("AWS_SHARED_CREDENTIALS_FILE", str(home / "credentials"))
        env.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
        env.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
        env.setenv("AWS_DEFAULT_REGION", REGION)
        env.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{proxy.port}")
        yield {"endpoint": endpoint, "admin": admin, "key_id": key["AccessKeyId"], "secret": key["SecretAccessKey"],
               "proxy": proxy, "client": boto3.client("s3", **admin)}
    srv.stop()


def enforce_auth(endpoint: str, on: bool) -> None:
    """moto checks signatures and IAM policies only when told to (from the next request on)."""
    req = urllib.request.Request(f"{endpoint}/moto-api/reset-auth", data=b"0" if on else b"inf", method="POST",
                                 headers={"Content-Type": "text/plain"})
    urllib.request.urlopen(req).read()


def fresh_clients() -> None:
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()  # an instance keeps the credentials it was made with


@pytest.fixture
def s3(server):
    """A fresh, empty bucket."""
    bucket = f"b{free_port()}"
    server["client"].create_bucket(Bucket=bucket)
    fresh_clients()
    server["proxy"].arm(0)
    yield {**server, "bucket": bucket}
    server["proxy"].arm(0)
    fresh_clients()


def keys(s3, prefix: str = "") -> list[str]:
    out = s3["client"].list_objects_v2(Bucket=s3["bucket"], Prefix=prefix)
    return sorted(o["Key"] for o in out.get("Contents", []))


def one_line(capsys, verb: str) -> str:
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"geotrainr {verb}: error: "), captured.err
    assert "Traceback" not in captured.err + captured.out
    return err


FIT = ["--config", str(ROOT / "configs" / "country.yaml"), "--data.init_args.num_workers=0",
       "--data.init_args.batch_size=8", "--model.init_args.backbone=test_efficientnet", "--model.init_args.weights=null",
       "--model.init_args.image_size=32", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
       "--trainer.default_root_dir=runs", "--trainer.max_steps=3", "--trainer.limit_val_batches=1"]


@pytest.fixture(scope="module")
def trained(server, tmp_path_factory) -> dict:
    """The tiny set packed to s3://trained/set (and, identically, to a local folder), and a country model
    trained for two steps on the bucket's copy: the training loader streams its row groups from the server."""
    import lightning as L

    from geotrainr.data import GeoDataModule
    from geotrainr.tasks import CountryClassifier

    base = tmp_path_factory.mktemp("trained")
    server["client"].create_bucket(Bucket="trained")
    fresh_clients()
    index = build_tiny_index(base / "src", n=48)
    url = "s3://trained/set"
    pack(index, url, rows_per_group=4, groups_per_shard=3)
    pack(index, base / "local", rows_per_group=4, groups_per_shard=3)
    dm = GeoDataModule(url, batch_size=8, num_workers=0)
    model = CountryClassifier(countries=dm.countries, backbone="test_efficientnet", weights=None, image_size=32)
    trainer = L.Trainer(accelerator="cpu", max_epochs=1, limit_train_batches=2, limit_val_batches=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=base)
    trainer.fit(model, datamodule=dm)
    assert trainer.global_step == 2 and "val/acc1" in trainer.callback_metrics
    trainer.save_checkpoint(base / "model.ckpt")
    return {"url": url, "ckpt": base / "model.ckpt", "local": PackedSet(base / "local")}


# --- pack, fit, report --------------------------------------------------------------------------


def test_pack_to_s3_reads_back_as_the_same_set_on_disk(s3, tiny_index, tmp_path, capsys):
    url = f"s3://{s3['bucket']}/sets/tiny"
    assert main(["pack", str(tiny_index), "--out", url, "--rows-per-group", "4", "--groups-per-shard", "3",
                 "--workers", "2"]) == 0
    assert f"wrote 48 images in 4 shard(s) to {url}" in capsys.readouterr().out
    assert keys(s3) == ["sets/tiny/_geotrainr_pack.json", *[f"sets/tiny/part-0000{k}.parquet" for k in range(4)]]
    pack(tiny_index, tmp_path / "local", rows_per_group=4, groups_per_shard=3)
    remote, local = PackedSet(url), PackedSet(tmp_path / "local")
    assert remote.manifest["shards"] == local.manifest["shards"] and remote.rows == 48
    for name in ("lat", "lon", "country", "split"):
        np.testing.assert_array_equal(remote.columns()[name], local.columns()[name])
    assert [remote.image_bytes(r) for r in range(48)] == [local.image_bytes(r) for r in range(48)]
    assert main(["pack", "--index", str(tiny_index), "--out", url]) == 2  # a finished pack is never overwritten
    assert "already holds a finished pack" in one_line(capsys, "pack")


def test_report_reads_a_model_trained_on_s3_against_the_bucket(trained, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    fresh_clients()
    url = trained["url"]
    assert main(["report", str(trained["ckpt"]), "--index", url, "--split", "val", "--out", "rep", "--workers", "0"]) == 0
    assert f"country model on {url}, val split: 12 images" in capsys.readouterr().out
    assert f"`{url}`" in (tmp_path / "rep" / "report.md").read_text()
    assert json.loads((tmp_path / "rep" / "metrics.json").read_text())["index"] == url


@pytest.mark.slow
def test_fit_command_on_s3(trained, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fresh_clients()
    assert main(["fit", *FIT, f"--data.init_args.index={trained['url']}"]) == 0
    assert next((tmp_path / "runs").rglob("last.ckpt")).is_file()
    config = next((tmp_path / "runs").rglob("config.yaml")).read_text()
    assert f"index: {trained['url']}" in config and "AWS" not in config


# --- a connection dropped in the middle of a read -----------------------------------------------


def test_a_read_cut_mid_body_is_retried_and_gives_the_same_bytes(server, trained):
    url, local, proxy = trained["url"], trained["local"], server["proxy"]
    fresh_clients()
    proxy.arm(2)  # the manifest: its first two reads are cut after 16 bytes of the body
    remote = PackedSet(url)
    assert proxy.cut == 2 and remote.manifest == local.manifest
    proxy.arm(1)  # the first shard's footer, the first ranged read of columns()
    columns = remote.columns()
    assert proxy.cut == 1
    for name in ("lat", "lon", "country", "split"):
        np.testing.assert_array_equal(columns[name], local.columns()[name])
    assert remote.image_bytes(0) == local.image_bytes(0)  # opens shard 0 (footer) and reads its row group 0
    proxy.arm(1)  # a row group's image column: row 4 is in row group 1 of the shard already open
    assert remote.image_bytes(4) == local.image_bytes(4)
    assert proxy.cut == 1
    proxy.arm(0)


def test_a_connection_that_keeps_dropping_is_one_line_after_bounded_retries(server, trained, tmp_path, monkeypatch,
                                                                              capsys):
    url, proxy = trained["url"], server["proxy"]
    fresh_clients()
    proxy.arm(10**6)
    try:
        with pytest.raises(PackError, match="connection to the storage server failed after 5 tries") as e:
            PackedSet(url)
        assert url in str(e.value) and server["secret"] not in str(e.value)
        assert proxy.cut == 5  # s3fs's 5 tries, no more: nothing else retries on top
        monkeypatch.chdir(tmp_path)
        assert main(["fit", *FIT, f"--data.init_args.index={url}"]) == 2
        assert "after 5 tries" in one_line(capsys, "fit")
        assert not (tmp_path / "runs").exists()
    finally:
        proxy.arm(0)


# --- one line for a wrong door --------------------------------------------------------------------


def test_a_missing_bucket_prefix_or_pack_is_one_line_and_writes_nothing(s3, trained, tiny_index, tmp_path,
                                                                         monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    ckpt = trained["ckpt"]
    missing = f"s3://no-such-bucket-{s3['bucket']}/set"
    assert main(["pack", "--index", str(tiny_index), "--out", missing]) == 2
    assert "no such bucket" in one_line(capsys, "pack")
    assert f"no-such-bucket-{s3['bucket']}" not in [b["Name"] for b in s3["client"].list_buckets()["Buckets"]]
    assert main(["fit", *FIT, f"--data.init_args.index={missing}"]) == 2
    assert "no such bucket" in one_line(capsys, "fit")
    assert main(["report", str(ckpt), "--index", missing, "--out", "rep", "--workers", "0"]) == 2
    assert "no such bucket" in one_line(capsys, "report")

    s3["client"].put_object(Bucket=s3["bucket"], Key="notes/readme.txt", Body=b"not a packed set")
    for where, says in ((f"s3://{s3['bucket']}/nothing-here", "no such prefix"),
                        (f"s3://{s3['bucket']}/notes", "not a packed set")):
        assert main(["fit", *FIT, f"--data.init_args.index={where}"]) == 2
        assert says in one_line(capsys, "fit")
        assert main(["report", str(ckpt), "--index", where, "--out", "rep", "--workers", "0"]) == 2
        assert says in one_line(capsys, "report")
    assert not (tmp_path / "runs").exists() and not (tmp_path / "rep").exists()
    assert keys(s3) == ["notes/readme.txt"]


def test_wrong_credentials_are_one_line_without_the_secret(s3, trained, tiny_index, tmp_path, monkeypatch, capsys):
    url, local = trained["url"], trained["local"]
    monkeypatch.chdir(tmp_path)
    enforce_auth(s3["endpoint"], True)
    try:
        fresh_clients()
        assert PackedSet(url).manifest == local.manifest  # the user's own key reads it once signatures are checked
        for key_id, secret in ((s3["key_id"], "wrong-secret-0123456789"), ("AKIAUNKNOWNKEY000000", s3["secret"])):
            fresh_clients()
            monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
            monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
            assert main(["pack", "--index", str(tiny_index), "--out", f"s3://{s3['bucket']}/other"]) == 2
            err = one_line(capsys, "pack")
            assert "access denied" in err and secret not in err and "credentials" in err
            assert main(["fit", *FIT, f"--data.init_args.index={url}"]) == 2
            err = one_line(capsys, "fit")
            assert "access denied" in err and secret not in err
            assert main(["report", str(trained["ckpt"]), "--index", url, "--out", "rep", "--workers", "0"]) == 2
            err = one_line(capsys, "report")
            assert "access denied" in err and secret not in err
    finally:
        enforce_auth(s3["endpoint"], False)
        fresh_clients()
    assert not (tmp_path / "runs").exists() and not (tmp_path / "rep").exists()
    assert not keys(s3, "other")


@pytest.mark.slow
def test_an_endpoint_that_refuses_connections_is_one_line(server, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    fresh_clients()
    with pytest.raises(PackError, match="connection to the storage server failed .*check the endpoint"):
        PackedSet("s3://trained/set")
    fresh_clients()

"""`geotrainr scrape --source mapillary` against a fake Mapillary API v4 on 127.0.0.1.

The fake (tests/fake_mapillary.py) knows which photo each place should get,
so the rows are compared exactly: clean run, faults, kill -9 and resume,
one photo per sequence, panoramas, the token's absence from every file and
output line.
"""

from __future__ import annotations

import os
import random
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from geotrainr.cli import main
from geotrainr.data.index import read_index, validate_index
from geotrainr.data.scrape import ImageSpec, RetryPolicy, read_geonames, sample_places
from geotrainr.data.scrape.backends import HttpBackend
from geotrainr.data.scrape.exceptions import InvalidAnswer
from geotrainr.data.scrape.mapillary import (
    LICENCE,
    MapillaryClient,
    MapillaryToken,
    image_from_entry,
    strip_queries,
)

sys.path.insert(0, str(Path(__file__).parent))
from fake_mapillary import FakeMapillary

REPO = Path(__file__).resolve().parents[1]
SAMPLE = Path(__file__).parent / "data" / "geonames_sample.txt"
TOKEN = f"MLY|{secrets.token_hex(8)}|{secrets.token_hex(16)}"
COUNTRIES = "DE,FR,NL,BE,AT,IT,ES,DK"
COMPARE = ["image_path", "lat", "lon", "country", "pano_id", "heading", "capture_date", "source", "sequence",
           "creator", "licence"]


def places():
    return sample_places(read_geonames(SAMPLE, COUNTRIES.split(",")), total=100, seed=0)


def make_fake(**kw) -> FakeMapillary:
    return FakeMapillary(TOKEN, [(p.lat, p.lon) for p in places()], **kw)


def args_for(url: str, out: Path, *extra: str, workers: int = 1) -> list[str]:
    return [
        "--source", "mapillary", "--geonames", str(SAMPLE), "--countries", COUNTRIES, "--places", "100",
        "--size", "64x64", "--api-url", url, "--out", str(out), "--threads", str(workers), "--rate", "0",
        "--timeout", "2", "--retries", "8", "--backoff", "0.001", "--backoff-max", "0.01", "--quiet", *extra,
    ]


def run_cli(args: list[str], capsys, monkeypatch, token: str | None = TOKEN) -> tuple[int, str, str]:
    if token is None:
        monkeypatch.delenv("MAPILLARY_ACCESS_TOKEN", raising=False)
    else:
        monkeypatch.setenv("MAPILLARY_ACCESS_TOKEN", token)
    rc = main(["scrape", *args])
    out, err = capsys.readouterr()
    return rc, out, err


def assert_no_token(folder: Path | None, *texts: str) -> None:
    needles = [TOKEN, TOKEN.split("|")[2]]
    for text in texts:
        for n in needles:
            assert n not in text, "the token leaked into the output"
    if folder is not None and folder.exists():
        for p in folder.rglob("*"):
            if p.is_file():
                data = p.read_bytes()
                for n in needles:
                    assert n.encode() not in data, f"the token leaked into {p}"


def expected(fake: FakeMapillary, panoramas: bool = False) -> dict[str, dict]:
    """image id -> (photo, place) for every sample place, from the fake's ground truth."""
    got: dict[str, dict] = {}
    for p in places():
        t = fake.truth(p.lat, p.lon, 50, panoramas)
        if t is not None:
            got.setdefault(t["id"], {**t, "country": p.country})
    return got


def check(out: Path, fake: FakeMapillary, panoramas: bool = False) -> pd.DataFrame:
    df = validate_index(read_index(out / "index.parquet"), root=out, check_images=True)
    truth = expected(fake, panoramas)
    assert sorted(df["pano_id"]) == sorted(truth), "not exactly the expected photos"
    assert not df["pano_id"].duplicated().any() and not df["image_path"].duplicated().any()
    for row in df.itertuples():
        t = truth[row.pano_id]
        assert (row.lat, row.lon, row.country, row.sequence, row.creator) == (t["lat"], t["lon"], t["country"],
                                                                              t["sequence"], t["creator"])
        assert row.heading == pytest.approx(t["compass_angle"]) and row.licence == LICENCE
        assert row.source == "mapillary" and len(row.capture_date) == 10
        with Image.open(out / row.image_path) as im:
            assert im.size == (64, 64) and im.format == "JPEG"
            im.load()
    assert not list((out / "images").glob(".*.tmp"))
    return df


def search_and_thumb_checks(fake: FakeMapillary) -> None:
    for r in fake.log:
        assert TOKEN not in r["path"], "the token was sent in a URL"
        if r["kind"] == "search":
            assert r["auth"] == f"OAuth {TOKEN}"
        if r["kind"] == "thumb":
            assert r["auth"] is None, "the token was sent to the thumbnail host"


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> pd.DataFrame:
    out = tmp_path_factory.mktemp("mly") / "ref"
    with make_fake() as fake:
        os.environ["MAPILLARY_ACCESS_TOKEN"] = TOKEN
        try:
            rc = main(["scrape", *args_for(fake.url, out)])
        finally:
            del os.environ["MAPILLARY_ACCESS_TOKEN"]
        assert rc == 0
        df = check(out, fake)
        search_and_thumb_checks(fake)
        assert len(fake.requests("thumb")) == len(df), "one thumbnail request per photo"
    assert_no_token(out)
    return df[COMPARE].sort_values("pano_id").reset_index(drop=True)


def test_a_clean_run_collects_the_nearest_flat_photo_per_place(reference, tmp_path, capsys, monkeypatch):
    with make_fake() as fake:
        n_places = len(places())
        truth = expected(fake)
        assert 0 < len(truth) < n_places  # some places have no photo
        assert not any(t["is_pano"] for t in truth.values())
        rc, out, err = run_cli(args_for(fake.url, tmp_path / "a"), capsys, monkeypatch)
        assert rc == 0 and "complete" in out, err
        assert "CC-BY-SA 4.0" in out and "search" in out
        assert any("after=" in r["path"] for r in fake.requests("search")), "paging was not followed"
    df = read_index(tmp_path / "a" / "index.parquet")
    pd.testing.assert_frame_equal(df[COMPARE].sort_values("pano_id").reset_index(drop=True), reference)
    assert set(df["split"]) <= {"train", "val"}
    assert_no_token(tmp_path / "a", out, err)


def test_panoramas_when_asked(tmp_path, capsys, monkeypatch):
    with make_fake() as fake:
        rc, out, err = run_cli(args_for(fake.url, tmp_path / "p", "--panoramas"), capsys, monkeypatch)
        assert rc == 0, err
        df = check(tmp_path / "p", fake, panoramas=True)
    assert len(df) and all(pid.endswith("0") for pid in df["pano_id"])  # the panorama 2 m away


def test_one_photo_per_sequence(tmp_path, capsys, monkeypatch):
    with make_fake(shared_sequences=True) as fake:
        rc, out, err = run_cli(args_for(fake.url, tmp_path / "all"), capsys, monkeypatch)
        assert rc == 0, err
        rc, out, err = run_cli(args_for(fake.url, tmp_path / "one", "--one-per-sequence"), capsys, monkeypatch)
        assert rc == 0, err
    every = read_index(tmp_path / "all" / "index.parquet")
    one = read_index(tmp_path / "one" / "index.parquet")
    assert every["sequence"].duplicated().any(), "the fixture must share sequences"
    assert not one["sequence"].duplicated().any()
    assert set(one["sequence"]) == set(every["sequence"]) and set(one["pano_id"]) <= set(every["pano_id"])


def test_faults_then_resume_give_the_clean_rows(reference, tmp_path, capsys, monkeypatch):
    """About a quarter of the requests fail in every way the fake knows; reruns converge to the clean rows."""
    faults = {"search": ["ok", "ok", "429", "ok", "malformed", "ok", "500", "ok", "wrong_types", "ok", "ok", "html"],
              "thumb": ["ok", "503", "ok", "truncated", "ok", "ok", "wrong_types", "ok"]}
    out = tmp_path / "f"
    with make_fake(faults=faults) as fake:
        for _ in range(6):
            rc, stdout, stderr = run_cli(args_for(fake.url, out, "--retries", "2"), capsys, monkeypatch)
            assert "Traceback" not in stderr
            assert_no_token(out, stdout, stderr)
            if rc == 0:
                break
        assert rc == 0 and "complete" in stdout, stderr
        check(out, fake)
        search_and_thumb_checks(fake)
    df = read_index(out / "index.parquet")
    pd.testing.assert_frame_equal(df[COMPARE].sort_values("pano_id").reset_index(drop=True), reference)


def _spawn(args: list[str], logs: Path, name: str) -> tuple[subprocess.Popen, Path, Path]:
    env = {**os.environ, "MAPILLARY_ACCESS_TOKEN": TOKEN, "PYTHONPATH": str(REPO)}
    so, se = logs / f"{name}.out", logs / f"{name}.err"
    proc = subprocess.Popen([sys.executable, "-m", "geotrainr", "scrape", *args], stdout=open(so, "w"),
                            stderr=open(se, "w"), env=env, cwd=REPO)
    return proc, so, se


def _kill_loop(tmp_path: Path, capsys, monkeypatch, reference: pd.DataFrame, rounds: int, seed: int) -> None:
    rng = random.Random(seed)
    out, logs = tmp_path / "k", tmp_path / "logs"
    logs.mkdir()
    faults = {"search": ["ok", "ok", "429", "ok", "malformed", "ok", "500", "ok"],
              "thumb": ["ok", "503", "ok", "truncated", "ok", "ok", "wrong_types", "ok"]}
    with make_fake(faults=faults) as fake:
        args = args_for(fake.url, out, "--shard-rows", "2", workers=2)
        for r in range(rounds):
            proc, so, se = _spawn(args, logs, str(r))
            start = len(fake.requests("thumb", 200))
            goal = start + rng.randint(2, 5)
            end = time.monotonic() + 60
            while len(fake.requests("thumb", 200)) < goal and proc.poll() is None and time.monotonic() < end:
                time.sleep(0.005)
            if proc.poll() is not None:
                break  # finished before the kill: the rest is a resume
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=60)
            assert proc.returncode == -signal.SIGKILL
            assert "Traceback" not in se.read_text()
        fake.faults = {}
        rc, stdout, stderr = run_cli(args_for(fake.url, out), capsys, monkeypatch)
        assert rc == 0 and "complete" in stdout, stderr
        check(out, fake)
        search_and_thumb_checks(fake)
    df = read_index(out / "index.parquet")
    pd.testing.assert_frame_equal(df[COMPARE].sort_values("pano_id").reset_index(drop=True), reference)
    assert_no_token(out, stdout, stderr, *(p.read_text() for p in logs.iterdir()))


def test_kill_9_mid_run_then_resume_short(reference, tmp_path, capsys, monkeypatch):
    _kill_loop(tmp_path, capsys, monkeypatch, reference, rounds=2, seed=3)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kill_9_loop_long(reference, tmp_path, capsys, monkeypatch, seed):
    _kill_loop(tmp_path, capsys, monkeypatch, reference, rounds=10, seed=seed)


def test_missing_token_is_one_line_exit_2(tmp_path, capsys, monkeypatch):
    rc, out, err = run_cli(args_for("http://127.0.0.1:9", tmp_path / "x"), capsys, monkeypatch, token=None)
    assert rc == 2 and "MAPILLARY_ACCESS_TOKEN" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_a_refused_token_is_one_line_exit_2_without_the_token(tmp_path, capsys, monkeypatch):
    """The fake echoes the token it got in its 401 body: the message must not repeat it."""
    with make_fake() as fake:
        fake.token = "another-token"
        rc, out, err = run_cli(args_for(fake.url, tmp_path / "d"), capsys, monkeypatch)
    assert rc == 2 and "refused" in err and "REDACTED" in err and "Traceback" not in err
    assert_no_token(tmp_path / "d", out, err)


def test_an_unreachable_thumbnail_host_prints_no_url_query(tmp_path, capsys, monkeypatch):
    """Network errors on signed thumbnail URLs: the place fails, messages carry neither token nor query strings."""
    with make_fake(thumb_base="http://127.0.0.1:9") as fake:
        rc, out, err = run_cli(args_for(fake.url, tmp_path / "u", "--retries", "1"), capsys, monkeypatch)
    assert rc == 1 and "failed" in err and "Traceback" not in err
    assert "cdn-signature" not in out + err and "sig=" not in out + err
    assert_no_token(tmp_path / "u", out, err)


def test_dry_run_sends_nothing(tmp_path, capsys, monkeypatch):
    with make_fake() as fake:
        rc, out, err = run_cli(args_for(fake.url, tmp_path / "n", "--dry-run"), capsys, monkeypatch, token=None)
        assert rc == 0 and "dry run" in out, err
        assert fake.log == []
    assert not (tmp_path / "n").exists()


def test_street_view_options_are_refused_with_mapillary(tmp_path, capsys, monkeypatch):
    rc, out, err = run_cli(args_for("http://127.0.0.1:9", tmp_path / "b", "--backend", "selenium"), capsys, monkeypatch)
    assert rc == 2 and "--backend http" in err


def test_entries_are_validated():
    good = {"id": "12", "geometry": {"type": "Point", "coordinates": [10.5, 50.25]}, "captured_at": 1_600_000_000_000,
            "compass_angle": 370.0, "is_pano": False, "thumb_1024_url": "https://cdn/x.jpg?sig=1",
            "creator": {"id": "1", "username": "alice"}, "sequence": "s1"}
    im = image_from_entry(good)
    assert (im.pano_id, im.lat, im.lon, im.heading, im.creator, im.date) == ("12", 50.25, 10.5, 10.0, "alice",
                                                                              "2020-09-13")
    computed = {**good, "computed_geometry": {"type": "Point", "coordinates": [10.6, 50.3]}}
    assert (image_from_entry(computed).lat, image_from_entry(computed).lon) == (50.3, 10.6)
    for bad in ({**good, "id": ["12"]}, {**good, "geometry": {"type": "Point", "coordinates": ["x", 1]}},
                {**good, "geometry": None}, {**good, "is_pano": "no"}, {**good, "captured_at": "yesterday"},
                {**good, "thumb_1024_url": "file:///etc/passwd"}, {**good, "creator": "alice"}, "entry"):
        with pytest.raises(InvalidAnswer):
            image_from_entry(bad)


def test_paging_to_another_host_is_refused():
    """A next-page URL on another host would carry the token there: the place fails instead."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    seen: list[str | None] = []

    class H(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):
            seen.append(self.headers.get("Authorization"))
            body = json.dumps({"data": [], "paging": {"next": "http://127.0.0.2:9/images?after=1"}}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        client = MapillaryClient(HttpBackend(), MapillaryToken(TOKEN), ImageSpec(64, 64),
                                 f"http://127.0.0.1:{srv.server_address[1]}", RetryPolicy(attempts=1, timeout=2))
        with pytest.raises(InvalidAnswer, match="another host"):
            client.metadata(50.0, 10.0)
    finally:
        srv.shutdown()
        srv.server_close()
    assert seen == [f"OAuth {TOKEN}"]


def test_token_and_queries_are_redacted():
    assert repr(MapillaryToken(TOKEN)) == "MapillaryToken(REDACTED)"
    assert strip_queries("GET https://cdn.example/t/1.jpg?sig=abc&exp=2 failed") == "GET https://cdn.example/t/1.jpg?... failed"


def test_exclude_another_mapillary_index(tmp_path, capsys, monkeypatch):
    """Photos of an --exclude index (by image id, the pano_id column) are never collected again."""
    with make_fake() as fake:
        rc, _, err = run_cli(args_for(fake.url, tmp_path / "first"), capsys, monkeypatch)
        assert rc == 0, err
        thumbs = len(fake.requests("thumb"))
        rc, out, err = run_cli(args_for(fake.url, tmp_path / "second", "--exclude",
                                        str(tmp_path / "first" / "index.parquet")), capsys, monkeypatch)
        assert rc == 0 and "places: 0 with a photo" in out and " 0 excluded" not in out, out
        assert len(fake.requests("thumb")) == thumbs, "an excluded photo was downloaded"
    assert not (tmp_path / "second" / "index.parquet").exists()

"""`geotrainr scrape` against power cuts, hostile servers and hostile files.

Each case ends the same way: a resume against a correct server gives exactly
the clean run's rows (the ``reference`` of test_scrape.py), every image whole,
JPEG and of the asked size, no image paid for twice, no traceback, no secret
in any output. Power cuts are simulated by tearing files the way a crash
without fsync would (cut, NUL-filled, empty) and emptying settings.json.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from geotrainr.data.index import read_index
from geotrainr.data.scrape import Credentials, ImageSpec, RetryPolicy, StreetViewClient
from geotrainr.data.scrape.backends import HttpBackend, Response
from geotrainr.data.scrape.exceptions import (
    InvalidAnswer,
    RequestDeniedError,
    ResponseTooLarge,
    TransportError,
)
from geotrainr.data.scrape.records import normalise_image, stored_image_ok
from geotrainr.data.scrape.writer import DatasetStore, image_name

sys.path.insert(0, str(Path(__file__).parent))
import test_scrape
from fake_streetview import FakeStreetView, hostile_image, png_header_only
from test_scrape import (
    COMPARE,
    KEY,
    REPO,
    SECRET,
    assert_no_secret,
    check_dataset,
    expected_views,
    run_cli,
    scrape_args,
    sorted_frame,
    view_set,
)

# The clean run every case is compared with (fixtures of test_scrape.py).
reference_run = test_scrape.reference_run
reference = test_scrape.reference

ROW_COLS = [c for c in COMPARE if c != "image_path"]


def client_for(fake: FakeStreetView, attempts: int = 3, timeout: float = 5.0) -> StreetViewClient:
    """A client asking for 96x96 images, with quick retries."""
    retry = RetryPolicy(attempts=attempts, base_delay=0.001, max_delay=0.002, timeout=timeout)
    return StreetViewClient(HttpBackend(), Credentials(KEY), ImageSpec(96, 96), fake.url, retry)


def a_pano(fake: FakeStreetView) -> tuple[float, float, dict]:
    """A location with an outdoor panorama, and its truth."""
    for i in range(1000):
        lat, lon = 50.0 + i * 0.01, 10.0
        t = fake.truth(lat, lon)
        if t is not None:
            return lat, lon, t
    raise AssertionError("no panorama in the fake world")


def same_rows(df: pd.DataFrame, reference: pd.DataFrame) -> None:
    assert view_set(df) == view_set(reference) and len(df) == len(reference)
    pd.testing.assert_frame_equal(sorted_frame(df, ROW_COLS), sorted_frame(reference, ROW_COLS))


def paid_ok(fake: FakeStreetView) -> int:
    """Image requests that delivered a correct image."""
    return sum(1 for e in fake.requests("image", 200) if e["fault"] == "ok")


# --- deadlines and limits --------------------------------------------------------


def test_a_drip_server_is_cut_at_the_deadline():
    """One byte every 0.2 s, forever: the request ends at its deadline (1 s) instead of per read."""
    with FakeStreetView(KEY, faults={"metadata": ["drip"], "image": ["drip"]}, drip_s=0.2) as fake:
        outcome: dict = {}

        def call() -> None:
            try:
                HttpBackend().get(f"{fake.url}/metadata?location=50,10&key={KEY}", 1.0)
            except TransportError as e:
                outcome["error"] = e

        t = threading.Thread(target=call, daemon=True)
        t.start()
        t.join(60)  # a guard against a hang, not a speed claim
        assert not t.is_alive(), "the request outlived its deadline"
        assert outcome["error"].timeout and "timed out" in str(outcome["error"])
        assert fake.dripped < 50, "the client kept reading the drip"
        # Through the client: each try ends at the deadline, then the place fails after its retries.
        client = client_for(fake, attempts=2, timeout=0.5)
        with pytest.raises(Exception, match="still failing after 2 tries .last: timeout"):
            client.metadata(50.0, 10.0)


def test_byte_limits_refuse_huge_bodies_without_reading_them():
    with FakeStreetView(KEY, faults={"metadata": ["huge"]}) as fake:
        client = client_for(fake)
        with pytest.raises(InvalidAnswer, match="announced 300000000 bytes"):
            client.metadata(50.0, 10.0)
        assert client.budget.metadata == 1, "the same answer is not asked for again"
    with FakeStreetView(KEY) as fake:
        _, _, t = a_pano(fake)
        url = f"{fake.url}?size=640x640&pano={t['pano_id']}&heading=0&fov=90&pitch=0&key={KEY}"
        assert len(HttpBackend().get(url, 5.0).body) > 2000
        with pytest.raises(ResponseTooLarge):
            HttpBackend().get(url, 5.0, max_bytes=1000)


# --- what the server sends ---------------------------------------------------------


@pytest.mark.parametrize("fault", ["int_date", "object_date"])
def test_metadata_of_the_wrong_type_fails_the_place_not_the_run(fault):
    with FakeStreetView(KEY, faults={"metadata": [fault]}) as fake:
        lat, lon, _ = a_pano(fake)
        client = client_for(fake)
        with pytest.raises(InvalidAnswer, match="date is a (int|dict), not a string"):
            client.metadata(lat, lon)
        assert client.budget.metadata == 1 and client.budget.images == 0


def test_a_long_pano_id_gets_a_bounded_file_name():
    with FakeStreetView(KEY, faults={"metadata": ["long_pano"]}) as fake:
        lat, lon, t = a_pano(fake)
        pano = client_for(fake).metadata(lat, lon)
    assert len(pano.pano_id) > 300 and pano.pano_id.startswith(t["pano_id"])
    name = image_name(pano.pano_id, 180.0)
    assert len(name) <= 140 and name.endswith("_180.jpg")
    assert image_name(pano.pano_id + "y", 180.0) != name, "the hash tells long ids apart"
    assert image_name("CAoSLEFGMVFpcE9", 90.0) == "CAoSLEFGMVFpcE9_90.jpg", "ordinary ids keep their names"
    assert len(image_name("a/b" * 20, 0.0)) < 80 and "/" not in image_name("a/b" * 20, 0.0)


@pytest.mark.parametrize("fault, stored", [("gif", None), ("html", None), ("bomb_png", None),
                                           ("big_jpeg", (96, 96)), ("png", (96, 96))])
def test_images_are_what_was_asked_for(fault, stored):
    """Not a still image or too large to decode: refused, billed once. Another size or format: made a 96x96 JPEG."""
    with FakeStreetView(KEY, faults={"image": [fault]}) as fake:
        _, _, t = a_pano(fake)
        client = client_for(fake)
        if stored is None:
            with pytest.raises(InvalidAnswer, match="not a still image|not an image|refused"):
                client.image(t["pano_id"], 0.0)
        else:
            body = client.image(t["pano_id"], 0.0)
            with Image.open(__import__("io").BytesIO(body)) as im:
                assert im.format == "JPEG" and im.size == stored and im.mode == "RGB"
        assert client.budget.images == 1, "a refused image is not paid for again and again"


def test_image_normalisation_units():
    jpeg = FakeStreetView(KEY).jpeg("p" * 22, 0.0, 64, 64, 90, 0)
    assert normalise_image(jpeg, 64, 64) is jpeg, "a JPEG of the asked size is kept byte for byte"
    with pytest.raises(InvalidAnswer, match="13000x13000"):
        normalise_image(png_header_only(13000, 13000), 64, 64)
    with pytest.raises(InvalidAnswer, match="truncated"):
        normalise_image(jpeg[: len(jpeg) // 2], 64, 64)
    gif, _ = hostile_image("gif", jpeg)
    with pytest.raises(InvalidAnswer, match="GIF"):
        normalise_image(gif, 64, 64)


def test_hostile_server_then_a_correct_one_gives_the_clean_rows(tmp_path, capsys, monkeypatch, reference):
    """Wrong types, GIFs, HTML, a decompression bomb, huge and odd images: failed places, no traceback; then resume."""
    faults = {
        "metadata": ["ok", "int_date", "ok", "object_date", "ok", "huge", "ok"],
        "image": ["ok", "gif", "ok", "html", "big_jpeg", "ok", "bomb_png", "png", "ok"],
    }
    out = tmp_path / "sv"
    with FakeStreetView(KEY, secret=SECRET, faults=faults) as fake:
        rc, stdout, stderr = run_cli(scrape_args(fake.url, out, workers=2), capsys, monkeypatch, secret=SECRET)
        assert rc == 1 and "Traceback" not in stderr, stderr
        assert "failed" in stdout and "run the same command again" in stdout
        # the first failures are warned about; all of them, with their reasons, are listed beside the index
        assert "warning: place " in stderr and f"failed places and why: {out / 'failed.csv'}" in stdout
        failed = pd.read_csv(out / "failed.csv", dtype=str)
        assert list(failed.columns) == ["place_id", "country", "error"] and stdout.count(" failed;") == 1
        assert f", {len(failed)} failed;" in stdout
        for what in ("date is a int", "date is a dict", "not a still image (GIF)", "not an image (text/html)",
                     "13000x13000"):
            assert failed["error"].str.contains(what, regex=False).any(), what
        first = read_index(out / "index.parquet")
        for p in first["image_path"]:  # what was stored is a JPEG of the asked size, resized ones included
            with Image.open(out / p) as im:
                assert im.format == "JPEG" and im.size == (64, 64)
        paid_first = len(fake.requests("image"))
        fake.faults = {}
        rc, stdout2, stderr2 = run_cli(scrape_args(fake.url, out, workers=2), capsys, monkeypatch, secret=SECRET)
        assert rc == 0 and "complete" in stdout2, stderr2
        assert not (out / "failed.csv").exists(), "a clean run leaves no stale list of failures"
        df = check_dataset(out, fake)
        assert len(fake.requests("image")) - paid_first == len(reference) - len(first), "a stored image is paid once"
    same_rows(df, reference)
    assert_no_secret(out, stdout, stderr, stdout2, stderr2)


def test_long_pano_ids_are_collected_and_not_paid_twice(tmp_path, capsys, monkeypatch):
    out = tmp_path / "sv"
    with FakeStreetView(KEY, faults={"metadata": ["long_pano"]}) as fake:
        rc, stdout, stderr = run_cli(scrape_args(fake.url, out), capsys, monkeypatch)
        assert rc == 0 and "complete" in stdout, stderr
        df = read_index(out / "index.parquet")
        assert len(df) == 2 * len(expected_views(fake)) and df["pano_id"].str.len().min() > 300
        assert max(len(Path(p).name) for p in df["image_path"]) <= 140
        paid = len(fake.requests("image"))
        rc, stdout, stderr = run_cli(scrape_args(fake.url, out), capsys, monkeypatch)
        assert rc == 0 and "complete" in stdout and len(fake.requests("image")) == paid


# --- secrets ----------------------------------------------------------------------


class _EchoBackend:
    """Answers every request with an error body that carries the key (and the signing secret) at an offset."""

    name = "echo"

    def __init__(self, body: bytes, status: int = 403, ctype: str = "text/plain"):
        self.body, self.status, self.ctype = body, status, ctype

    def get(self, url: str, timeout: float, max_bytes: int = 0) -> Response:
        return Response(self.status, self.body, {"content-type": self.ctype})

    def close(self) -> None:
        pass


def test_no_key_character_at_any_offset_of_an_error_body():
    secret_part = KEY.split("-", 1)[1]
    secret_b64 = SECRET
    pieces = {secret_part[i:i + 5] for i in range(len(secret_part) - 4)}
    pieces |= {secret_b64[i:i + 6] for i in range(len(secret_b64) - 5)}
    filler = "~" * 700  # no character of the key's or the secret's alphabet
    retry = RetryPolicy(attempts=1)
    for offset in range(600):
        for which in (KEY, SECRET):
            text = filler[:offset] + which + filler[: 700 - offset]
            messages = []
            for backend in (
                _EchoBackend(text.encode()),  # HTTP 403 with a text body
                _EchoBackend(json.dumps({"status": "REQUEST_DENIED", "error_message": text}).encode(), 200,
                             "application/json"),
            ):
                client = StreetViewClient(backend, Credentials(KEY, SECRET), ImageSpec(), "http://127.0.0.1:9/sv", retry)
                with pytest.raises(RequestDeniedError) as e:
                    client.metadata(50.0, 10.0)
                messages.append(str(e.value))
            for message in messages:
                leaked = [p for p in pieces if p in message]
                assert not leaked, f"offset {offset}: {leaked[0]!r} of a secret in the message"


# --- power cuts --------------------------------------------------------------------


def tear(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "cut":
        path.write_bytes(data[: len(data) // 2])
    elif how == "nul":
        path.write_bytes(data[:100] + b"\0" * (len(data) - 100))
    elif how == "empty":
        path.write_bytes(b"")
    else:
        raise ValueError(how)


def test_torn_images_and_settings_after_a_power_cut(tmp_path, capsys, monkeypatch, reference_run, reference):
    out = tmp_path / "sv"
    shutil.copytree(reference_run[0], out)
    images = sorted((out / "images").glob("*.jpg"))
    torn = {images[0]: "cut", images[5]: "nul", images[9]: "empty"}
    for p, how in torn.items():
        tear(p, how)
        assert stored_image_ok(p, 64, 64) is not None
    (out / "state" / "settings.json").write_bytes(b"")
    with FakeStreetView(KEY) as fake:
        rc, stdout, stderr = run_cli(scrape_args(fake.url, out), capsys, monkeypatch)
        assert rc == 2 and not fake.log, "an unreadable settings file refuses the resume before any request"
        line = stderr.strip().splitlines()
        assert len(line) == 1 and "settings.json cannot be read" in line[0] and "--force" in line[0]
        rc, stdout, stderr = run_cli(scrape_args(fake.url, out, "--force"), capsys, monkeypatch)
        assert rc == 0 and "complete" in stdout, stderr
        assert "3 recorded image(s) are damaged" in stderr
        assert "resume: 3 recorded image(s) missing or damaged and fetched again" in stdout
        assert len(fake.requests("image")) == 3, "only the torn images are fetched again"
        df = check_dataset(out, fake)
    same_rows(df, reference)
    assert json.loads((out / "state" / "settings.json").read_text())["size"] == "64x64"


def test_settings_are_never_silently_replaced(tmp_path, capsys, monkeypatch, reference_run):
    """An unreadable or missing settings file plus another --size: refused; forced, every image is redone at the new size."""
    out = tmp_path / "sv"
    shutil.copytree(reference_run[0], out)
    (out / "state" / "settings.json").unlink()
    n = len(read_index(out / "index.parquet"))
    with FakeStreetView(KEY) as fake:
        args = [a if a != "64x64" else "96x96" for a in scrape_args(fake.url, out)]
        rc, stdout, stderr = run_cli(args, capsys, monkeypatch)
        assert rc == 2 and "settings.json is missing" in stderr and not fake.log
        (out / "state" / "settings.json").write_text('{"size": "64x6')  # torn by a power cut
        rc, stdout, stderr = run_cli(args, capsys, monkeypatch)
        assert rc == 2 and "cannot be read" in stderr and not fake.log
        rc, stdout, stderr = run_cli([*args, "--force"], capsys, monkeypatch)
        assert rc == 0 and "complete" in stdout, stderr
        assert len(fake.requests("image")) == n, "every 64x64 image is fetched again at 96x96"
    df = read_index(out / "index.parquet")
    assert len(df) == n
    for p in df["image_path"]:
        with Image.open(out / p) as im:
            assert im.size == (96, 96), "sizes are never mixed in one folder"


def test_a_poisoned_journal_is_skipped_and_its_places_redone(tmp_path, capsys, monkeypatch, reference):
    out = tmp_path / "sv"
    with FakeStreetView(KEY) as fake:
        rc, stdout, stderr = run_cli(scrape_args(fake.url, out, "--max-requests", "6"), capsys, monkeypatch)
        assert rc == 0 and "budget reached" in stdout
        done = set(read_index(out / "index.parquet")["pano_id"])
        pano = next(t for t in expected_views(fake).values() if t["pano_id"] not in done)
        jpeg = fake.jpeg(pano["pano_id"], 0.0, 64, 64, 90.0, 0.0)
        (out / "images" / f"{pano['pano_id']}_0.jpg").write_bytes(jpeg)
        row = {"t": "row", "image_path": f"images/{pano['pano_id']}_0.jpg", "lat": pano["lat"], "lon": pano["lng"],
               "country": pano["country"], "pano_id": pano["pano_id"], "heading": 0.0, "pitch": 0.0, "fov": 90.0,
               "capture_date": 2015, "place_id": pano["place_id"], "source": "streetview"}  # an int date, as once journaled
        place = {"t": "place", "place_id": pano["place_id"], "outcome": "hit", "pano_id": pano["pano_id"],
                 "country": pano["country"]}
        lines = [json.dumps(row), json.dumps(place), json.dumps({**place, "outcome": {"x": 1}, "place_id": "1"}),
                 "\0" * 40, "not json at all", json.dumps([1, 2])]
        (out / "state" / "journal-1-1.jsonl").write_text("\n".join(lines) + "\n")
        paid = len(fake.requests("image"))
        for attempt in range(2):  # resumed twice: never stuck on the same line
            rc, stdout, stderr = run_cli(scrape_args(fake.url, out), capsys, monkeypatch)
            assert rc == 0 and "complete" in stdout and "Traceback" not in stderr, stderr
            if attempt == 0:
                assert "4 journal line(s) unreadable or invalid" in stderr
        df = check_dataset(out, fake)
        assert len(fake.requests("image")) - paid == len(reference) - 6
    same_rows(df, reference)


# --- Ctrl-C and kill -9 ------------------------------------------------------------


def _spawn(args: list[str], logs: Path, name: str) -> tuple[subprocess.Popen, Path, Path]:
    env = {**os.environ, "GOOGLE_MAPS_API_KEY": KEY}
    env.pop("GOOGLE_MAPS_URL_SIGNING_SECRET", None)
    so, se = logs / f"{name}.out", logs / f"{name}.err"
    with open(so, "w") as out, open(se, "w") as err:  # the child keeps its own copies
        proc = subprocess.Popen([sys.executable, "-m", "geotrainr", "scrape", *args], stdout=out, stderr=err,
                                env=env, cwd=REPO)
    return proc, so, se


def _wait_for(cond, proc: subprocess.Popen, limit: float = 60.0) -> None:
    end = time.monotonic() + limit
    while not cond() and proc.poll() is None and time.monotonic() < end:
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be stopped"


def test_ctrl_c_during_a_drip_then_twice_then_resume(tmp_path, capsys, monkeypatch, reference):
    """First Ctrl-C: requests in flight end at the deadline, summary, exit 130. Second: out at once. Then resume."""
    out, logs = tmp_path / "sv", tmp_path / "logs"
    logs.mkdir()
    with FakeStreetView(KEY, faults={"image": ["ok", "ok", "ok", "drip"]}, drip_s=0.5) as fake:
        args = scrape_args(fake.url, out, "--timeout", "3", "--retries", "1", workers=2)
        proc, so, se = _spawn(args, logs, "once")
        _wait_for(lambda: fake.drips_started > 0, proc)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)  # a guard: the drip alone would last hours
        text, err = so.read_text(), se.read_text()
        assert proc.returncode == 130, err
        assert "interrupted: finishing the requests in flight" in err and "Traceback" not in err
        assert "requests:" in text and "interrupted:" in text and "places left" in text
        assert len(read_index(out / "index.parquet")) > 0

        before = fake.drips_started
        proc, so, se = _spawn(args, logs, "twice")
        _wait_for(lambda: fake.drips_started > before, proc)
        proc.send_signal(signal.SIGINT)
        time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
        err = se.read_text()
        assert proc.returncode == 130 and "interrupted again: exiting now" in err and "Traceback" not in err

        fake.faults = {}
        rc, stdout, stderr = run_cli(scrape_args(fake.url, out), capsys, monkeypatch)
        assert rc == 0 and "complete" in stdout, stderr
        df = check_dataset(out, fake)
        assert paid_ok(fake) <= len(reference) + 2, "at most the requests in flight at the second Ctrl-C are paid again"
    same_rows(df, reference)
    assert_no_secret(out, stdout, stderr, *(p.read_text() for p in logs.iterdir()))


def _kill_loop(tmp_path: Path, capsys, monkeypatch, reference: pd.DataFrame, rounds: int, seed: int) -> None:
    """``rounds`` runs stopped at random moments by kill -9, Ctrl-C or Ctrl-C twice, with faults and torn last
    writes in between; then one run to the end against a correct server."""
    rng = random.Random(seed)
    out, logs = tmp_path / "sv", tmp_path / "logs"
    logs.mkdir()
    faults = {"metadata": ["ok", "ok", "oql", "ok", "int_date", "ok", "500", "ok"],
              "image": ["ok", "429", "ok", "truncated", "ok", "cut", "ok", "png", "ok", "gif", "ok", "ok"]}
    torn = 0
    with FakeStreetView(KEY, faults=faults, image_latency_s=0.03) as fake:
        args = scrape_args(fake.url, out, "--shard-rows", "3", "--timeout", "2", workers=3)
        for r in range(rounds):
            how = rng.choice(["kill", "kill", "int", "int2"])
            proc, _, se = _spawn(args, logs, f"{r}")
            target = len(fake.requests("image", 200)) + rng.randint(2, 6)
            _wait_for(lambda target=target: len(fake.requests("image", 200)) >= target, proc)
            if how == "kill":
                proc.kill()
            else:
                proc.send_signal(signal.SIGINT)
                if how == "int2":
                    time.sleep(rng.uniform(0.0, 0.05))
                    proc.send_signal(signal.SIGINT)
            proc.wait(timeout=60)
            assert proc.returncode in (-signal.SIGKILL, 130), se.read_text()
            assert "Traceback" not in se.read_text()
            if rng.random() < 0.5:  # a power cut tears the newest image
                newest = max((out / "images").glob("*.jpg"), key=lambda p: p.stat().st_mtime_ns, default=None)
                if newest is not None:
                    tear(newest, rng.choice(["cut", "nul", "empty"]))
                    torn += 1
        fake.faults = {}
        rc, stdout, stderr = run_cli(scrape_args(fake.url, out), capsys, monkeypatch)
        assert rc == 0 and "complete" in stdout, stderr
        df = check_dataset(out, fake)
        assert paid_ok(fake) <= len(reference) + rounds * 3 + torn, "beyond requests in flight and torn files, nothing paid twice"
    same_rows(df, reference)
    assert_no_secret(out, stdout, stderr, *(p.read_text() for p in logs.iterdir()))


def test_kill_and_interrupt_loop_short(tmp_path, capsys, monkeypatch, reference):
    _kill_loop(tmp_path, capsys, monkeypatch, reference, rounds=3, seed=1)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [2, 3])
def test_kill_and_interrupt_loop_long(tmp_path, capsys, monkeypatch, reference, seed):
    _kill_loop(tmp_path, capsys, monkeypatch, reference, rounds=12, seed=seed)


def test_every_record_reaches_the_disk_before_the_step_that_relies_on_it(tmp_path, monkeypatch):
    """fsync order: settings; the image, then its folder, then the journal line; the shard before the journal goes."""
    flushed: list[str] = []
    real = os.fsync

    def spy(fd: int) -> None:
        flushed.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    store = DatasetStore(tmp_path)
    store.open_for_writing()
    store.check_settings({"size": "64x64"})
    jpeg = FakeStreetView(KEY).jpeg("p" * 22, 0.0, 64, 64, 90, 0)
    path = store.write_image("pano_0.jpg", jpeg)
    store.record_row({"image_path": path, "lat": 50.0, "lon": 10.0, "country": "DE", "pano_id": "pano", "heading": 0.0,
                      "pitch": 0.0, "fov": 90.0, "capture_date": "2020-05", "place_id": "1", "source": "streetview"})
    store.record_place("1", "hit", "pano", "DE")
    store.flush()
    store.close()

    def first(pred) -> int:
        return next(i for i, p in enumerate(flushed) if pred(p))

    state, images, shards = str(tmp_path / "state"), str(tmp_path / "images"), str(tmp_path / "shards")
    assert first(lambda p: ".settings.json" in p) < first(lambda p: p == state)
    image_data = first(lambda p: ".pano_0.jpg" in p)
    image_dir = first(lambda p: p == images)
    journal = [i for i, p in enumerate(flushed) if "journal-" in p]
    assert image_data < image_dir < journal[0] and len(journal) == 2, flushed  # the row's line, then the place's
    shard = first(lambda p: p.startswith(shards + "/.part-"))
    assert journal[-1] < shard < first(lambda p: p == shards) and flushed[-1] == state, flushed


def test_deeply_nested_metadata_is_a_retry_not_a_crash():
    client = StreetViewClient(_EchoBackend(b"[" * 200_000, 200, "application/json"), Credentials(KEY), ImageSpec(),
                              "http://127.0.0.1:9/sv", RetryPolicy(attempts=2, base_delay=0.001, max_delay=0.001))
    with pytest.raises(Exception, match="still failing after 2 tries .last: undecodable metadata"):
        client.metadata(50.0, 10.0)

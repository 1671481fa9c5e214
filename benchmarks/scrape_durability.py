"""What fsync costs `geotrainr scrape`, and what the resume check of every image costs.

Arms, interleaved for ``--rounds`` rounds:

* ``store``: the writer path of one collected view, as a worker runs it
  (``DatasetStore.write_image`` of a 640x640 JPEG, ``record_row`` into the
  journal, a shard every 500 rows), with fsync (the library) against the same
  code with ``os.fsync`` replaced by a no-op (the baseline: what it was
  before, a kill-9-safe but not power-cut-safe folder).
* ``scrape``: a whole ``geotrainr scrape`` against the fake server of the
  tests on 127.0.0.1 (no network latency, so the worst case for the share of
  fsync), fsync on against off.
* ``resume check``: ``stored_image_ok`` over every image of the folder, as a
  resume runs it, per image.

    python benchmarks/scrape_durability.py            # 600 views
    python benchmarks/scrape_durability.py --quick    # 60 views
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from _common import append_result, base_parser, interleave, median, print_table, rounds, workdir  # noqa: E402


@contextlib.contextmanager
def fsync_off(off: bool):
    """``os.fsync`` as a no-op while ``off``: the same code path without the disk flushes."""
    real = os.fsync
    if off:
        os.fsync = lambda fd: None  # type: ignore[assignment]
    try:
        yield
    finally:
        os.fsync = real


def store_arm(root: Path, n: int, jpeg: bytes, off: bool) -> float:
    """Seconds per view of the writer path."""
    from geotrainr.data.scrape.writer import DatasetStore

    shutil.rmtree(root, ignore_errors=True)
    store = DatasetStore(root)
    store.open_for_writing()
    with fsync_off(off):
        t0 = time.perf_counter()
        for i in range(n):
            path = store.write_image(f"pano{i:06d}_0.jpg", jpeg)
            store.record_row({"image_path": path, "lat": 50.0, "lon": 10.0, "country": "DE", "pano_id": f"pano{i:06d}",
                              "heading": 0.0, "pitch": 0.0, "fov": 90.0, "capture_date": "2020-05",
                              "place_id": str(i), "source": "streetview"})
            if store.pending_rows >= 500:
                store.flush()
        store.flush()
        dt = time.perf_counter() - t0
    store.close()
    return dt / n


def scrape_arm(root: Path, places: int, off: bool) -> float:
    """Seconds per stored view of a whole scrape against the local fake server."""
    from fake_streetview import FakeStreetView

    from geotrainr.cli import main

    shutil.rmtree(root, ignore_errors=True)
    key = "BENCHKEY-0123456789"
    with FakeStreetView(key) as fake, fsync_off(off):
        os.environ["GOOGLE_MAPS_API_KEY"] = key
        args = ["scrape", "--countries", "DE,FR,IT,ES", "--places", str(places), "--headings", "0,180",
                "--size", "640x640", "--api-url", fake.url, "--out", str(root), "--workers", "4", "--rate", "0",
                "--quiet"]
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            rc = main(args)
        dt = time.perf_counter() - t0
        assert rc == 0, rc
        n = len(fake.requests("image", 200))
    return dt / max(1, n)


def check_arm(root: Path) -> float:
    """Seconds per image of the resume check."""
    from geotrainr.data.scrape.records import stored_image_ok

    images = sorted((root / "images").glob("*.jpg"))
    t0 = time.perf_counter()
    bad = [p for p in images if stored_image_ok(p, 640, 640) is not None]
    dt = time.perf_counter() - t0
    assert not bad
    return dt / len(images)


def main() -> None:
    args = base_parser(__doc__.splitlines()[0]).parse_args()
    from fake_streetview import FakeStreetView

    n = 60 if args.quick else 600
    places = 30 if args.quick else 150
    work = workdir(args, "scrape-durability")
    jpeg = FakeStreetView("k").jpeg("p" * 22, 0.0, 640, 640, 90.0, 0.0)
    arms = {
        "store, fsync": lambda r: store_arm(work / "store-on", n, jpeg, off=False),
        "store, no fsync": lambda r: store_arm(work / "store-off", n, jpeg, off=True),
        "scrape, fsync": lambda r: scrape_arm(work / "scrape-on", places, off=False),
        "scrape, no fsync": lambda r: scrape_arm(work / "scrape-off", places, off=True),
    }
    times = interleave(arms, rounds(args))
    check = [check_arm(work / "scrape-on") for _ in range(rounds(args))]
    figures = {name: median(v) * 1000 for name, v in times.items()}
    figures["resume check"] = median(check) * 1000
    rows = [(name, f"{ms:.2f}", ", ".join(f"{x * 1000:.2f}" for x in times.get(name, check))) for name, ms in figures.items()]
    print_table(["arm", "ms per view (median)", "rounds"], rows,
                title=f"{n} views written, {places} places scraped (2 headings, 640x640), jpeg {len(jpeg)} bytes")
    append_result(args.results, "scrape_durability", {"views": n, "places": places, "rounds": rounds(args), "quick": args.quick},
                  {k.replace(", ", "_").replace(" ", "_"): round(v, 3) for k, v in figures.items()})


if __name__ == "__main__":
    main()

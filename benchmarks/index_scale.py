"""Wall time and peak memory of building, validating and splitting a synthetic 1,000,000-row index.

Each run is a fresh process (peak memory is its ``ru_maxrss``). The library
arm generates rows (paths only: ``image_path``, ``lat``, ``lon``, ``country``),
then ``validate_index``, ``assign_splits`` (geographic blocks), ``write_index``,
and finally opens the result the way training does (``GeoDataModule`` and its
train dataset). The baseline arm generates the same rows and does a plain
pyarrow parquet write and read: the I/O floor any index format pays. The arms
alternate for ``--rounds`` rounds.

    python benchmarks/index_scale.py             # 1,000,000 rows
    python benchmarks/index_scale.py --quick     # 20,000 rows
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import append_result, base_parser, emit, interleave, median, peak_rss_mib, print_table, rounds, run_child, verdict, workdir  # noqa: E402

GOAL_SECONDS = 30.0
GOAL_PEAK_MIB = 2048.0


def synthetic_rows(n: int, seed: int = 0):
    """``n`` rows around the European countries' centres, one image path each."""
    import numpy as np
    import pandas as pd

    from geotrainr.countries import country_table

    europe = [c for c in country_table().values() if c.continent == "EU"]
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(europe), n)
    lat = np.clip(np.array([c.lat for c in europe])[pick] + rng.normal(0, 1.0, n), -90, 90)
    lon = np.clip(np.array([c.lon for c in europe])[pick] + rng.normal(0, 1.5, n), -180, 180)
    codes = np.array([c.iso2 for c in europe], dtype=object)[pick]
    paths = [f"images/{c}/{i:07d}.jpg" for i, c in enumerate(codes)]
    return pd.DataFrame({"image_path": paths, "lat": lat, "lon": lon, "country": codes})


def arm_library(n: int, folder: Path) -> dict:
    """Index steps with only the index module imported (as ``geotrainr index`` runs), then the training-side open."""
    from geotrainr.data.splits import assign_splits
    from geotrainr.data.index import validate_index, write_index

    steps: dict[str, float] = {}
    rss = {"after_imports": peak_rss_mib()}  # pandas, pyarrow and what geotrainr.data.index pulls in

    def timed(name: str, fn):
        t0 = time.perf_counter()
        out = fn()
        steps[name] = time.perf_counter() - t0
        rss[name] = peak_rss_mib()
        return out

    df = timed("generate", lambda: synthetic_rows(n))
    df = timed("validate", lambda: validate_index(df))
    df = timed("split", lambda: assign_splits(df, "block", val=0.1, test=0.1, block_km=25))
    path = timed("write", lambda: write_index(df, folder / "index.parquet"))
    del df
    index_seconds = sum(steps.values())
    index_peak = peak_rss_mib()

    def open_for_training():
        from geotrainr.data.datamodule import GeoDataModule  # Lightning, torchvision: imported here, counted here

        dm = GeoDataModule(str(path), num_workers=0)
        dm.setup("fit")
        return len(dm.dataset("train", train=True))

    train_rows = timed("open_for_training", open_for_training)
    return {"steps_s": steps, "peak_rss_mib": rss, "index_seconds": index_seconds, "index_peak_mib": index_peak,
            "total_seconds": sum(steps.values()), "peak_mib": peak_rss_mib(), "train_rows": train_rows,
            "bytes": path.stat().st_size}


def arm_plain(n: int, folder: Path) -> dict:
    import numpy  # noqa: F401 - imported before the clock starts, as in the library arm
    import pandas  # noqa: F401
    import pyarrow as pa
    import pyarrow.parquet as pq

    from geotrainr.countries import country_table

    country_table()
    rss = {"after_imports": peak_rss_mib()}
    t0 = time.perf_counter()
    df = synthetic_rows(n)
    t1 = time.perf_counter()
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), folder / "plain.parquet", compression="zstd")
    back = pq.read_table(folder / "plain.parquet").to_pandas()
    t2 = time.perf_counter()
    assert len(back) == n
    return {"steps_s": {"generate": t1 - t0, "write_read": t2 - t1}, "total_seconds": t2 - t0, "index_seconds": t2 - t0,
            "peak_mib": peak_rss_mib(), "index_peak_mib": peak_rss_mib(), "peak_rss_mib": rss}


def main() -> None:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=None, help="rows in the synthetic index (default 1,000,000; 20,000 with --quick)")
    p.add_argument("--arm", choices=("library", "plain"), default=None, help=_hidden())
    p.add_argument("--folder", type=Path, default=None, help=_hidden())
    args = p.parse_args()
    n = args.rows or (20_000 if args.quick else 1_000_000)
    if args.arm:
        emit((arm_library if args.arm == "library" else arm_plain)(n, args.folder))
        return

    scratch = workdir(args, "index")
    print(f"index scale: {n:,} rows, {rounds(args)} round(s), each run a fresh process; scratch {scratch}")
    runs: dict[str, list[dict]] = {"library": [], "plain": []}

    def run(arm: str) -> float:
        res = run_child(Path(__file__).resolve(), [f"--rows={n}", f"--arm={arm}", f"--folder={scratch}"])
        runs[arm].append(res)
        print(f"  {arm:<8} {res['total_seconds']:6.1f} s, peak {res['peak_mib']:7.0f} MiB  "
              + " ".join(f"{k} {v:.2f}s" for k, v in res["steps_s"].items()))
        return res["index_seconds"]

    times = interleave({"library": lambda r: run("library"), "plain": lambda r: run("plain")}, rounds(args))
    lib = runs["library"]
    index_s = median(times["library"])
    ratio = median([a / b for a, b in zip(times["library"], times["plain"])])
    index_peak = max(r["index_peak_mib"] for r in lib)
    steps = {k: median([r["steps_s"][k] for r in lib]) for k in lib[0]["steps_s"]}
    rows = [[k.replace("_", " "), v, f"{max(r['peak_rss_mib'][k] for r in lib):.0f}"] for k, v in steps.items()]
    rows.append(["index total (generate .. write)", index_s, f"{index_peak:.0f}"])
    rows.append(["plain pyarrow write + read", median(times["plain"]), f"{max(r['peak_mib'] for r in runs['plain']):.0f}"])
    print_table(["step", "seconds (median)", "peak RSS MiB so far"], rows,
                title=f"{n:,}-row index (imports alone: {lib[0]['peak_rss_mib']['after_imports']:.0f} MiB)")
    print(f"\nindex built, validated, split and written in {index_s:.1f} s (goal < {GOAL_SECONDS:g} s: "
          f"{verdict(index_s, GOAL_SECONDS, higher_is_better=False)}), peak {index_peak:.0f} MiB (goal < {GOAL_PEAK_MIB:g} MiB: "
          f"{verdict(index_peak, GOAL_PEAK_MIB, higher_is_better=False)}); {ratio:.1f}x a plain parquet round trip; "
          f"opening it for training: {steps['open_for_training']:.1f} s, peak {max(r['peak_mib'] for r in lib):.0f} MiB")
    figures = {"rows": n, "index_seconds": index_s, "index_peak_mib": index_peak, "steps_s": steps,
               "open_for_training_peak_mib": max(r["peak_mib"] for r in lib), "plain_seconds": median(times["plain"]),
               "ratio_to_plain": ratio, "file_mib": lib[0]["bytes"] / 2**20,
               "goal_seconds": GOAL_SECONDS, "goal_peak_mib": GOAL_PEAK_MIB,
               "goal_met": index_s < GOAL_SECONDS and index_peak < GOAL_PEAK_MIB, "runs": runs}
    append_result(args.results, "index_scale", {"rows": n, "rounds": rounds(args), "quick": args.quick}, figures)


def _hidden() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()

"""Memory and speed of the train loader as the data set grows: a packed set against one file per image.

For each size in ``--sizes`` (default 100,000 and 1,000,000 rows) this builds, under ``--workdir``:
an index of small real JPEGs as files (``--distinct`` JPEGs re-encoded from ``--photos``, hard-linked
so that every row has its own file without the disk cost), and the same index packed with
``geotrainr pack``. Then, each arm in a fresh process, ``GeoDataModule(...)`` + ``setup("fit")`` and the
train loader (``--workers`` workers, batch 64, train transform at ``--image-size``) for ``--batches``
batches: images/s after warm-up, ``setup`` seconds, and the peak memory of the main process plus its
workers (RSS summed, as ``ps`` shows it, and PSS, which counts shared pages once). The model's own
consumption rate (Lite0 training at ``--image-size``, batch 32) is measured in the same run.

    python benchmarks/scale.py --photos DIR --workdir /big/disk          # 100 k and 1 M rows
    python benchmarks/scale.py --sizes 100000 --photos DIR               # 100 k only
    python benchmarks/scale.py --quick
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    RssSampler, append_result, base_parser, emit, interleave, loader_rate, make_jpegs, median, print_table, rounds, run_child,
    verdict, workdir,
)

COUNTRIES = ["DE", "FR", "IT", "ES", "PL", "SE", "GB", "NL", "PT", "AT", "CZ", "RO"]
GOAL_MEMORY_GROWTH = 1.2
GOAL_MEMORY_GIB = 2.5
GOAL_SHARDS_OVER_FILES = 0.9
GOAL_LOADER_OVER_MODEL = 3.0
GOAL_SETUP_S = 10.0


def build(folder: Path, rows: int, jpegs: list[Path], workers: int) -> dict:
    """The files index and the packed set of ``rows`` rows (reused when already built)."""
    import numpy as np
    import pandas as pd

    from geotrainr.data.index import write_index
    from geotrainr.data.packed.manifest import PACK_MANIFEST as MANIFEST
    from geotrainr.data.packed.pack import pack

    folder.mkdir(parents=True, exist_ok=True)
    stamp = folder / "built.json"
    if stamp.is_file():
        return json.loads(stamp.read_text())
    t0 = time.perf_counter()
    paths = []
    for i in range(rows):
        rel = f"img/{i // 10000:03d}/{i:07d}.jpg"
        dst = folder / rel
        if i % 10000 == 0:
            dst.parent.mkdir(parents=True, exist_ok=True)
        if not dst.exists():
            os.link(jpegs[i % len(jpegs)], dst)
        paths.append(rel)
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"image_path": paths, "lat": rng.uniform(36, 60, rows), "lon": rng.uniform(-9, 25, rows),
                       "country": np.array(COUNTRIES)[rng.integers(0, len(COUNTRIES), rows)],
                       "split": np.where(rng.random(rows) < 0.9, "train", "val")})
    write_index(df, folder / "files.parquet")
    files_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    if not (folder / "packed" / MANIFEST).exists():
        pack(folder / "files.parquet", folder / "packed", workers=workers)
    info = {"rows": rows, "files_s": files_s, "pack_s": time.perf_counter() - t0,
            "packed_bytes": sum(p.stat().st_size for p in (folder / "packed").iterdir())}
    stamp.write_text(json.dumps(info))
    return info


def loader_arm(index: Path, workers: int, image_size: int, batches: int, warmup: int) -> dict:
    """Child process: setup seconds, loader images/s and peak memory of this process and its workers."""
    from geotrainr.data.datamodule import GeoDataModule
    from geotrainr.preprocess import Preprocessing

    with RssSampler() as mem:
        t0 = time.perf_counter()
        dm = GeoDataModule(str(index), batch_size=64, num_workers=workers)
        dm.set_preprocessing(Preprocessing(image_size=image_size))
        dm.setup("fit")
        setup_s = time.perf_counter() - t0
        rate = loader_rate(dm.train_dataloader(), batches, warmup)
    return {"images_per_s": rate, "setup_s": setup_s, "peak_rss_mib": mem.peak / 2**20, "peak_pss_mib": mem.peak_pss / 2**20}


def model_rate(image_size: int, quick: bool) -> float:
    """Training images/s of Lite0 (the country config's backbone) at ``image_size``, batch 32, on ready-made batches."""
    from pipeline import ModelRate

    backbone = "test_efficientnet" if quick else "tf_efficientnet_lite0"
    return ModelRate(backbone, None, image_size, 32).rate(1, 1 if quick else 4)


def main() -> None:
    p = base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--photos", type=Path, default=None, help="photos to re-encode (default: demo patches)")
    p.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000], help="rows per data set")
    p.add_argument("--distinct", type=int, default=2048, help="distinct JPEGs, hard-linked to fill the rows")
    p.add_argument("--size", type=int, default=224, help="side of the JPEGs")
    p.add_argument("--image-size", type=int, default=224, help="model input side")
    p.add_argument("--workers", type=int, default=2, help="loader workers (and pack processes)")
    p.add_argument("--batches", type=int, default=40, help="timed batches of 64 per arm")
    p.add_argument("--child", nargs=2, metavar=("WHAT", "INDEX"), help=argparse_hidden())
    args = p.parse_args()
    if args.child:
        what, index = args.child
        if what == "model":
            emit({"images_per_s": model_rate(args.image_size, args.quick)})
        else:
            emit(loader_arm(Path(index), args.workers, args.image_size, args.batches, 2 + 2 * args.workers))
        return
    if args.quick:
        args.sizes, args.distinct, args.batches = [2_000, 4_000], 64, 3
    n_rounds = rounds(args)
    root = workdir(args, "scale")
    jpegs, what = make_jpegs(root / "jpegs", args.distinct, size=args.size, photos=args.photos, quality=85)
    built = {}
    for n in args.sizes:
        t0 = time.perf_counter()
        built[n] = build(root / f"rows-{n}", n, jpegs, args.workers)
        print(f"{n:,} rows: files {built[n]['files_s']:.0f} s, pack {built[n]['pack_s']:.0f} s, "
              f"{built[n]['packed_bytes'] / 2**30:.2f} GiB packed (ready in {time.perf_counter() - t0:.0f} s)", flush=True)
    common = ["--workers", str(args.workers), "--image-size", str(args.image_size), "--batches", str(args.batches)]
    arms = {"model": lambda r: run_child(Path(__file__), ["--child", "model", "-", *common, *(["--quick"] if args.quick else [])])}
    for n in args.sizes:
        for kind, index in (("files", root / f"rows-{n}" / "files.parquet"), ("packed", root / f"rows-{n}" / "packed")):
            arms[f"{kind}-{n}"] = (lambda r, index=index: run_child(Path(__file__), ["--child", "loader", str(index), *common]))
    runs = interleave(arms, n_rounds)
    model = median([r["images_per_s"] for r in runs["model"]])
    figures: dict = {"model_images_per_s": model, "model_runs": runs["model"], "built": built}
    rows = []
    for n in args.sizes:
        for kind in ("files", "packed"):
            k = f"{kind}-{n}"
            f = {m: median([r[m] for r in runs[k]]) for m in ("images_per_s", "setup_s", "peak_rss_mib", "peak_pss_mib")}
            f["x_model"] = f["images_per_s"] / model
            if kind == "packed":
                f["x_files"] = median([a["images_per_s"] / b["images_per_s"] for a, b in zip(runs[k], runs[f"files-{n}"])])
            figures[k] = {**f, "runs": runs[k]}
            rows.append([f"{n:,}", kind, f["setup_s"], f["images_per_s"], f.get("x_files", ""), f["x_model"],
                         f["peak_rss_mib"], f["peak_pss_mib"]])
    print_table(["rows", "source", "setup s", "images/s", "x files", "x model", "peak RSS MiB (main + workers)", "peak PSS MiB"],
                rows, title=f"train loader, {args.workers} workers, batch 64, {args.image_size} px; {what}, {args.size} px JPEGs; "
                            f"model (Lite0 training) {model:.1f} images/s")
    small, large = min(args.sizes), max(args.sizes)
    goals = {
        "memory_growth": figures[f"packed-{large}"]["peak_rss_mib"] / figures[f"packed-{small}"]["peak_rss_mib"],
        "memory_gib": figures[f"packed-{large}"]["peak_rss_mib"] / 1024,
        "shards_over_files": min(figures[f"packed-{n}"]["x_files"] for n in args.sizes),
        "loader_over_model": min(figures[f"packed-{n}"]["x_model"] for n in args.sizes),
        "setup_s": figures[f"packed-{large}"]["setup_s"],
    }
    figures["goals"] = goals
    print_table(["goal", "measured", ""], [
        [f"packed peak RSS, {large:,} / {small:,} rows <= {GOAL_MEMORY_GROWTH}", goals["memory_growth"],
         verdict(goals["memory_growth"], GOAL_MEMORY_GROWTH, False)],
        [f"packed peak RSS at {large:,} rows < {GOAL_MEMORY_GIB} GiB", goals["memory_gib"], verdict(goals["memory_gib"], GOAL_MEMORY_GIB, False)],
        [f"packed / files >= {GOAL_SHARDS_OVER_FILES}", goals["shards_over_files"], verdict(goals["shards_over_files"], GOAL_SHARDS_OVER_FILES)],
        [f"packed loader / model >= {GOAL_LOADER_OVER_MODEL}", goals["loader_over_model"], verdict(goals["loader_over_model"], GOAL_LOADER_OVER_MODEL)],
        [f"setup() at {large:,} rows < {GOAL_SETUP_S} s", goals["setup_s"], verdict(goals["setup_s"], GOAL_SETUP_S, False)],
    ], title="goals")
    append_result(args.results, "scale", {"sizes": args.sizes, "distinct": args.distinct, "size": args.size, "source": what,
                                          "image_size": args.image_size, "workers": args.workers, "batches": args.batches,
                                          "rounds": n_rounds, "quick": args.quick}, figures)


def argparse_hidden():
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()

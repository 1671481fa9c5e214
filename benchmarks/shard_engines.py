"""Three shard engines side by side on the same JPEGs: litdata, webdataset tar shards, parquet row groups.

Each engine packs the same images (``--images``, small real JPEGs re-encoded from ``--photos``) into its
own format, then a train loader (2 workers, batch 64, the library's decode and train transform at
``--image-size``) runs a fixed number of batches. Reported per engine: pack seconds, bytes on disk,
loader images/s and the peak RSS of the main process plus its workers (sampled from /proc every 20 ms).
A plain files loader (``GeoDataset`` over one file per image) is the baseline. Every read arm runs in
a fresh process, arms interleaved round after round.

    python benchmarks/shard_engines.py --photos /path/to/photos
    python benchmarks/shard_engines.py --quick
"""

from __future__ import annotations

import io
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    RssSampler, append_result, base_parser, emit, interleave, loader_rate, make_jpegs, median, print_table, rounds, run_child,
    workdir,
)

ENGINES = ("files", "parquet", "webdataset", "litdata")
COUNTRIES = ["DE", "FR", "IT", "ES", "PL", "SE"]


# --- packing ------------------------------------------------------------------------------------


def pack_all(folder: Path, files: list[Path], rows_per_group: int) -> dict:
    """Write the images in every engine's format; returns seconds and bytes per engine."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out: dict = {}
    labels = [i % len(COUNTRIES) for i in range(len(files))]
    # parquet: shards of up to 4 row groups, image column uncompressed (JPEG does not compress)
    t0 = time.perf_counter()
    pdir = folder / "parquet"
    shutil.rmtree(pdir, ignore_errors=True)
    pdir.mkdir()
    per_shard = rows_per_group * 4
    for s, start in enumerate(range(0, len(files), per_shard)):
        chunk = files[start:start + per_shard]
        table = pa.table({"image": pa.array([f.read_bytes() for f in chunk], pa.binary()),
                          "label": pa.array(labels[start:start + per_shard], pa.int64())})
        pq.write_table(table, pdir / f"part-{s:05d}.parquet", row_group_size=rows_per_group,
                       compression={"image": "none", "label": "zstd"}, use_dictionary=["label"])
    out["parquet"] = {"pack_s": time.perf_counter() - t0, "bytes": sum(p.stat().st_size for p in pdir.iterdir())}
    # webdataset: tar shards of the same size
    import webdataset as wds

    t0 = time.perf_counter()
    wdir = folder / "webdataset"
    shutil.rmtree(wdir, ignore_errors=True)
    wdir.mkdir()
    with wds.ShardWriter(str(wdir / "shard-%05d.tar"), maxcount=per_shard, verbose=0) as sink:
        for i, f in enumerate(files):
            sink.write({"__key__": f"{i:08d}", "jpg": f.read_bytes(), "cls": labels[i]})
    out["webdataset"] = {"pack_s": time.perf_counter() - t0, "bytes": sum(p.stat().st_size for p in wdir.iterdir())}
    # litdata: its optimize() chunks
    import litdata as ld

    t0 = time.perf_counter()
    ldir = folder / "litdata"
    shutil.rmtree(ldir, ignore_errors=True)
    ld.optimize(fn=_litdata_item, inputs=[(str(f), labels[i]) for i, f in enumerate(files)], output_dir=str(ldir),
                chunk_bytes="32MB", num_workers=1, mode="overwrite")
    out["litdata"] = {"pack_s": time.perf_counter() - t0, "bytes": sum(p.stat().st_size for p in ldir.rglob("*") if p.is_file())}
    return out


def _litdata_item(item):
    path, label = item
    return {"image": Path(path).read_bytes(), "label": label}


# --- reading (child process) ----------------------------------------------------------------------


def _transform(image_size: int):
    from geotrainr.preprocess import Preprocessing
    from geotrainr.augment import build_transform

    pre = Preprocessing(image_size=image_size)
    return build_transform(pre, train=True), pre.draft_size


def _sample(data: bytes, label: int, transform, draft):
    from geotrainr.preprocess import decode

    with decode(data, draft) as im:
        return {"image": transform(im), "label": label}


class ParquetRowGroups:
    """Lazy row-group reads: each worker takes a disjoint share of the (shuffled) row groups."""

    def __new__(cls, folder: str, transform, draft, batch_size: int, seed: int = 0):
        import numpy as np
        import pyarrow.parquet as pq
        import torch

        class _DS(torch.utils.data.IterableDataset):
            def __iter__(self):
                info = torch.utils.data.get_worker_info()
                wid, nw = (info.id, info.num_workers) if info else (0, 1)
                groups = [(p, g) for p in sorted(Path(folder).glob("*.parquet")) for g in range(pq.ParquetFile(p).num_row_groups)]
                rng = np.random.default_rng(seed)
                order = rng.permutation(len(groups))[wid::nw]
                batch = []
                for k in order:
                    path, g = groups[k]
                    t = pq.ParquetFile(path).read_row_group(g)
                    images, labels = t.column("image").chunks[0], t.column("label").to_numpy()
                    for j in rng.permutation(len(t)):
                        batch.append(_sample(images[int(j)].as_py(), int(labels[j]), transform, draft))
                        if len(batch) == batch_size:
                            yield torch.utils.data.default_collate(batch)
                            batch = []

        return _DS()


def read_arm(engine: str, folder: Path, files_index: Path, batches: int, warmup: int, image_size: int, workers: int) -> dict:
    import torch

    transform, draft = _transform(image_size)
    bs = 64
    with RssSampler() as rss:
        t_setup = time.perf_counter()
        if engine == "files":
            from geotrainr.data.dataset import GeoDataset, collate_skip
            from geotrainr.data.index import read_index

            df = read_index(files_index)
            ds = GeoDataset(df, files_index.parent, transform, COUNTRIES, draft_size=draft)
            loader = torch.utils.data.DataLoader(ds, batch_size=bs, shuffle=True, num_workers=workers, collate_fn=collate_skip)
        elif engine == "parquet":
            loader = torch.utils.data.DataLoader(ParquetRowGroups(str(folder / "parquet"), transform, draft, bs),
                                                 batch_size=None, num_workers=workers)
        elif engine == "webdataset":
            import webdataset as wds

            urls = sorted(str(p) for p in (folder / "webdataset").glob("*.tar"))
            ds = (wds.WebDataset(urls, shardshuffle=len(urls), nodesplitter=wds.split_by_node, workersplitter=wds.split_by_worker)
                  .shuffle(1000).map(lambda s: _sample(s["jpg"], int(s["cls"]), transform, draft)).batched(bs))
            loader = wds.WebLoader(ds, batch_size=None, num_workers=workers)
        else:
            import litdata as ld

            class LD(ld.StreamingDataset):
                def __getitem__(self, i):
                    item = super().__getitem__(i)
                    return _sample(item["image"], int(item["label"]), transform, draft)

            loader = ld.StreamingDataLoader(LD(str(folder / "litdata"), shuffle=True), batch_size=bs, num_workers=workers)
        setup_s = time.perf_counter() - t_setup
        rate = loader_rate(loader, batches, warmup)
    return {"images_per_s": rate, "peak_rss_mib": rss.peak / 2**20, "peak_pss_mib": rss.peak_pss / 2**20, "setup_s": setup_s}


def main() -> None:
    p = base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--photos", type=Path, default=None, help="photos to re-encode (default: demo patches)")
    p.add_argument("--images", type=int, default=8192, help="JPEGs to pack")
    p.add_argument("--size", type=int, default=256, help="side of the JPEGs in pixels")
    p.add_argument("--image-size", type=int, default=224, help="model input side (train transform)")
    p.add_argument("--batches", type=int, default=40, help="timed batches of 64 per arm")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--child", nargs=2, metavar=("ENGINE", "FOLDER"), help=argparse_hidden())
    args = p.parse_args()
    if args.child:
        engine, folder = args.child
        folder = Path(folder)
        emit(read_arm(engine, folder, folder / "files.parquet", args.batches, 2 + 2 * args.workers, args.image_size, args.workers))
        return
    if args.quick:
        args.images, args.batches = 1024, 3
    n_rounds = rounds(args)
    folder = workdir(args, "shard-engines")
    files, what = make_jpegs(folder / "jpegs", args.images, size=args.size, photos=args.photos, quality=85)
    import pandas as pd

    from geotrainr.data.index import write_index

    write_index(pd.DataFrame({"image_path": [f.relative_to(folder).as_posix() for f in files], "lat": 50.0, "lon": 10.0,
                              "country": [COUNTRIES[i % len(COUNTRIES)] for i in range(len(files))], "split": "train"}),
                folder / "files.parquet")
    packed = pack_all(folder, files, rows_per_group=128 if args.quick else 512)
    packed["files"] = {"pack_s": 0.0, "bytes": sum(f.stat().st_size for f in files)}
    common = ["--batches", str(args.batches), "--workers", str(args.workers), "--image-size", str(args.image_size)]
    arms = {e: (lambda r, e=e: run_child(Path(__file__), ["--child", e, str(folder), *common])) for e in ENGINES}
    runs = interleave(arms, n_rounds)
    figures: dict = {}
    rows = []
    for e in ENGINES:
        rate = median([r["images_per_s"] for r in runs[e]])
        rss = median([r["peak_rss_mib"] for r in runs[e]])
        pss = median([r["peak_pss_mib"] for r in runs[e]])
        figures[e] = {"images_per_s": rate, "peak_rss_mib": rss, "peak_pss_mib": pss, "runs": runs[e], **packed[e]}
        rows.append([e, f"{packed[e]['pack_s']:.1f}", f"{packed[e]['bytes'] / 2**20:.0f}", rate, rss, pss])
    for e, row in zip(ENGINES, rows):
        figures[e]["x_files"] = median([a["images_per_s"] / b["images_per_s"] for a, b in zip(runs[e], runs["files"])])
        row.append(figures[e]["x_files"])
    print_table(["engine", "pack s", "MiB on disk", "images/s", "peak RSS MiB (main + workers)", "peak PSS MiB", "x files"], rows,
                title=f"{len(files)} JPEGs ({what}, {args.size} px), {args.workers} workers, batch 64, {args.image_size} px")
    append_result(args.results, "shard_engines", {"images": len(files), "size": args.size, "source": what, "workers": args.workers,
                                                  "batches": args.batches, "image_size": args.image_size, "rounds": n_rounds,
                                                  "quick": args.quick}, figures)


def argparse_hidden():
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()

"""`geotrainr pack INDEX --out DIR_OR_URL`: an index as a packed set, the images embedded in parquet row groups."""

from __future__ import annotations

import argparse
import os


def build_parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Embed an index's images (files, zip members or bytes) in parquet shards that training streams "
        "one row group at a time: memory per process stays flat however many images there are, and every DDP rank "
        "and loader worker reads its own part of each epoch. The packed set is an index: pass it to fit/test as "
        "--data.init_args.index, to report and to export-dataset. Interrupted? Run the same command again: finished "
        "shards are kept.",
        epilog="object storage: --out s3://bucket/set (or gs://..., any URL fsspec opens) writes there directly; "
        "the bucket must exist; credentials and endpoint come from the usual environment variables (AWS_ACCESS_KEY_ID, "
        "AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL_S3), never from the command line.",
    )
    p.add_argument("index", help="parquet index file or shard folder, or 'demo'")
    p.add_argument("--out", required=True, help="a new folder, or a URL (s3://..., gs://...)")
    p.add_argument("--max-side", type=int, default=None,
                   help="re-encode images whose long side is larger to this many pixels (e.g. 448 for training at 224)")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality of re-encoded images (default 90)")
    p.add_argument("--rows-per-group", type=int, default=512,
                   help="images per row group, the unit each loader process reads and buffers (default 512)")
    p.add_argument("--groups-per-shard", type=int, default=16, help="row groups per parquet file (default 16)")
    p.add_argument("--seed", type=int, default=0, help="order of the rows in the set, and the split of an index without one")
    p.add_argument("--workers", type=int, default=None, help="processes writing shards (default: the CPU cores)")
    return p


def run(args: argparse.Namespace) -> int:
    from geotrainr.data.packed.pack import pack
    from geotrainr.progress import progress_bar

    workers = args.workers if args.workers is not None else (os.cpu_count() or 1)
    with progress_bar("packing", unit="img") as bar:
        result = pack(args.index, args.out, max_side=args.max_side, quality=args.quality,
                      rows_per_group=args.rows_per_group, groups_per_shard=args.groups_per_shard, seed=args.seed,
                      workers=workers, progress=bar.done_of)
    print("split   images")
    for split, n in result.splits.items():
        if n:
            print(f"{split:<7} {n:>7}")
    if result.reused:
        print(f"kept {result.reused} shard(s) written before; wrote {result.written}")
    if result.unreadable:
        print(f"warning: {result.unreadable} image(s) could not be read or are not images (e.g. "
              f"{', '.join(result.unreadable_examples or [])}); stored empty, or as they are where only decoding failed "
              "(training skips and counts them, see --data.max_unreadable)")
    print(f"wrote {result.rows} images in {result.shards} shard(s) to {result.out} "
          f"({result.nbytes / 2**20:,.1f} MiB of images written now)")
    return 0

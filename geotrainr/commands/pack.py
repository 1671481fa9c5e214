"""`geotrainr pack --index INDEX --out DIR_OR_URL`: an index as a packed set, the images embedded in parquet row groups."""

from __future__ import annotations

import argparse
import contextlib
import os
from pathlib import Path

from geotrainr.commands import OutputExistsError, add_force, add_out, deprecated
from geotrainr.data.packed.manifest import PACK_MANIFEST
from geotrainr.files import staged_folder


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
    p.add_argument("--index", default=None, help="parquet index file or shard folder, or 'demo'")
    deprecated(p, "index", "--index INDEX", store="index")
    add_out(p, "a new folder, or a URL (s3://..., gs://...)", required=True)
    add_force(p, "a finished pack in a local --out folder (the new pack is written beside it, then swapped in)")
    p.add_argument("--max-side", type=int, default=None,
                   help="re-encode images whose long side is larger to this many pixels (e.g. 448 for training at 224)")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality of re-encoded images (default 90)")
    p.add_argument("--rows-per-group", type=int, default=512,
                   help="images per row group, the unit each loader process reads and buffers (default 512)")
    p.add_argument("--groups-per-shard", type=int, default=16, help="row groups per parquet file (default 16)")
    p.add_argument("--seed", type=int, default=0, help="order of the rows in the set, and the split of an index without one")
    p.add_argument("--workers", type=int, default=None, help="processes writing shards (default: the CPU cores)")
    return p


def _replaced(out: str, force: bool) -> Path | None:
    """The local folder --force replaces (None: nothing to replace). Resuming an unfinished pack replaces nothing;
    a finished pack is refused without --force."""
    from geotrainr.data.packed.location import PackError

    local = "://" not in out
    finished = local and (Path(out) / PACK_MANIFEST).is_file()
    if not force:
        if finished:
            raise OutputExistsError(f"--out {out} already holds a finished pack; add --force to replace it")
        return None
    if not local:
        raise PackError(f"--force replaces local folders only; remove {out} to pack there again")
    path = Path(out)
    return path if path.is_dir() and any(path.iterdir()) else None


def run(args: argparse.Namespace) -> int:
    from geotrainr.data.packed.location import PackError
    from geotrainr.data.packed.pack import pack
    from geotrainr.progress import progress_bar

    if args.index is None:
        raise PackError("give the index to pack: --index INDEX")
    workers = args.workers if args.workers is not None else (os.cpu_count() or 1)
    replace = _replaced(args.out, args.force)
    with progress_bar("packing", unit="img") as bar, \
            (staged_folder(replace) if replace else contextlib.nullcontext(args.out)) as target:
        result = pack(args.index, target, max_side=args.max_side, quality=args.quality,
                      rows_per_group=args.rows_per_group, groups_per_shard=args.groups_per_shard, seed=args.seed,
                      workers=workers, progress=bar)
    result.out = str(args.out)
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

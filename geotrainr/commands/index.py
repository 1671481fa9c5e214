"""`geotrainr index`: build a validated, split parquet index from a folder or a CSV."""

from __future__ import annotations

import argparse
from pathlib import Path

from geotrainr.data.index import (
    IndexValidationError,
    assign_splits,
    index_from_csv,
    index_from_folder,
    summarize,
    validate_index,
    write_index,
)


def build_parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Build a parquet image index from a folder of CC_lat,lon.ext images or from a CSV "
        "(path,lat,lon[,country][,extra columns]). Missing countries are filled offline from GeoNames.",
    )
    p.add_argument("src", nargs="?", help="folder of images named CC_lat,lon.ext (e.g. DE_52.52,13.40.png)")
    p.add_argument("--csv", help="CSV with columns path,lat,lon[,country]; paths relative to the CSV's folder")
    p.add_argument("--out", required=True, help="index file to write (e.g. data/index.parquet)")
    p.add_argument("--split", choices=["random", "block", "keep"], default=None,
                   help="random: per row (default); block: whole geographic cells per split; keep: use the CSV's split column")
    p.add_argument("--val", type=float, default=0.2, help="validation fraction (default 0.2)")
    p.add_argument("--test", type=float, default=0.0, help="test fraction (default 0)")
    p.add_argument("--block-km", type=float, default=50.0, help="cell size of the block split in km (default 50)")
    p.add_argument("--seed", type=int, default=0, help="split seed (default 0)")
    p.add_argument("--check-images", action="store_true", help="open and decode every image (slow, thorough)")
    p.add_argument("--min-rows", type=int, default=10, help="flag countries with fewer rows than this in the summary")
    p.add_argument("--shard-rows", type=int, default=None, help="write a folder of shards of this many rows")
    return p


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if bool(args.src) == bool(args.csv):
        raise IndexValidationError("give either a source folder or --csv FILE (exactly one)")
    df = index_from_csv(args.csv, out.parent) if args.csv else index_from_folder(args.src, out.parent)
    df = validate_index(df)
    method = args.split or ("keep" if "split" in df.columns else "random")
    if method == "keep":
        if "split" not in df.columns:
            raise IndexValidationError("--split keep needs a split column in the source")
    else:
        df = assign_splits(df, method, val=args.val, test=args.test, seed=args.seed, block_km=args.block_km)
    if args.check_images:
        validate_index(df, root=out.resolve().parent, check_images=True)
    write_index(df, out, shard_rows=args.shard_rows)
    print(summarize(df, args.min_rows))
    print(f"\nwrote {out}")
    return 0

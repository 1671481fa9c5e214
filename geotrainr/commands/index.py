"""`geotrainr index`: build a validated, split parquet index from a folder, a CSV or a public dataset layout."""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

from geotrainr.data.index import (
    IndexValidationError,
    assign_splits,
    check_image_headers,
    image_label,
    index_from_folder,
    straddling_groups,
    summarize,
    validate_index,
    write_index,
)
from geotrainr.data.sources import FORMATS, SourceRows, parse_columns, reader


def build_parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Build a parquet image index from a folder of CC_lat,lon.ext images, a CSV "
        "(path,lat,lon[,country][,extra columns]) or a public layout (--from osv5m|exif|im2gps3k|yfcc4k|hf). "
        "Missing countries are filled offline from GeoNames.",
    )
    p.add_argument("src", nargs="?", help="folder of images named CC_lat,lon.ext (e.g. DE_52.52,13.40.png), or the source of --from")
    p.add_argument("--from", dest="fmt", choices=list(FORMATS), default=None,
                   help="layout of SRC: osv5m (train.csv/test.csv + images/{train,test}/*.zip), exif (photos with GPS), "
                        "im2gps3k / yfcc4k (benchmark CSV + image folder), hf (Hugging Face parquet export), csv")
    p.add_argument("--csv", help="CSV with columns path,lat,lon[,country]; paths relative to the CSV's folder")
    p.add_argument("--columns", default=None,
                   help="map the source's column names: path=COL,lat=COL,lon=COL,country=COL[,split=,group=,creator=,image=]")
    p.add_argument("--images", default=None, help="image folder, where it is not the default of the layout")
    p.add_argument("--out", required=True, help="index file to write (e.g. data/index.parquet)")
    p.add_argument("--split", choices=["group", "random", "block", "keep"], default=None,
                   help="group (default): views of one place (pano, sequence, group, within --radius-m) in one split; "
                        "random: per row (leaks near-duplicates); block: whole geographic cells; "
                        "keep: the source's split column. A source's test rows (OSV-5M, benchmarks) stay test.")
    p.add_argument("--val", type=float, default=0.2, help="validation fraction (default 0.2)")
    p.add_argument("--test", type=float, default=0.0, help="test fraction (default 0)")
    p.add_argument("--block-km", type=float, default=50.0, help="cell size of the block split in km (default 50)")
    p.add_argument("--radius-m", type=float, default=10.0, help="views closer than this are one place in the group split (default 10 m)")
    p.add_argument("--seed", type=int, default=0, help="split seed (default 0)")
    p.add_argument("--no-check", action="store_true", help="skip the header check of every image (size > 0, readable header)")
    p.add_argument("--check-images", action="store_true", help="fully decode every image and refuse on the first bad one (slow)")
    p.add_argument("--min-rows", type=int, default=10, help="flag countries with fewer rows than this in the summary")
    p.add_argument("--shard-rows", type=int, default=None, help="write a folder of shards of this many rows")
    return p


def skipped_listing_path(out: Path) -> Path:
    """Where the items left out of index ``out`` are listed: ``index.parquet`` -> ``index.skipped.csv``."""
    return out.with_name(f"{out.name.removesuffix('.parquet')}.skipped.csv")


def _read_source(args: argparse.Namespace, index_dir: Path) -> SourceRows:
    if (args.fmt and (args.csv or not args.src)) or (not args.fmt and bool(args.src) == bool(args.csv)):
        raise IndexValidationError("give exactly one source: a folder, --csv FILE, or --from FORMAT SRC")
    columns = parse_columns(args.columns)
    if args.fmt:
        return reader(args.fmt)(args.src, index_dir, columns=columns, images=args.images)
    if args.csv:
        return reader("csv")(args.csv, index_dir, columns=columns, images=args.images)
    if columns:
        raise IndexValidationError("--columns applies to --csv and --from sources, not to a folder of CC_lat,lon.ext files")
    return SourceRows(index_from_folder(args.src, index_dir))


def _choose_split(df, requested: str | None) -> tuple[str, bool]:
    """(method, keep_test). A source with val rows keeps its split; a source's test rows always stay test."""
    if "split" not in df.columns:
        if requested == "keep":
            raise IndexValidationError("--split keep needs a split column in the source")
        return requested or "group", False
    splits = set(df["split"])
    if requested == "keep" or (requested is None and ("val" in splits or splits == {"test"})):
        return "keep", True
    return requested or "group", True


def _report_skipped(skipped: list[tuple[str, str]], listing: Path) -> None:
    """One line per reason on stderr (with the first few items) and the full listing beside the index."""
    import csv

    from geotrainr.files import write_text_atomic

    if not skipped:
        listing.unlink(missing_ok=True)  # a listing from an earlier run would describe another index
        return
    buffer = io.StringIO(newline="")
    w = csv.writer(buffer)
    w.writerow(["item", "reason"])
    w.writerows(skipped)
    write_text_atomic(listing, buffer.getvalue())
    by_reason: dict[str, list[str]] = {}
    for item, reason in skipped:
        by_reason.setdefault(reason.split(" (")[0], []).append(item)
    print(f"skipped {len(skipped)} item(s), listed in {listing}:", file=sys.stderr)
    for reason, items in by_reason.items():
        more = f", ... ({len(items) - 3} more)" if len(items) > 3 else ""
        print(f"  {len(items)} {reason}: {', '.join(items[:3])}{more}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    index_dir = out.resolve().parent
    rows = _read_source(args, index_dir)
    df = validate_index(rows.frame)
    skipped = list(rows.skipped)
    if not args.no_check and not args.check_images:  # --check-images decodes fully below, refusing on a bad image
        bad = check_image_headers(df, index_dir)
        if bad:
            skipped += [(image_label(df, i) or f"row {i}", reason) for i, reason in bad]
            df = df.drop(index=[i for i, _ in bad]).reset_index(drop=True)
            if len(df) == 0:
                _report_skipped(skipped, skipped_listing_path(out))
                raise IndexValidationError(f"no usable image: all {len(bad)} failed the header check")
    method, keep_test = _choose_split(df, args.split)
    if method != "keep":
        df = assign_splits(df, method, val=args.val, test=args.test, seed=args.seed, block_km=args.block_km,
                           radius_m=args.radius_m, keep_test=keep_test)
    if args.check_images:
        validate_index(df, root=index_dir, check_images=True)
    write_index(df, out, shard_rows=args.shard_rows)
    _report_skipped(skipped, skipped_listing_path(out))
    print(summarize(df, args.min_rows))
    leaked = straddling_groups(df, args.radius_m)
    print(f"\nplaces with views in more than one split: {leaked}"
          + (" (near-duplicates leak into validation: use --split group or block)" if leaked else ""))
    print(f"wrote {out}")
    return 0

"""`geotrainr index`: build a validated, split parquet index from a folder, a CSV or a public dataset layout."""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

from geotrainr.commands import add_force, add_out, deprecated, refuse_existing
from geotrainr.data.splits import PLACE_RADIUS_M, assign_splits, check_split_settings, straddling_groups
from geotrainr.data.schema import IndexValidationError, image_label
from geotrainr.data.image_files import check_image_headers
from geotrainr.data.index import summarize, validate_index, write_index
from geotrainr.data.sources import FORMATS, SourceRows, parse_columns, reader
from geotrainr.data.sources.folders import read_folder


#: how the index verb assigns splits (``--split-by``)
SPLIT_METHODS = ("group", "random", "block", "keep")


def build_parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Build a parquet image index from a folder of CC_lat,lon.ext images, a CSV "
        "(path,lat,lon[,country][,extra columns]) or a public layout (--from osv5m|exif|im2gps3k|yfcc4k|hf). "
        "Missing countries are filled offline from GeoNames.",
    )
    p.add_argument("src", nargs="?", metavar="SRC",
                   help="the source: a folder of images named CC_lat,lon.ext (e.g. DE_52.52,13.40.png), a CSV file "
                   "(path,lat,lon[,country]; paths relative to the CSV's folder), or the source of --from")
    p.add_argument("--from", dest="fmt", choices=list(FORMATS), default=None,
                   help="layout of SRC: osv5m (train.csv/test.csv + images/{train,test}/*.zip), exif (photos with GPS), "
                        "im2gps3k / yfcc4k (benchmark CSV + image folder), hf (Hugging Face parquet export), csv")
    deprecated(p, "--csv", "SRC", store="csv")
    p.set_defaults(csv=None)
    p.add_argument("--columns", default=None,
                   help="map the source's column names: path=COL,lat=COL,lon=COL,country=COL[,split=,group=,creator=,image=]")
    p.add_argument("--images", default=None, help="image folder, where it is not the default of the layout")
    add_out(p, "index file to write (e.g. data/index.parquet)", required=True)
    add_force(p, "an index already at --out")
    p.add_argument("--split-by", dest="split_by", choices=SPLIT_METHODS, default=None,
                   help="group (default): views of one place (pano, sequence, group, within --radius-m) in one split; "
                        "random: per row (leaks near-duplicates); block: whole geographic cells; "
                        "keep: the source's split column. A source's test rows (OSV-5M, benchmarks) stay test.")
    deprecated(p, "--split", "--split-by", store="split_by", choices=SPLIT_METHODS)
    p.add_argument("--val", type=float, default=0.2, help="validation fraction (default 0.2)")
    p.add_argument("--test", type=float, default=0.0, help="test fraction (default 0)")
    p.add_argument("--block-km", type=float, default=50.0, help="cell size of the block split in km (default 50)")
    p.add_argument("--radius-m", type=float, default=PLACE_RADIUS_M,
                   help="views closer than this are one place in the group split (default 10 m; must be positive)")
    p.add_argument("--seed", type=int, default=0, help="split seed (default 0)")
    p.add_argument("--no-check", action="store_true", help="skip the header check of every image (size > 0, readable header)")
    p.add_argument("--check-images", action="store_true", help="fully decode every image and refuse on the first bad one (slow)")
    p.add_argument("--min-rows", type=int, default=10, help="flag countries with fewer rows than this in the summary")
    p.add_argument("--shard-rows", type=int, default=None, help="write a folder of shards of this many rows")
    return p


def skipped_listing_path(out: Path) -> Path:
    """Where the items left out of index ``out`` are listed: ``index.parquet`` -> ``index.skipped.csv``."""
    return out.with_name(f"{out.name.removesuffix('.parquet')}.skipped.csv")


def _read_source(args: argparse.Namespace, index_dir: Path, exclude: tuple[Path, ...]) -> SourceRows:
    columns = parse_columns(args.columns)
    if args.fmt:
        return reader(args.fmt)(args.src, index_dir, columns=columns, images=args.images, exclude=exclude)
    if _csv_source(args):
        return reader("csv")(args.csv or args.src, index_dir, columns=columns, images=args.images, exclude=exclude)
    return read_folder(args.src, index_dir, exclude=exclude)


def _csv_source(args: argparse.Namespace) -> bool:
    """Whether the source is a CSV file read as such (SRC a file, or the old --csv)."""
    return not args.fmt and (bool(args.csv) or (args.src is not None and Path(args.src).is_file()))


def _check_arguments(args: argparse.Namespace, out: Path) -> None:
    """Every mistake in the arguments, before any data is read and anything is written."""
    if (args.fmt and (args.csv or not args.src)) or (not args.fmt and bool(args.src) == bool(args.csv)):
        raise IndexValidationError("give exactly one source: SRC (a folder or a CSV file), or --from FORMAT SRC")
    if parse_columns(args.columns) and not (args.fmt or _csv_source(args)):
        raise IndexValidationError("--columns applies to a CSV source and --from sources, not to a folder of CC_lat,lon.ext files")
    check_split_settings(args.val, args.test, args.block_km, args.radius_m)
    if args.shard_rows is not None and args.shard_rows < 1:
        raise IndexValidationError(f"--shard-rows {args.shard_rows}: must be at least 1")
    if args.images is not None and not Path(args.images).is_dir():
        raise IndexValidationError(f"{args.images}: no such image folder")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise IndexValidationError(f"--out {out}: {parent} is a file, not a folder")
            break
    sources = [Path(x).resolve() for x in (args.src, args.csv) if x]
    if out.resolve() in sources:
        raise IndexValidationError(f"--out {out}: that is the source; write the index elsewhere")
    if out.is_dir():
        if args.shard_rows is None or any(not p.name.endswith(".parquet") for p in out.iterdir()):
            raise IndexValidationError(f"--out {out} is a folder; name the index file to write (e.g. {out}/index.parquet)")
    elif out.exists():
        with open(out, "rb") as f:
            magic = f.read(4) if out.is_file() else b""
        if magic != b"PAR1":
            raise IndexValidationError(f"--out {out} exists and is not a parquet index; it is left as it is")
    refuse_existing(out, args.force)
def _choose_split(df, requested: str | None) -> tuple[str, bool]:
    """(method, keep_test). A source with val rows keeps its split; a source's test rows always stay test."""
    if "split" not in df.columns:
        if requested == "keep":
            raise IndexValidationError("--split-by keep needs a split column in the source")
        return requested or "group", False
    splits = set(df["split"])
    if requested == "keep" or (requested is None and ("val" in splits or splits == {"test"})):
        return "keep", True
    return requested or "group", True


def _report_skipped(skipped: list[tuple[str, str]], listing: Path | None) -> None:
    """One line per reason on stderr (with the first few items) and the full listing beside the index
    (``listing`` None: the run failed and writes nothing; the lines say what was skipped)."""
    import csv

    from geotrainr.files import write_text_atomic

    if listing is not None and not skipped:
        listing.unlink(missing_ok=True)  # a listing from an earlier run would describe another index
        return
    if not skipped:
        return
    if listing is not None:
        buffer = io.StringIO(newline="")
        w = csv.writer(buffer)
        w.writerow(["item", "reason"])
        w.writerows(skipped)
        write_text_atomic(listing, buffer.getvalue())
    by_reason: dict[str, list[str]] = {}
    for item, reason in skipped:
        by_reason.setdefault(reason.split(" (")[0], []).append(item)
    print(f"skipped {len(skipped)} item(s)" + (f", listed in {listing}:" if listing is not None else " (nothing written):"),
          file=sys.stderr)
    for reason, items in by_reason.items():
        more = f", ... ({len(items) - 3} more)" if len(items) > 3 else ""
        print(f"  {len(items)} {reason}: {', '.join(items[:3])}{more}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    _check_arguments(args, out)
    index_dir = out.resolve().parent
    listing = skipped_listing_path(out)
    rows = _read_source(args, index_dir, exclude=(out.resolve(), listing.resolve()))
    skipped = list(rows.skipped)
    try:
        df = validate_index(rows.frame)
        if not args.no_check and not args.check_images:  # --check-images decodes fully below, refusing on a bad image
            bad = check_image_headers(df, index_dir)
            if bad:
                skipped += [(image_label(df, i) or f"row {i}", reason) for i, reason in bad]
                df = df.drop(index=[i for i, _ in bad]).reset_index(drop=True)
                if len(df) == 0:
                    raise IndexValidationError(f"no usable image: all {len(bad)} failed the header check")
        method, keep_test = _choose_split(df, args.split_by)
        if method != "keep":
            df = assign_splits(df, method, val=args.val, test=args.test, seed=args.seed, block_km=args.block_km,
                               radius_m=args.radius_m, keep_test=keep_test)
        if args.check_images:
            validate_index(df, root=index_dir, check_images=True)
    except IndexValidationError:
        _report_skipped(skipped, None)
        raise
    write_index(df, out, shard_rows=args.shard_rows, image_root=rows.root)
    _report_skipped(skipped, listing)
    print(summarize(df, args.min_rows))
    leaked = straddling_groups(df, PLACE_RADIUS_M)
    print(f"\nplaces with views in more than one split: {leaked} (a place: views sharing a group, pano_id or sequence, "
          f"or within {PLACE_RADIUS_M:g} m)" + (" - near-duplicates leak into validation: use --split-by group or block" if leaked else ""))
    print(f"wrote {out}")
    return 0

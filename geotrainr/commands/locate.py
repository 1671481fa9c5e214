"""`geotrainr locate CKPT IMAGE|DIR ...`: where were these photos taken?

Per photo: the top-k countries with probabilities (country and distance
models), coordinates (coordinate models regress them; country models answer
with the guessed country's centre), the country those coordinates fall in and
the nearest GeoNames place, all offline. ``--group-by`` combines several views
of one place; ``--csv`` supplies truth (and group fields); ``--map`` draws it.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from geotrainr.commands import add_device, add_force, add_out, refuse_existing
from geotrainr.data.sources.common import parse_columns
from geotrainr.files import write_text_atomic
from geotrainr.locator import RUNTIMES, Locator
from geotrainr.multiview import auto_group_key, group
from geotrainr.listing import ImageListError, attach_truth, collect_images, match_listing, read_listing
from geotrainr.predictions import Guess, records_csv, records_json
from geotrainr.progress import progress_bar


def build_parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Locate photos with a checkpoint from 'geotrainr fit' (country, coords or distance model). "
        "Offline: needs nothing but the checkpoint.",
        epilog="examples:\n"
        "  geotrainr locate best.ckpt photo.jpg\n"
        "  geotrainr locate best.ckpt photos/ --format json > guesses.json\n"
        "  geotrainr locate best.ckpt panos/ --group-by auto --map guesses.png\n"
        "  geotrainr locate best.ckpt --truth photos.csv --group-by pano_id --map eval.png",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", metavar="MODEL", help="a .ckpt file written by geotrainr fit, a folder written by geotrainr export, "
                   "a run folder (its best checkpoint), or a Hugging Face Hub repository id (org/name)")
    p.add_argument("images", nargs="*", help="image files and/or folders (searched recursively); "
                   "default with --truth: every photo the CSV lists")
    p.add_argument("--format", choices=("table", "json", "csv"), default="table", help="output format (default: table)")
    add_out(p, "write the output to this file instead of standard output", default=None)
    add_force(p, "an existing --out or --map file")
    p.add_argument("-k", "--top-k", type=int, default=5, help="countries listed per photo (default 5)")
    p.add_argument("--truth", default=None, metavar="LISTING.csv",
                   help="CSV with path,lat,lon[,country,...] (paths relative to the CSV): truth for error columns "
                   "and maps, fields for --group-by")
    p.add_argument("--columns", default=None, metavar="path=COL,lat=COL,lon=COL",
                   help="column names of a --truth CSV that spells them otherwise, e.g. path=id,lat=latitude,lon=longitude "
                   "(a path without extension matches the photo of that name)")
    p.add_argument("--group-by", default=None, metavar="FIELD|auto",
                   help="combine views of one place into one guess: 'auto' (file name without a trailing "
                   "_<heading>, -<n> or _<n>) or a column of --truth")
    p.add_argument("--map", default=None, metavar="OUT.png", help="draw the guesses (and truth, when known) on a map")
    p.add_argument("--batch-size", type=int, default=32, help="photos per forward pass (default 32)")
    p.add_argument("--workers", type=int, default=None, help="decoding processes (default: some for large folders)")
    add_device(p)
    p.add_argument("--runtime", choices=RUNTIMES, default="torch",
                   help="onnx: run the network in onnxruntime on the CPU (faster there); needs a folder written by "
                   "'geotrainr export MODEL --out DIR --format onnx' (default: torch)")
    p.add_argument("--no-recursive", action="store_true", help="do not search subfolders")
    return p


# --- output ------------------------------------------------------------------------------------


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else "…" + text[-(width - 1) :]


def _common_folder(images: list[str]) -> str | None:
    """The folder all images share (shown once above the table instead of on every line)."""
    try:
        base = os.path.commonpath([os.path.dirname(i) for i in images])
    except ValueError:  # absolute and relative paths mixed
        return None
    return base if base not in ("", ".") else None


def format_table(guesses: list[Guess], note: str) -> str:
    """A readable table: one line per photo (or group)."""
    ok = [g for g in guesses if g.ok]
    has_probs = any(g.probability is not None for g in ok)
    has_truth = any(g.true_lat is not None for g in ok)
    has_groups = any(g.members for g in guesses)
    header = ["image"] + (["views"] if has_groups else []) + ["guess"]
    if has_probs:
        header += ["p", "top countries"]
    header += ["lat", "lon", "in", "nearest place"]
    if has_truth:
        header += ["truth", "error km"]
    base = _common_folder([g.image for g in guesses])
    rows = []
    for g in ok:
        shown = os.path.relpath(g.image, base) if base else g.image
        row = [_short(shown, 48)] + ([str(g.views)] if has_groups else [])
        row.append(f"{g.country} {g.country_name or ''}".strip()[:22])
        if has_probs:
            row += [f"{g.probability:.2f}", " ".join(f"{t.country} {t.probability:.2f}" for t in g.top_k[1:])]
        row += [f"{g.lat:.2f}", f"{g.lon:.2f}", g.coordinate_country or "", f"{g.nearest_place} ({g.nearest_place_km:.0f} km)"]
        if has_truth:
            truth = "" if g.true_lat is None else (g.true_country or f"{g.true_lat:.2f},{g.true_lon:.2f}")
            row += [truth, "" if g.error_km is None else f"{g.error_km:,.0f}"]
        rows.append(row)
    if has_probs:
        header[header.index("top countries")] = "next guesses"
    numeric = {"views", "p", "lat", "lon", "error km"}
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    fmt = lambda cells: "  ".join(c.rjust(w) if h in numeric else c.ljust(w) for c, w, h in zip(cells, widths, header)).rstrip()  # noqa: E731
    lines = [f"(images under {base})"] if base else []
    lines += [fmt(header), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows]
    lines.append(f"\n{len(ok)} of {len(guesses)} located ({note}).")
    errs = [g.error_km for g in ok if g.error_km is not None]
    if errs:
        import numpy as np

        hits = [g.country == g.true_country for g in ok if g.true_country and g.error_km is not None]
        lines.append(f"against the truth: median error {np.median(errs):,.0f} km, mean {np.mean(errs):,.0f} km"
                     + (f", country right {sum(hits)}/{len(hits)}" if hits else ""))
    return "\n".join(lines)


def format_json(guesses: list[Guess]) -> str:
    return records_json(guesses)


def format_csv(guesses: list[Guess]) -> str:
    return records_csv(guesses)


def _write_text(text: str, path: str | None) -> None:
    if path is None:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
        return
    write_text_atomic(path, text if text.endswith("\n") else text + "\n")


# --- the verb ------------------------------------------------------------------------------------


def _note(message: str) -> None:
    print(f"geotrainr locate: {message}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    if args.top_k < 1:
        raise ImageListError("--top-k must be at least 1")
    if args.batch_size < 1:
        raise ImageListError("--batch-size must be at least 1")
    if args.columns and not args.truth:
        raise ImageListError("--columns names the columns of --truth: give --truth LISTING.csv too")
    refuse_existing(args.out, args.force)
    refuse_existing(args.map, args.force, flag="--map")
    listing = read_listing(args.truth, parse_columns(args.columns)) if args.truth else None
    if args.group_by and args.group_by != "auto":
        if listing is None:
            raise ImageListError(f"--group-by {args.group_by} needs --truth (a listing with a {args.group_by!r} column); "
                                 "or use --group-by auto")
        if args.group_by not in listing.columns:
            raise ImageListError(f"{args.truth} has no column {args.group_by!r} (columns: {', '.join(listing.columns)})")
    if args.images:
        files, notes = collect_images(args.images, recursive=not args.no_recursive)
    elif listing is not None:
        files, notes = [Path(p) for p in listing["path"] if p], []
        if not files:
            raise ImageListError(f"{args.truth}: lists no paths")
    else:
        raise ImageListError("give image files or folders to locate (or --truth with a listing)")
    for n in notes:
        _note(n)

    locator = Locator.load(args.model, device=args.device, runtime=args.runtime)

    with progress_bar("locate", total=len(files), unit="photo") as bar:
        guesses = locator.locate(files, top_k=args.top_k, batch_size=args.batch_size, num_workers=args.workers,
                                 progress=bar)
    failed = [g for g in guesses if not g.ok]
    for g in failed:
        print(f"geotrainr locate: error: {g.error}", file=sys.stderr)

    rows = match_listing(files, listing) if listing is not None else [None] * len(files)
    if listing is not None:
        found = attach_truth(guesses, rows, listing)
        if found < len(files):
            _note(f"{len(files) - found} of {len(files)} photos have no truth in {args.truth}")
    if args.group_by:
        if args.group_by == "auto":
            keys = [auto_group_key(f) for f in files]
        else:
            keys = [str(listing[args.group_by].iloc[r]) if r is not None else auto_group_key(f) for f, r in zip(files, rows)]
        guesses = group(guesses, keys, top_k=args.top_k)
        _note(f"{len(files)} photos combined into {len(guesses)} guesses (--group-by {args.group_by})")

    text = {"table": lambda: format_table(guesses, locator.model.guess_note), "json": lambda: format_json(guesses),
            "csv": lambda: format_csv(guesses)}[args.format]()
    _write_text(text, args.out)

    if args.map:
        from geotrainr.maps import plot_guesses

        plot_guesses(guesses, args.map, note=locator.model.guess_note)
        _note(f"map written to {args.map}")
    return 1 if failed else 0

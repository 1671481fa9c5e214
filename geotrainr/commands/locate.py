"""`geotrainr locate CKPT IMAGE|DIR ...`: where were these photos taken?

Per photo: the top-k countries with probabilities (country and distance
models), coordinates (coordinate models regress them; country models answer
with the guessed country's centre), the country those coordinates fall in and
the nearest GeoNames place, all offline. ``--group-by`` combines several views
of one place; ``--csv`` supplies truth (and group fields); ``--map`` draws it.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
from pathlib import Path

from geotrainr.files import write_text_atomic
from geotrainr.inference import (
    Guess,
    ImageListError,
    Locator,
    attach_truth,
    auto_group_key,
    collect_images,
    group,
    match_listing,
    read_listing,
)


def build_parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Locate photos with a checkpoint from 'geotrainr fit' (country, coords or distance model). "
        "Offline: needs nothing but the checkpoint.",
        epilog="examples:\n"
        "  geotrainr locate best.ckpt photo.jpg\n"
        "  geotrainr locate best.ckpt photos/ --format json > guesses.json\n"
        "  geotrainr locate best.ckpt panos/ --group-by auto --map guesses.png\n"
        "  geotrainr locate best.ckpt --csv photos.csv --group-by pano_id --map eval.png",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("checkpoint", help="a .ckpt file written by geotrainr fit")
    p.add_argument("images", nargs="*", help="image files and/or folders (searched recursively); "
                   "default with --csv: every photo the CSV lists")
    p.add_argument("--format", choices=("table", "json", "csv"), default="table", help="output format (default: table)")
    p.add_argument("-o", "--output", default=None, help="write the output to this file instead of standard output")
    p.add_argument("-k", "--top-k", type=int, default=5, help="countries listed per photo (default 5)")
    p.add_argument("--csv", default=None, metavar="LISTING",
                   help="CSV with path,lat,lon[,country,...] (paths relative to the CSV): truth for error columns "
                   "and maps, fields for --group-by")
    p.add_argument("--group-by", default=None, metavar="FIELD|auto",
                   help="combine views of one place into one guess: 'auto' (file name without a trailing "
                   "_<heading>, -<n> or _<n>) or a column of --csv")
    p.add_argument("--map", default=None, metavar="OUT.png", help="draw the guesses (and truth, when known) on a map")
    p.add_argument("--batch-size", type=int, default=32, help="photos per forward pass (default 32)")
    p.add_argument("--workers", type=int, default=None, help="decoding processes (default: some for large folders)")
    p.add_argument("--device", default="auto", help="auto (GPU when present), cpu, cuda, cuda:1 ...")
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


def format_table(guesses: list[Guess], kind: str) -> str:
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
    what = {"country": "country model: lat/lon is the guessed country's centre",
            "coords": "geocell model: lat/lon is the centroid of a cell in the guessed country" if has_probs
            else "coordinate model: 'guess' is the country the coordinates fall in",
            "distance": "distance model: p is over its country anchors; lat/lon is the nearest anchor's centre"}[kind]
    lines.append(f"\n{len(ok)} of {len(guesses)} located ({what}).")
    errs = [g.error_km for g in ok if g.error_km is not None]
    if errs:
        import numpy as np

        hits = [g.country == g.true_country for g in ok if g.true_country and g.error_km is not None]
        lines.append(f"against the truth: median error {np.median(errs):,.0f} km, mean {np.mean(errs):,.0f} km"
                     + (f", country right {sum(hits)}/{len(hits)}" if hits else ""))
    return "\n".join(lines)


def format_json(guesses: list[Guess]) -> str:
    return json.dumps([g.to_dict() for g in guesses], indent=2, ensure_ascii=False)


def format_csv(guesses: list[Guess]) -> str:
    rows = [g.to_row() for g in guesses]
    fields = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


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
    listing = read_listing(args.csv) if args.csv else None
    if args.group_by and args.group_by != "auto":
        if listing is None:
            raise ImageListError(f"--group-by {args.group_by} needs --csv (a listing with a {args.group_by!r} column); "
                                 "or use --group-by auto")
        if args.group_by not in listing.columns:
            raise ImageListError(f"{args.csv} has no column {args.group_by!r} (columns: {', '.join(listing.columns)})")
    if args.images:
        files, notes = collect_images(args.images, recursive=not args.no_recursive)
    elif listing is not None:
        files, notes = [Path(p) for p in listing["path"] if p], []
        if not files:
            raise ImageListError(f"{args.csv}: lists no paths")
    else:
        raise ImageListError("give image files or folders to locate (or --csv with a listing)")
    for n in notes:
        _note(n)

    locator = Locator.from_checkpoint(args.checkpoint, device=args.device)

    show_progress = sys.stderr.isatty() and len(files) > 4 * args.batch_size
    progress = (lambda done: print(f"\r{done}/{len(files)} photos", end="", file=sys.stderr)) if show_progress else None
    guesses = locator.locate(files, top_k=args.top_k, batch_size=args.batch_size, num_workers=args.workers, progress=progress)
    if show_progress:
        print(file=sys.stderr)
    failed = [g for g in guesses if not g.ok]
    for g in failed:
        print(f"geotrainr locate: error: {g.error}", file=sys.stderr)

    rows = match_listing(files, listing) if listing is not None else [None] * len(files)
    if listing is not None:
        found = attach_truth(guesses, rows, listing)
        if found < len(files):
            _note(f"{len(files) - found} of {len(files)} photos have no truth in {args.csv}")
    if args.group_by:
        if args.group_by == "auto":
            keys = [auto_group_key(f) for f in files]
        else:
            keys = [str(listing[args.group_by].iloc[r]) if r is not None else auto_group_key(f) for f, r in zip(files, rows)]
        guesses = group(guesses, keys, top_k=args.top_k)
        _note(f"{len(files)} photos combined into {len(guesses)} guesses (--group-by {args.group_by})")

    text = {"table": lambda: format_table(guesses, locator.kind), "json": lambda: format_json(guesses),
            "csv": lambda: format_csv(guesses)}[args.format]()
    _write_text(text, args.output)

    if args.map:
        from geotrainr.plots import plot_guesses

        plot_guesses(guesses, args.map, locator.kind)
        _note(f"map written to {args.map}")
    return 1 if failed else 0

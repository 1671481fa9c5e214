"""`geotrainr geocells`: build geocells from an index, or read them from a checkpoint, and draw them."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from geotrainr.countries import resolve_countries
from geotrainr.geocells import Geocells, GeocellError
from geotrainr.maps import plot_geocells


def build_parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Geocells of a coordinate model: cells of training images nested inside countries. "
        "Build them from an index's training split (as 'fit' does with head: geocells) or read them from a "
        "checkpoint, print a summary, draw them on a map and optionally save them as JSON "
        "(model.init_args.geocells takes that file).",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--index", help="parquet index (or 'demo'): build the cells from its training split")
    src.add_argument("--checkpoint", help="a geocell checkpoint: draw the cells it was trained with")
    p.add_argument("--min-per-cell", type=int, default=10, help="fewest training images per cell (default 10)")
    p.add_argument("--max-per-cell", type=int, default=100, help="most training images per cell (default 100)")
    p.add_argument("--countries", default=None,
                   help="comma-separated class list (default: the countries of the training split)")
    p.add_argument("--map", default="geocells.png", help="map to write (default geocells.png; 'none' for no map)")
    p.add_argument("--out", default=None, help="write the cells as JSON to this file")
    return p


def run(args: argparse.Namespace) -> int:
    draw = args.map.lower() != "none"
    if draw and Path(args.map).suffix.lower() not in (".png", ".jpg", ".jpeg", ".pdf", ".svg"):
        raise GeocellError(f"--map {args.map}: use a .png, .jpg, .pdf or .svg file name")
    points = None
    if args.checkpoint:
        cells = Geocells.load(args.checkpoint)
    else:
        from geotrainr.data.datamodule import GeoDataModule

        countries = resolve_countries(args.countries) if args.countries else None
        dm = GeoDataModule(index=args.index, countries=countries, num_workers=0)
        points, codes = dm.train_coordinates()
        cells = Geocells.build(points, codes, args.min_per_cell, args.max_per_cell)
    print(cells)
    counts = cells.counts
    print(f"training images per cell: min {counts.min()}, median {np.median(counts):g}, max {counts.max()}")
    small = sorted({c for c, n in zip(cells.countries, counts) if n < cells.min_per_cell})
    if small:
        print(f"countries with fewer than {cells.min_per_cell} training images (one small cell each): {', '.join(small)}")
    if args.out:
        print(f"cells written to {cells.save(args.out)}")
    if draw:
        print(f"map written to {plot_geocells(cells, args.map, points=points)}")
    return 0

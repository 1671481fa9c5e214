"""`geotrainr geocells`: build geocells from an index, or read them from a checkpoint, and draw them."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from geotrainr.commands import add_force, add_out, deprecated, refuse_existing
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
    p.add_argument("model", nargs="?", metavar="MODEL", default=argparse.SUPPRESS,  # absent: not stored over --checkpoint
                   help="a geocell model (a .ckpt, a run folder, an exported folder, a Hub id) or a cells JSON file: "
                   "draw the cells it was trained with")
    p.add_argument("--index", default=None, help="parquet index (or 'demo'): build the cells from a split of it")
    deprecated(p, "--checkpoint", "MODEL", store="model")
    p.add_argument("--split", default="train", choices=("train", "val", "test", "all"),
                   help="--index: the split whose images the cells are built from (default train, as fit does)")
    p.add_argument("--min-per-cell", type=int, default=10, help="fewest training images per cell (default 10)")
    p.add_argument("--max-per-cell", type=int, default=100, help="most training images per cell (default 100)")
    p.add_argument("--countries", default=None,
                   help="comma-separated class list (default: the countries of the training split)")
    p.add_argument("--map", default="geocells.png", help="map to write (default geocells.png; 'none' for no map)")
    add_out(p, "write the cells as JSON to this file", default=None)
    add_force(p, "an existing --out or --map file")
    return p


def run(args: argparse.Namespace) -> int:
    draw = args.map.lower() != "none"
    if draw and Path(args.map).suffix.lower() not in (".png", ".jpg", ".jpeg", ".pdf", ".svg"):
        raise GeocellError(f"--map {args.map}: use a .png, .jpg, .pdf or .svg file name")
    args.model = getattr(args, "model", None)
    if (args.model is None) == (args.index is None):
        raise GeocellError("give one source of cells: MODEL (a geocell model) or --index INDEX")
    if args.model is not None and args.split != "train":
        raise GeocellError("--split chooses the images of --index; a model's cells are the ones it was trained with")
    refuse_existing(args.out, args.force)
    if draw:
        refuse_existing(args.map, args.force, flag="--map")
    points = None
    if args.model is not None:
        cells = _model_cells(args.model)
    else:
        points, codes = _index_points(args.index, args.split, args.countries)
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


def _model_cells(model: str) -> Geocells:
    """The cells of a model: a .ckpt or cells JSON file read as such, anything else through the one loader."""
    if Path(model).is_file():
        return Geocells.load(model)
    from geotrainr.loading import load_model

    cells = getattr(load_model(model), "geocells", None)
    if cells is None:
        raise GeocellError(f"{model}: not a geocell model (it has no cells)")
    return cells


def _index_points(index: str, split: str, countries: str | None) -> tuple[np.ndarray, list[str]]:
    """(lat, lon) and country codes of a split's rows whose country is a class."""
    from geotrainr.data.datamodule import GeoDataModule
    from geotrainr.data.schema import IndexValidationError

    dm = GeoDataModule(index=index, countries=resolve_countries(countries) if countries else None, num_workers=0)
    if split == "train":
        return dm.train_coordinates()
    if dm.packed is not None:
        raise GeocellError(f"--split {split}: a packed set gives its training split only; use --split train")
    if not dm.frames:
        dm.setup()
    rows = dm.frames[split]
    codes = rows["country"].str.upper()
    known = codes.isin(dm.countries)
    if not known.any():
        raise IndexValidationError(f"{index}: no {split} rows in the class list's countries")
    return rows.loc[known, ["lat", "lon"]].to_numpy(np.float64, copy=True), codes[known].tolist()

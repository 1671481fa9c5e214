"""Im2GPS3k and YFCC4k, the standard geolocation test sets, in the CSV layouts they are distributed in.

Im2GPS3k: ``im2gps3k_places365.csv`` (TIBHannover/GeoEstimation, also in GeoCLIP's repository)
with ``IMG_ID,AUTHOR,LAT,LON,...``; the images are the ``IMG_ID`` files of one folder. YFCC4k is
distributed the same way (``yfcc4k_places365.csv``: ``IMG_ID,...,LAT,LON,...``). Other spellings of
the columns (``image_id``/``id``, ``latitude``, ``longitude``/``lng``) are recognised; anything else
is named with ``--columns``. Every row is a ``test`` row; the country comes from the coordinates.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from geotrainr.data.schema import IndexValidationError
from geotrainr.data.sources.common import (
    ImageFinder,
    SourceRows,
    apply_columns,
    is_excluded,
    fill_countries,
    numeric_coordinates,
    pick_column,
    read_table_csv,
    relative,
)

ID_COLUMNS = ("IMG_ID", "image_id", "img", "id", "photo_id", "image", "filename", "file", "path", "name")
LAT_COLUMNS = ("LAT", "latitude")
LON_COLUMNS = ("LON", "longitude", "lng")


def _find_csv(src: Path, name: str, exclude=()) -> Path:
    if src.is_file():
        return src
    if not src.is_dir():
        raise IndexValidationError(f"{src}: no such CSV file or folder")
    csvs = sorted(c for c in src.glob("*.csv") if not is_excluded(c, src, exclude))
    named = [c for c in csvs if name in c.name.lower()]
    if len(named) == 1 or len(csvs) == 1:
        return (named or csvs)[0]
    raise IndexValidationError(f"{src}: expected one {name} CSV in the folder, found {len(csvs)}; give the CSV itself")


def _image_folder(csv: Path, images: str | os.PathLike | None) -> Path:
    if images is not None:
        folder = Path(images).resolve()
        if not folder.is_dir():
            raise IndexValidationError(f"{folder}: no such image folder")
        return folder
    for cand in (csv.parent / "images", csv.parent / csv.stem.split("_")[0], csv.parent):
        if cand.is_dir():
            return cand
    return csv.parent


def read_benchmark(name: str, src: str | os.PathLike, index_dir: str | os.PathLike,
                   columns: dict[str, str] | None = None, images: str | os.PathLike | None = None,
                   exclude=()) -> SourceRows:
    """Rows of a benchmark CSV (image id, lat, lon) whose image is found in ``images``; every row ``test``.

    ``images`` defaults to ``images/`` beside the CSV, else a folder named like the CSV, else the
    CSV's folder: the dataset's root. An id without an image, or whose image is not inside the root
    (an absolute path, ``..`` leaving it, a symlink out), is skipped and listed.
    """
    csv, index_dir = _find_csv(Path(src).resolve(), name, exclude), Path(index_dir).resolve()
    df = apply_columns(read_table_csv(csv, ID_COLUMNS), columns, str(csv))
    df = pick_column(df, "image_path", ID_COLUMNS, str(csv))
    df = pick_column(df, "lat", LAT_COLUMNS, str(csv))
    df = pick_column(df, "lon", LON_COLUMNS, str(csv))
    if len(df) == 0:
        raise IndexValidationError(f"{csv}: no rows")
    if "creator" not in df.columns and "AUTHOR" in df.columns:
        df = df.rename(columns={"AUTHOR": "creator"})
    finder = ImageFinder(_image_folder(csv, images))
    ids = df["image_path"].astype(str).str.strip().to_numpy()
    located = [finder.locate(i) for i in ids]
    paths = np.array([p for p, _ in located], dtype=object)
    found = np.array([p is not None for p in paths], dtype=bool)
    skipped = [(f"{csv.name} {i}", why) for i, (_, why) in zip(ids, located) if why is not None]
    df = df[found].reset_index(drop=True)
    df["id"] = ids[found]
    df["image_path"] = [relative(p, index_dir) for p in paths[found]]
    df, bad = numeric_coordinates(df, str(csv), df["id"])
    skipped += bad
    df, bad = fill_countries(df, df["id"])
    skipped += bad
    if len(df) == 0:
        raise IndexValidationError(f"{csv}: no row has an image under {finder.folder}")
    df["split"] = "test"
    df["source"] = name
    return SourceRows(df, skipped, finder.folder)


def read_im2gps3k(src, index_dir, columns=None, images=None, exclude=()) -> SourceRows:
    """Im2GPS3k (2,997 Flickr photos): ``im2gps3k_places365.csv`` and its image folder."""
    return read_benchmark("im2gps3k", src, index_dir, columns, images, exclude)


def read_yfcc4k(src, index_dir, columns=None, images=None, exclude=()) -> SourceRows:
    """YFCC4k (4,536 Flickr photos): ``yfcc4k_places365.csv`` (or similar) and its image folder."""
    return read_benchmark("yfcc4k", src, index_dir, columns, images, exclude)

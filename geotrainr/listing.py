"""Which photos to work on: files and folders given on the command line, and CSV listings of them.

A listing (``path``/``image_path``, optional ``lat``, ``lon``, ``country`` and any other columns) supplies
the truth for error columns and maps, and fields for ``--group-by``.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from geotrainr.data.schema import IndexValidationError
from geotrainr.data.sources.common import apply_columns
from geotrainr.errors import GeotrainrError
from geotrainr.preprocess import IMAGE_SUFFIXES

if TYPE_CHECKING:
    from geotrainr.predictions import Guess


class ImageListError(GeotrainrError, ValueError):
    """Nothing to work on (an empty folder, no image among the inputs) or an unusable listing."""


def collect_images(inputs: Sequence[str | os.PathLike], recursive: bool = True) -> tuple[list[Path], list[str]]:
    """Expand files and folders into the photos to locate, with notes on what was left out.

    A folder contributes its files with an image ending (:data:`IMAGE_SUFFIXES`), sorted,
    searching subfolders when ``recursive``; other files are counted in a note. A file named
    explicitly is always tried (and reported if unreadable). Raises :class:`ImageListError`
    when nothing at all is left to locate.
    """
    files: list[Path] = []
    notes: list[str] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(q for q in (p.rglob("*") if recursive else p.iterdir()) if q.is_file())
            images = [q for q in found if q.suffix.lower() in IMAGE_SUFFIXES and not q.name.startswith(".")]
            others = len(found) - len(images)
            if others:
                notes.append(f"{p}: skipped {others} file(s) that are not images (by file ending)")
            if not images:
                notes.append(f"{p}: no image files")
            files.extend(images)
        else:
            files.append(p)  # a missing or unreadable file becomes an error of its own
    if not files:
        where = ", ".join(str(i) for i in inputs) or "(no input)"
        raise ImageListError(f"no image files to locate in {where}")
    return files, notes



def read_listing(csv_path: str | os.PathLike, columns: dict[str, str] | None = None):
    """A CSV of photos (``path`` or ``image_path``, optional ``lat``, ``lon``, ``country`` and any other columns).

    ``columns`` names the CSV's own columns (what :func:`geotrainr.data.sources.parse_columns`
    returns for ``--columns path=id,lat=latitude``). Paths are read relative to the CSV's folder;
    the returned DataFrame has an absolute ``path`` column. Used for truth (maps, error columns)
    and for ``--group-by FIELD``.
    """
    import pandas as pd

    csv_path = Path(csv_path)
    try:
        df = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except FileNotFoundError:
        raise ImageListError(f"{csv_path}: no such CSV file") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise ImageListError(f"{csv_path}: not a readable CSV ({str(e).splitlines()[0]})") from None
    try:
        df = apply_columns(df, columns, str(csv_path))
    except IndexValidationError as e:
        raise ImageListError(str(e)) from None
    if "path" not in df.columns and "image_path" in df.columns:
        df = df.rename(columns={"image_path": "path"})
    if "path" not in df.columns:
        raise ImageListError(f"{csv_path}: needs a 'path' (or 'image_path') column; it has {', '.join(df.columns)} "
                             "(name yours with --columns path=COLUMN,lat=COLUMN,lon=COLUMN)")
    if len(df) == 0:
        raise ImageListError(f"{csv_path}: no rows")
    base = csv_path.resolve().parent
    df["path"] = [str((base / p).resolve()) if p else "" for p in df["path"]]
    for col in ("lat", "lon"):
        if col in df.columns:
            values = pd.to_numeric(df[col].replace("", np.nan), errors="coerce")
            bad = np.flatnonzero(values.isna().to_numpy() & (df[col] != "").to_numpy())
            if len(bad):
                raise ImageListError(f"{csv_path} row {bad[0] + 1}: {col} {df[col].iloc[bad[0]]!r} is not a number")
            df[col] = values
    if "country" in df.columns:
        df["country"] = df["country"].str.strip().str.upper()
    return df


def match_listing(images: Sequence[str | os.PathLike], listing) -> list[int | None]:
    """Row of ``listing`` (from :func:`read_listing`) for each image: same file, else the only row with that
    file name, else the only row naming the file without its extension (an id column, as OSV-5M's)."""
    by_path = {p: i for i, p in enumerate(listing["path"])}
    names = Counter(Path(p).name for p in listing["path"])
    by_name = {Path(p).name: i for i, p in enumerate(listing["path"]) if names[Path(p).name] == 1}
    rows = []
    for im in images:
        p = Path(im)
        i = by_path.get(str(p.resolve()))
        if i is None:
            i = by_name.get(p.name)
        if i is None:
            i = by_name.get(p.stem)
        rows.append(i)
    return rows


def attach_truth(guesses: Sequence[Guess], rows: Sequence[int | None], listing) -> int:
    """Copy lat/lon/country of matched listing rows into the guesses; returns how many got a truth."""
    if "lat" not in listing.columns or "lon" not in listing.columns:
        return 0
    n = 0
    for g, r in zip(guesses, rows):
        if r is None:
            continue
        lat, lon = listing["lat"].iloc[r], listing["lon"].iloc[r]
        if np.isnan(lat) or np.isnan(lon):
            continue
        country = listing["country"].iloc[r] if "country" in listing.columns else None
        g.set_truth(float(lat), float(lon), country or None)
        n += 1
    return n


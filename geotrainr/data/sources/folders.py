"""The plain layouts: a folder of ``CC_lat,lon.ext`` images, and a CSV of path, lat, lon[, country]."""

from __future__ import annotations

import os
import re
from collections.abc import Collection
from pathlib import Path

import numpy as np
import pandas as pd

from geotrainr.data.index import show_value
from geotrainr.data.schema import IMAGE_EXTENSIONS, IndexValidationError
from geotrainr.data.sources.common import SourceRows, apply_columns, check_csv_file, is_excluded, relative
from geotrainr.data.trust import outside_reason, within
from geotrainr.gazetteer import reverse_country


_SEED_NAME = re.compile(r"^(?P<cc>[A-Za-z]{2})_(?P<lat>[-+]?\d+(?:\.\d+)?),(?P<lon>[-+]?\d+(?:\.\d+)?)(?:[_\-].*)?$")


def parse_seed_name(name: str) -> tuple[str, float, float]:
    """``DE_52.52,13.40.png`` -> ("DE", 52.52, 13.40). Raises on any other name."""
    m = _SEED_NAME.match(Path(name).stem)
    if not m:
        raise IndexValidationError(f"{name}: file name does not follow the CC_lat,lon.ext pattern (e.g. DE_52.52,13.40.png)")
    return m["cc"].upper(), float(m["lat"]), float(m["lon"])


def index_from_folder(folder: str | os.PathLike, index_dir: str | os.PathLike) -> pd.DataFrame:
    """Rows for every image under ``folder`` named ``CC_lat,lon.ext``; paths relative to ``index_dir``.

    Raises on the first image that is not inside ``folder`` (a symlink out); ``geotrainr index`` skips and lists them
    (:func:`geotrainr.data.sources.common.read_folder`).
    """
    return _refuse_skipped(read_folder(folder, index_dir))


def index_from_csv(
    csv_path: str | os.PathLike,
    index_dir: str | os.PathLike,
    columns: dict[str, str] | None = None,
    images: str | os.PathLike | None = None,
) -> pd.DataFrame:
    """Rows from a CSV with path, lat, lon[, country][, extra columns kept] (see
    :func:`geotrainr.data.sources.common.read_csv_source`); raises on the first path outside the image folder."""
    return _refuse_skipped(read_csv_source(csv_path, index_dir, columns=columns, images=images))


def _refuse_skipped(rows) -> pd.DataFrame:
    if rows.skipped:
        item, reason = rows.skipped[0]
        raise IndexValidationError(f"{item}: {reason}")
    return rows.frame


def read_folder(folder: str | os.PathLike, index_dir: str | os.PathLike, exclude: Collection[Path] = ()) -> SourceRows:
    """Rows for every image under ``folder`` named ``CC_lat,lon.ext`` (e.g. ``DE_52.52,13.40.png``).

    An image whose realpath leaves ``folder`` (a symlink out) is skipped and listed; a name that does
    not follow the pattern is an error (the folder is not such a set).
    """
    folder, index_dir = Path(folder).resolve(), Path(index_dir).resolve()
    if not folder.is_dir():
        raise IndexValidationError(f"{folder}: not a folder")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and not is_excluded(p, folder, exclude)
                   and p.is_file())
    rows, skipped = [], []
    for p in files:
        name = os.path.relpath(p, folder)
        if not within(p, folder):
            skipped.append((name, "symlink leading outside the dataset"))
            continue
        cc, lat, lon = parse_seed_name(p.name)
        rows.append({"image_path": relative(p, index_dir), "lat": lat, "lon": lon, "country": cc})
    if not rows:
        raise IndexValidationError(f"{folder}: no image files found" + (f" inside it ({len(skipped)} lead outside)" if skipped else ""))
    return SourceRows(pd.DataFrame(rows), skipped, folder)


def read_csv_source(src: str | os.PathLike, index_dir: str | os.PathLike, columns: dict[str, str] | None = None,
                    images: str | os.PathLike | None = None, exclude: Collection[Path] = ()) -> SourceRows:
    """A CSV of path, lat, lon[, country][, anything else] (column names mapped with ``columns``).

    Paths are read relative to ``images`` (default: the CSV's folder), the dataset's root, and rewritten
    relative to ``index_dir``; a path outside the root (absolute, ``..`` leaving it, a symlink out) is
    skipped and listed. A missing or empty country is filled by offline reverse geocoding.
    """
    csv_path, index_dir = Path(src).resolve(), Path(index_dir).resolve()
    text_columns = {"country", "path", "image_path"} | {v for k, v in (columns or {}).items() if k in ("image_path", "country")}
    check_csv_file(csv_path)
    try:
        df = pd.read_csv(csv_path, dtype={c: "string" for c in text_columns}, keep_default_na=False, na_values=[""])
    except FileNotFoundError:
        raise IndexValidationError(f"{csv_path}: no such CSV file") from None
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as e:
        raise IndexValidationError(f"{csv_path}: not a readable CSV ({e})") from None
    df = apply_columns(df, columns, str(csv_path))
    if "image_path" not in df.columns and "path" in df.columns:
        df = df.rename(columns={"path": "image_path"})
    for col in ("image_path", "lat", "lon"):
        if col not in df.columns:
            raise IndexValidationError(f"{csv_path}: missing column {col!r} (need path,lat,lon[,country])")
    if len(df) == 0:
        raise IndexValidationError(f"{csv_path}: no rows")
    for i, p in enumerate(df["image_path"]):
        if not isinstance(p, str) or not p.strip():
            raise IndexValidationError(f"{csv_path} row {i}: empty path")
    if images is not None:
        base = Path(images).resolve()
        if not base.is_dir():
            raise IndexValidationError(f"{base}: no such image folder")
    else:
        base = csv_path.parent
    why = [outside_reason(base, p) for p in df["image_path"]]
    inside = np.array([w is None for w in why], bool)
    skipped = [(f"{csv_path.name} row {i} ({df['image_path'].iloc[i]})", why[i]) for i in np.flatnonzero(~inside)]
    df = df[inside].reset_index(drop=True)
    if len(df) == 0:
        raise IndexValidationError(f"{csv_path}: no path lies inside {base} ({skipped[0][0]}: {skipped[0][1]})")
    df["image_path"] = [os.path.relpath((base / p).resolve(), index_dir) for p in df["image_path"]]
    for col in ("lat", "lon"):
        values = pd.to_numeric(df[col], errors="coerce")
        bad = np.flatnonzero(values.isna().to_numpy())
        if len(bad):
            raise IndexValidationError(f"{csv_path} row {bad[0]} ({df['image_path'].iloc[bad[0]]}): {col} {show_value(df[col].iloc[bad[0]])} is not a number")
        df[col] = values.astype(float)
    if "country" not in df.columns:
        df["country"] = pd.NA
    missing = df["country"].isna().to_numpy()
    if missing.any():
        ok = missing & df["lat"].between(-90, 90).to_numpy() & df["lon"].between(-180, 180).to_numpy()
        if ok.any():
            df.loc[ok, "country"] = reverse_country(df.loc[ok, "lat"].to_numpy(), df.loc[ok, "lon"].to_numpy())
    df["country"] = df["country"].astype(object)
    return SourceRows(df, skipped, base)

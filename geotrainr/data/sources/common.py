"""What every source reader shares: the result type, column mapping, countries, image lookup by id."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from geotrainr.data.index import IMAGE_EXTENSIONS, IndexValidationError

#: The names a column mapping may give (ours) -> what they become in the index.
MAPPABLE = {
    "path": "image_path", "image_path": "image_path", "image": "image", "lat": "lat", "lon": "lon",
    "country": "country", "split": "split", "group": "group", "sequence": "sequence", "pano_id": "pano_id",
    "creator": "creator", "licence": "licence", "capture_date": "capture_date", "id": "id",
}


@dataclass
class SourceRows:
    """Index rows read from a source, and what was left out (``(item, reason)``: listed for the user)."""

    frame: pd.DataFrame
    skipped: list[tuple[str, str]] = field(default_factory=list)


def parse_columns(spec: str | None) -> dict[str, str]:
    """``"path=IMG_ID,lat=LAT,lon=LON"`` -> ``{"image_path": "IMG_ID", "lat": "LAT", "lon": "LON"}``."""
    if not spec:
        return {}
    out: dict[str, str] = {}
    for item in spec.split(","):
        if not item.strip():
            continue
        ours, sep, theirs = item.partition("=")
        ours, theirs = ours.strip(), theirs.strip()
        if not sep or not ours or not theirs:
            raise IndexValidationError(f"--columns item {item.strip()!r} is not NAME=COLUMN (e.g. lat=latitude)")
        if ours not in MAPPABLE:
            raise IndexValidationError(f"--columns: unknown name {ours!r}; use {', '.join(sorted(MAPPABLE))}")
        out[MAPPABLE[ours]] = theirs
    return out


def apply_columns(df: pd.DataFrame, columns: dict[str, str] | None, where: str) -> pd.DataFrame:
    """Rename the source's columns to ours as ``columns`` maps them; a mapped column that is absent is an error."""
    if not columns:
        return df
    missing = [theirs for theirs in columns.values() if theirs not in df.columns]
    if missing:
        raise IndexValidationError(f"{where}: no column {missing[0]!r} (columns: {', '.join(map(str, df.columns))})")
    rename = {theirs: ours for ours, theirs in columns.items() if theirs != ours}
    clash = [ours for ours in rename.values() if ours in df.columns and ours not in rename]
    return df.drop(columns=clash).rename(columns=rename)


def pick_column(df: pd.DataFrame, ours: str, candidates: tuple[str, ...], where: str) -> pd.DataFrame:
    """Rename the first column matching ``candidates`` (case-insensitive) to ``ours``; error when none does."""
    if ours in df.columns:
        return df
    lower = {str(c).lower(): c for c in df.columns}
    for cand in candidates:
        if cand.lower() in lower:
            return df.rename(columns={lower[cand.lower()]: ours})
    raise IndexValidationError(
        f"{where}: no {ours} column (looked for {', '.join(candidates)}; name it with --columns {ours}=COLUMN)"
    )


def read_table_csv(path: Path, string_columns: tuple[str, ...] = ()) -> pd.DataFrame:
    """A CSV with ids kept as text (no float rounding of 15-digit ids) and "NA" kept as Namibia."""
    try:
        return pd.read_csv(path, dtype={c: str for c in string_columns}, keep_default_na=False, na_values=[""], low_memory=False)
    except FileNotFoundError:
        raise IndexValidationError(f"{path}: no such CSV file") from None
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as e:
        raise IndexValidationError(f"{path}: not a readable CSV ({e})") from None


def numeric_coordinates(df: pd.DataFrame, where: str, label: pd.Series) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """Make lat/lon floats; rows whose coordinates are not numbers in range are dropped and listed."""
    lat = pd.to_numeric(df["lat"], errors="coerce").to_numpy(float)
    lon = pd.to_numeric(df["lon"], errors="coerce").to_numpy(float)
    ok = np.isfinite(lat) & np.isfinite(lon) & (np.abs(lat) <= 90) & (np.abs(lon) <= 180)
    skipped = [(str(label.iloc[i]), f"coordinates are not valid degrees ({df['lat'].iloc[i]!r}, {df['lon'].iloc[i]!r})")
               for i in np.flatnonzero(~ok)]
    df = df.assign(lat=lat, lon=lon)[ok].reset_index(drop=True)
    return df, skipped


def fill_countries(df: pd.DataFrame, label: pd.Series) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """Upper-case ISO codes; a missing or unknown code comes from the coordinates (nearest GeoNames place).

    A row whose coordinates give no country of the table (open sea far from any place is still
    given the nearest one, so this is rare) is dropped and listed.
    """
    from geotrainr.countries import country_table

    known = set(country_table())
    if "country" not in df.columns:
        df = df.assign(country=pd.NA)
    country = df["country"].map(lambda c: c.strip().upper() if isinstance(c, str) and c.strip() else None)
    need = ~country.isin(known).to_numpy()
    if need.any():
        from geotrainr.places import reverse_country

        country = np.array(country, dtype=object)  # a writable copy
        country[need] = reverse_country(df["lat"].to_numpy(float)[need], df["lon"].to_numpy(float)[need])
        country = pd.Series(country, index=df.index)
    ok = country.isin(known).to_numpy()
    skipped = [(str(label.iloc[i]), f"no known country at its coordinates ({df['lat'].iloc[i]:.5f}, {df['lon'].iloc[i]:.5f})")
               for i in np.flatnonzero(~ok)]
    df = df.assign(country=country.astype(object))[ok].reset_index(drop=True)
    return df, skipped


class ImageFinder:
    """Finds an image file by name or id under a folder: the path as given, the id plus an extension,
    or (for trees of sub-folders) the file whose stem is the id, from one walk of the folder."""

    def __init__(self, folder: Path, extensions: tuple[str, ...] = IMAGE_EXTENSIONS):
        self.folder = folder
        self.extensions = extensions
        self._by_stem: dict[str, Path] | None = None

    def find(self, name: str) -> Path | None:
        p = self.folder / name
        if p.is_file():
            return p
        for ext in self.extensions:
            q = self.folder / f"{name}{ext}"
            if q.is_file():
                return q
        if self._by_stem is None:
            self._by_stem = {}
            for root, _, files in os.walk(self.folder):
                for f in files:
                    if Path(f).suffix.lower() in self.extensions:
                        self._by_stem.setdefault(Path(f).stem, Path(root) / f)
                        self._by_stem.setdefault(f, Path(root) / f)
        return self._by_stem.get(name) or self._by_stem.get(Path(name).name) or self._by_stem.get(Path(name).stem)


def relative(path: Path, index_dir: Path) -> str:
    """``path`` relative to the index folder (the contract's image_path and archive)."""
    return os.path.relpath(Path(path).resolve(), index_dir)


def read_csv_source(src: str | os.PathLike, index_dir: str | os.PathLike, columns: dict[str, str] | None = None,
                    images: str | os.PathLike | None = None) -> SourceRows:
    """A CSV of path, lat, lon[, country][, anything else] (column names mapped with ``columns``)."""
    from geotrainr.data.index import index_from_csv

    return SourceRows(index_from_csv(src, index_dir, columns=columns, images=images))

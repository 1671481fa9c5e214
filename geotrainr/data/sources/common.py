"""What every source reader shares: the result type, column mapping, countries, image lookup by id."""

from __future__ import annotations

import os
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from geotrainr.data.schema import IMAGE_EXTENSIONS, IndexValidationError
from geotrainr.data.trust import UntrustedInputError, outside_reason, regular_file_size, within
from geotrainr.countries import country_table
from geotrainr.gazetteer import reverse_country

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
    #: the dataset's folder: every image of ``frame`` lies inside it (recorded in the index, see ``write_index``)
    root: Path | None = None


def is_excluded(path: Path, root: Path, exclude: Collection[Path]) -> bool:
    """Whether ``path`` (under ``root``) is, or lies under, one of ``exclude``: the output of the run reading it,
    its listing, its shard folder. Hidden names under ``root`` (temporary files and folders of atomic writes)
    are always left out."""
    path = Path(os.path.abspath(path))
    if any(part.startswith(".") for part in Path(os.path.relpath(path, os.path.abspath(root))).parts):
        return True
    return any(path == e or e in path.parents for e in (Path(os.path.abspath(x)) for x in exclude))


def check_csv_file(path: Path) -> Path:
    """``path`` once it is a regular file (a FIFO would block the CSV reader)."""
    try:
        regular_file_size(path, what="CSV file")
    except FileNotFoundError:
        raise IndexValidationError(f"{path}: no such CSV file") from None
    except UntrustedInputError as e:
        raise IndexValidationError(str(e)) from None
    return path


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
        if MAPPABLE[ours] in out and out[MAPPABLE[ours]] != theirs:
            raise IndexValidationError(f"--columns names {ours!r} twice")
        if theirs in out.values() and out.get(MAPPABLE[ours]) != theirs:
            raise IndexValidationError(f"--columns: column {theirs!r} is given for two names; give each its own column")
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
    df = df.drop(columns=clash).rename(columns=rename)
    dup = df.columns[df.columns.duplicated()]
    if len(dup):
        raise IndexValidationError(f"{where}: two columns would be named {dup[0]!r} (check --columns)")
    return df


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
    check_csv_file(path)
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
    known = set(country_table())
    if "country" not in df.columns:
        df = df.assign(country=pd.NA)
    country = df["country"].map(lambda c: c.strip().upper() if isinstance(c, str) and c.strip() else None)
    need = ~country.isin(known).to_numpy()
    if need.any():
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
    or (for trees of sub-folders) the file whose stem is the id, from one walk of the folder.

    Only files inside ``root`` (default: the folder) are found: :meth:`locate` says why a name is refused.
    """

    def __init__(self, folder: Path, extensions: tuple[str, ...] = IMAGE_EXTENSIONS, root: Path | None = None):
        self.folder = folder
        self.root = root if root is not None else folder
        self.extensions = extensions
        self._by_stem: dict[str, Path] | None = None

    def locate(self, name: str) -> tuple[Path | None, str | None]:
        """(the image of ``name``, None), or (None, why not): outside the dataset, or not found."""
        why = outside_reason(self.folder, name)
        if why is not None and why != "symlink leading outside the dataset":
            return None, why
        p = self.find(name)
        if p is None:
            return None, f"no image found (looked in {self.folder})"
        if not within(p, self.root):
            return None, "symlink leading outside the dataset"
        return p, None

    def find(self, name: str) -> Path | None:
        if outside_reason(self.folder, name) not in (None, "symlink leading outside the dataset"):
            return None
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



"""OpenStreetView-5M as published (github.com/gastruc/osv5m, huggingface.co/datasets/osv5m/osv5m).

Layout: ``train.csv`` and ``test.csv`` (``id,latitude,longitude,thumb_original_url,country,sequence,
captured_at,...,creator_username,creator_id``) and the images as ``images/{train,test}/NN.zip``
archives of ``{id}.jpg`` (or the same unpacked under ``images/{train,test}/``). Images stay in
their archives: rows name the archive and the member. The published train/test split is kept;
views of one ``sequence`` form one group. Imagery is Mapillary's, CC-BY-SA 4.0: the creator and
the licence travel with every row.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from geotrainr.data.schema import IMAGE_EXTENSIONS, IndexValidationError
from geotrainr.data.sources.common import (
    ImageFinder,
    SourceRows,
    apply_columns,
    fill_countries,
    numeric_coordinates,
    read_table_csv,
    relative,
)
from geotrainr.data.trust import within
from geotrainr.data.archives import list_members

LICENCE = "CC-BY-SA 4.0"
SPLIT_FILES = ("train", "test")
#: OSV-5M's names -> the index's.
RENAMES = {"latitude": "lat", "longitude": "lon", "creator_username": "creator", "captured_at": "capture_date"}


def _csv_files(src: Path) -> list[tuple[str, Path]]:
    """(split, csv) pairs: ``train.csv``/``test.csv`` in a folder, or one of them given directly."""
    if src.is_file():
        split = src.stem if src.stem in SPLIT_FILES else "train"
        return [(split, src)]
    if not src.is_dir():
        raise IndexValidationError(f"{src}: no such OSV-5M folder")
    found = [(s, src / f"{s}.csv") for s in SPLIT_FILES if (src / f"{s}.csv").is_file()]
    if not found:
        raise IndexValidationError(f"{src}: no train.csv or test.csv (the OSV-5M layout)")
    return found


def member_map(folder: Path, root: Path | None = None) -> dict[str, tuple[Path, str]]:
    """Image id -> (archive, member) for every image in the zip archives directly under ``folder`` (and inside
    ``root``: an archive that is a symlink out is not read). Members are read in place by name, never extracted."""
    out: dict[str, tuple[Path, str]] = {}
    for archive in sorted(folder.glob("*.zip")):
        if not within(archive, root if root is not None else folder) or archive.name.startswith("."):
            continue
        for member in list_members(archive, IMAGE_EXTENSIONS):
            out.setdefault(Path(member).stem, (archive, member))
    return out


def read_osv5m(src: str | os.PathLike, index_dir: str | os.PathLike, columns: dict[str, str] | None = None,
               images: str | os.PathLike | None = None, exclude=()) -> SourceRows:
    """Rows of OSV-5M's ``train.csv``/``test.csv`` with their images (zip members or files).

    ``images`` is the folder holding ``train/`` and ``test/`` (default: ``SRC/images``), the dataset's
    root. An id without an image, or whose image is not inside the root (an id with ``..`` or an
    absolute path, a symlink out), is skipped and listed. A missing or unknown country comes from the
    coordinates. ``columns`` maps any role, OSV-5M's own name for it is then left out.
    """
    src, index_dir = Path(src).resolve(), Path(index_dir).resolve()
    root = src if src.is_dir() else src.parent
    image_root = Path(images).resolve() if images is not None else root / "images"
    if images is not None and not image_root.is_dir():
        raise IndexValidationError(f"{image_root}: no such image folder")
    frames, skipped = [], []
    for split, csv in _csv_files(src):
        df = read_table_csv(csv, ("id", "sequence", "creator_id", "creator_username", "country", "captured_at"))
        df = df.drop(columns=[theirs for theirs, ours in RENAMES.items() if ours in (columns or {}) and theirs in df.columns
                              and theirs not in (columns or {}).values()])
        df = apply_columns(df, columns, str(csv))
        df = df.rename(columns={k: v for k, v in RENAMES.items() if v not in df.columns})
        for col in ("id", "lat", "lon"):
            if col not in df.columns:
                raise IndexValidationError(f"{csv}: no {col} column (OSV-5M's CSVs have id,latitude,longitude,...)")
        if len(df) == 0:
            continue
        df["id"] = df["id"].astype(str).str.strip()
        folder = image_root / split
        members = member_map(folder, image_root) if folder.is_dir() else {}
        finder = ImageFinder(folder, root=image_root) if folder.is_dir() else None
        archive = np.full(len(df), None, dtype=object)
        member = np.full(len(df), None, dtype=object)
        path = np.full(len(df), None, dtype=object)
        why = np.full(len(df), f"no image found (looked in {folder})", dtype=object)
        for i, image_id in enumerate(df["id"].to_numpy()):
            hit = members.get(image_id)
            if hit is not None:
                archive[i], member[i] = relative(hit[0], index_dir), hit[1]
                continue
            if finder is None:
                continue
            p, why[i] = finder.locate(image_id)
            if p is not None and p.suffix.lower() != ".zip":
                path[i] = relative(p, index_dir)
            elif p is not None:
                why[i] = f"no image found (looked in {folder})"
        found = np.array([a is not None or p is not None for a, p in zip(archive, path)], dtype=bool)
        skipped += [(f"{csv.name} id {image_id}", str(w)) for image_id, w in zip(df["id"].to_numpy()[~found], why[~found])]
        if any(a is not None for a in archive):
            df["archive"], df["member"] = archive, member
        if any(p is not None for p in path):
            df["image_path"] = path
        df = df[found].reset_index(drop=True)
        df["split"] = split
        frames.append(df)
    if not frames:
        raise IndexValidationError(f"{src}: the OSV-5M CSVs hold no rows")
    df = pd.concat(frames, ignore_index=True)
    label = "id " + df["id"].astype(str)
    df, bad = numeric_coordinates(df, str(src), label)
    skipped += bad
    df, bad = fill_countries(df, "id " + df["id"].astype(str))
    skipped += bad
    df["source"] = "osv5m"
    df["licence"] = LICENCE
    if "sequence" in df.columns:
        df["sequence"] = df["sequence"].astype(object).where(df["sequence"].notna(), None)
    return SourceRows(df, skipped, image_root)

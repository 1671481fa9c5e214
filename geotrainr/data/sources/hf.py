"""A Hugging Face ``datasets`` parquet export: an ``image`` struct ``{bytes, path}`` and coordinate columns.

This is what ``Dataset.to_parquet``, ``push_to_hub`` and ``geotrainr export-dataset`` write
(``data/{split}-00000-of-00001.parquet``). The image bytes are embedded in the index (no file per
image). The split comes from a ``split`` column, else from the shard's name (``train-``,
``validation-``, ``test-``); shards with neither are left to ``--split``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from geotrainr.data.schema import IMAGE_ROOT_KEY, IndexValidationError
from geotrainr.data.packed.manifest import PACK_MANIFEST, PACK_PARTIAL, check_pack, unfinished_pack
from geotrainr.data.sources.common import (
    SourceRows,
    apply_columns,
    fill_countries,
    is_excluded,
    numeric_coordinates,
    pick_column,
    relative,
)
from geotrainr.data.trust import outside_reason, regular_file_size

SPLIT_NAMES = {"train": "train", "validation": "val", "valid": "val", "val": "val", "dev": "val", "test": "test"}


def _split_of(shard: Path) -> str | None:
    for part in (shard.name.split("-")[0].split("_")[0], shard.parent.name):
        if part.lower() in SPLIT_NAMES:
            return SPLIT_NAMES[part.lower()]
    return None


def _shards(src: Path, exclude) -> list[Path]:
    """The parquet files to read: ``src`` itself, a finished pack's shards (checked against its manifest), or every
    parquet file under the folder except the output of this run and hidden (temporary) ones. An unfinished pack
    is refused: it holds only some of its rows."""
    folder = src if src.is_dir() else src.parent
    if (folder / PACK_PARTIAL).exists() and not (folder / PACK_MANIFEST).exists():
        raise IndexValidationError(unfinished_pack(folder))
    if (folder / PACK_MANIFEST).exists():
        manifest = check_pack(pa.fs.LocalFileSystem(), str(folder), folder)
        listed = [folder / s["file"] for s in manifest["shards"]]
        return listed if src.is_dir() else [src]
    if not src.is_dir():
        return [src]
    return sorted(p for p in src.rglob("*.parquet") if not is_excluded(p, src, exclude) and not p.is_dir())


def read_hf(src: str | os.PathLike, index_dir: str | os.PathLike, columns: dict[str, str] | None = None,
            images: str | os.PathLike | None = None, exclude=()) -> SourceRows:
    """Rows of every parquet shard under ``src`` (a file or a folder, also a packed set).

    The dataset's root is ``src`` (a folder) or its folder: a row naming its image by a path outside it
    (absolute, ``..`` leaving it, a symlink out) is skipped and listed. Parquet files written by
    ``geotrainr index`` (they record an image root) are indexes, not sources: skipped and listed.
    """
    src, index_dir = Path(src).resolve(), Path(index_dir).resolve()
    if not src.exists():
        raise IndexValidationError(f"{src}: no such file or folder")
    root = src if src.is_dir() else src.parent
    shards = _shards(src, exclude)
    if not shards:
        raise IndexValidationError(f"{src}: no parquet files (a Hugging Face datasets export)")
    image_col = (columns or {}).get("image", "image")
    frames, skipped = [], []
    for shard in shards:
        try:
            regular_file_size(shard, what="parquet file")
            table = pq.read_table(shard)
        except (pa.ArrowInvalid, OSError) as e:
            raise IndexValidationError(f"{shard}: not a readable parquet file ({e})") from None
        if src.is_dir() and IMAGE_ROOT_KEY in (table.schema.metadata or {}):
            skipped.append((os.path.relpath(shard, root), "a geotrainr index, not a source shard"))
            continue
        if image_col not in table.column_names:
            raise IndexValidationError(f"{shard}: no {image_col!r} column (name it with --columns image=COLUMN)")
        image = table.column(image_col)
        rest = table.drop_columns([image_col])
        df = rest.to_pandas()
        if pa.types.is_struct(image.type):
            names = [image.type.field(k).name for k in range(image.type.num_fields)]
            data = pc.struct_field(image, "bytes").to_numpy(zero_copy_only=False) if "bytes" in names else np.full(len(df), None)
            path = pc.struct_field(image, "path").to_numpy(zero_copy_only=False) if "path" in names else np.full(len(df), None)
        elif pa.types.is_binary(image.type) or pa.types.is_large_binary(image.type):
            data, path = image.to_numpy(zero_copy_only=False), np.full(len(df), None)
        else:
            raise IndexValidationError(f"{shard}: column {image_col!r} is {image.type}, not an image (bytes, path) struct")
        df = apply_columns(df, {k: v for k, v in (columns or {}).items() if k != "image"}, str(shard))
        df["image"] = data
        no_bytes = pd.isna(pd.Series(data, dtype=object)).to_numpy()
        if no_bytes.any():  # images by path: relative to the shard's folder, inside the dataset's root
            inside = np.ones(len(df), bool)
            for i in np.flatnonzero(no_bytes):
                p = path[i]
                why = outside_reason(root, os.path.relpath(os.path.normpath(shard.parent / p), root)) \
                    if isinstance(p, str) and p and not os.path.isabs(p) else outside_reason(root, p)
                if why is not None:
                    skipped.append((f"{os.path.relpath(shard, root)} row {i} ({p})", why))
                    inside[i] = False
            df["image_path"] = [relative(shard.parent / p, index_dir) if nb and ok else None
                                for nb, ok, p in zip(no_bytes, inside, path)]
            df, data, path = df[inside].reset_index(drop=True), data[inside], path[inside]
        df["image_name"] = path
        if "split" not in df.columns and _split_of(shard) is not None:
            df["split"] = _split_of(shard)
        elif "split" in df.columns:
            df["split"] = df["split"].map(lambda s: SPLIT_NAMES.get(str(s).lower(), s))
        frames.append(df)
    if not frames:
        raise IndexValidationError(f"{src}: no source shard ({skipped[0][0]}: {skipped[0][1]})")
    df = pd.concat(frames, ignore_index=True)
    if len(df) == 0:
        raise IndexValidationError(f"{src}: no row names an image inside {root}" + (f" ({skipped[0][0]}: {skipped[0][1]})" if skipped else ""))
    where = str(src)
    df = pick_column(df, "lat", ("lat", "latitude", "LAT"), where)
    df = pick_column(df, "lon", ("lon", "longitude", "lng", "LON"), where)
    if "country" not in df.columns:
        for cand in ("country_code", "countrycode", "iso2"):
            if cand in df.columns:
                df = df.rename(columns={cand: "country"})
                break
    label = pd.Series([p if isinstance(p, str) else f"row {i}" for i, p in enumerate(df["image_name"])])
    df, bad = numeric_coordinates(df, where, label)
    skipped += bad
    label = pd.Series([p if isinstance(p, str) else f"row {i}" for i, p in enumerate(df["image_name"])])
    df, bad = fill_countries(df, label)
    if "source" not in df.columns:
        df["source"] = "hf"
    return SourceRows(df, skipped + bad, root)

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

from geotrainr.data.index import IndexValidationError
from geotrainr.data.sources.common import SourceRows, apply_columns, fill_countries, numeric_coordinates, pick_column, relative

SPLIT_NAMES = {"train": "train", "validation": "val", "valid": "val", "val": "val", "dev": "val", "test": "test"}


def _split_of(shard: Path) -> str | None:
    for part in (shard.name.split("-")[0].split("_")[0], shard.parent.name):
        if part.lower() in SPLIT_NAMES:
            return SPLIT_NAMES[part.lower()]
    return None


def read_hf(src: str | os.PathLike, index_dir: str | os.PathLike, columns: dict[str, str] | None = None,
            images: str | os.PathLike | None = None) -> SourceRows:
    """Rows of every parquet shard under ``src`` (a file or a folder)."""
    src, index_dir = Path(src).resolve(), Path(index_dir).resolve()
    shards = [src] if src.is_file() else sorted(p for p in src.rglob("*.parquet") if not p.name.startswith("."))
    if not shards:
        raise IndexValidationError(f"{src}: no parquet files (a Hugging Face datasets export)")
    image_col = (columns or {}).get("image", "image")
    frames = []
    for shard in shards:
        try:
            table = pq.read_table(shard)
        except (pa.ArrowInvalid, OSError) as e:
            raise IndexValidationError(f"{shard}: not a readable parquet file ({e})") from None
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
        if no_bytes.any():  # images by path: relative to the shard's folder
            df["image_path"] = [relative(shard.parent / p, index_dir) if nb and isinstance(p, str) else None for nb, p in zip(no_bytes, path)]
        df["image_name"] = path
        if "split" not in df.columns and _split_of(shard) is not None:
            df["split"] = _split_of(shard)
        elif "split" in df.columns:
            df["split"] = df["split"].map(lambda s: SPLIT_NAMES.get(str(s).lower(), s))
        frames.append(df)
    df = pd.concat(frames, ignore_index=True)
    where = str(src)
    df = pick_column(df, "lat", ("lat", "latitude", "LAT"), where)
    df = pick_column(df, "lon", ("lon", "longitude", "lng", "LON"), where)
    if "country" not in df.columns:
        for cand in ("country_code", "countrycode", "iso2"):
            if cand in df.columns:
                df = df.rename(columns={cand: "country"})
                break
    label = pd.Series([p if isinstance(p, str) else f"row {i}" for i, p in enumerate(df["image_name"])])
    df, skipped = numeric_coordinates(df, where, label)
    label = pd.Series([p if isinstance(p, str) else f"row {i}" for i, p in enumerate(df["image_name"])])
    df, bad = fill_countries(df, label)
    if "source" not in df.columns:
        df["source"] = "hf"
    return SourceRows(df, skipped + bad)

"""The index contract's names: its columns and their arrow types, the splits, and the error a broken index raises.

The rest of the data layer (readers, writers, importers, packed sets) builds on these.
"""

from __future__ import annotations

import pandas as pd
import pyarrow as pa

from geotrainr.errors import GeotrainrError


SPLITS = ("train", "val", "test")


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")


#: Column name -> arrow type. image_path, image or archive + member is required, lat/lon/country always.
SCHEMA = {
    "image_path": pa.string(),
    "image": pa.binary(),
    "lat": pa.float64(),
    "lon": pa.float64(),
    "country": pa.string(),
    "split": pa.string(),
    "pano_id": pa.string(),
    "heading": pa.float64(),
    "pitch": pa.float64(),
    "fov": pa.float64(),
    "capture_date": pa.string(),
    "place_id": pa.string(),
    "source": pa.string(),
    "archive": pa.string(),
    "member": pa.string(),
    "group": pa.string(),
    "creator": pa.string(),
    "licence": pa.string(),
}


REQUIRED = ("lat", "lon", "country")


class IndexValidationError(GeotrainrError, ValueError):
    """The index (or its source) breaks the contract; the message names the row and the problem."""


#: parquet key-value metadata of an index: where its images may live, relative to the index's folder
IMAGE_ROOT_KEY = b"geotrainr.image_root"


def image_label(df: pd.DataFrame, i: int) -> str:
    """How row ``i``'s image is named to a user: its path, ``archive:member``, or empty for embedded bytes."""
    if "image_path" in df.columns and isinstance(df["image_path"].iloc[i], str):
        return df["image_path"].iloc[i]
    if "archive" in df.columns and isinstance(df["archive"].iloc[i], str):
        return f"{df['archive'].iloc[i]}:{df['member'].iloc[i]}"
    return ""


def row_label(df: pd.DataFrame, i: int) -> str:
    label = image_label(df, i)
    return f"row {i} ({label})" if label else f"row {i}"

"""The image of an index row, where it lives (a file, a zip member or embedded bytes): opened bounded, sized, checked.
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path

import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

from geotrainr.data.archives import member_size, open_member
from geotrainr.data.schema import row_label
from geotrainr.data.schema import IndexValidationError
from geotrainr.data.trust import MAX_IMAGE_BYTES, regular_file_size
from geotrainr.preprocess import register_image_openers


def check_all_images(df: pd.DataFrame, root: str | os.PathLike | None) -> None:
    """Open and fully decode every image; raise on the first that fails."""

    root = Path(root) if root is not None else Path.cwd()
    for i in tqdm(range(len(df)), desc="checking images", unit="img", leave=False, mininterval=1.0):
        try:
            with open_image_source(df, i, root) as f, Image.open(f) as im:
                im.load()
        except Exception as e:  # noqa: BLE001 - any decoder error means an unusable image
            raise IndexValidationError(f"{row_label(df, i)}: unreadable image ({type(e).__name__}: {e})") from None


def open_image_source(df: pd.DataFrame, i: int, root: Path):
    """A binary file object for row ``i``: embedded bytes first, else the archive member (streamed), else the file.

    Bounded: a file must be a regular file and a member must declare a sane size, each at most
    :data:`~geotrainr.data.trust.MAX_IMAGE_BYTES` (checked before anything is opened or inflated).
    """
    if "image" in df.columns:
        data = df["image"].iloc[i]
        if data is not None and not (isinstance(data, float) and math.isnan(data)):
            return io.BytesIO(data)
    if "archive" in df.columns and isinstance(df["archive"].iloc[i], str):

        return open_member(os.path.normpath(root / df["archive"].iloc[i]), df["member"].iloc[i])
    path = os.path.normpath(root / df["image_path"].iloc[i])  # the index folder may not exist yet
    regular_file_size(path, MAX_IMAGE_BYTES, "image")
    return open(path, "rb")


def image_size_bytes(df: pd.DataFrame, i: int, root: Path) -> int:
    """Size in bytes of row ``i``'s image, without reading it (file size, zip directory, or the bytes)."""
    if "image" in df.columns:
        data = df["image"].iloc[i]
        if data is not None and not (isinstance(data, float) and math.isnan(data)):
            return len(data)
    if "archive" in df.columns and isinstance(df["archive"].iloc[i], str):

        return member_size(os.path.normpath(root / df["archive"].iloc[i]), df["member"].iloc[i])
    return regular_file_size(os.path.normpath(root / df["image_path"].iloc[i]), MAX_IMAGE_BYTES, "image")


_END_MARKERS = {"JPEG": b"\xff\xd9", "PNG": b"IEND\xaeB`\x82"}


def _tail_complete(fmt: str | None, f, size: int) -> bool:
    """Whether a JPEG/PNG file of ``size`` bytes ends with its end marker (a cut download does not); other formats
    pass. Reads the last 4 KiB (a zip member is inflated up to there as a stream, in small chunks)."""
    marker = _END_MARKERS.get(fmt or "")
    if marker is None:
        return True
    f.seek(max(0, size - 4096))
    return marker in f.read(4096)


def check_image_headers(df: pd.DataFrame, root: str | os.PathLike | None) -> list[tuple[int, str]]:
    """Cheap check of every image: size > 0 and a header Pillow can parse (no pixel decoding).

    Returns ``(row, reason)`` for every row that fails: missing files, empty files, files that are not
    regular or over :data:`~geotrainr.data.trust.MAX_IMAGE_BYTES`, zip bombs, truncated or foreign headers.
    A zip member is streamed, never inflated whole into memory. About 0.1 ms per image from a warm disk.
    """

    register_image_openers()
    root = Path(root) if root is not None else Path.cwd()
    bad: list[tuple[int, str]] = []
    for i in tqdm(range(len(df)), desc="checking image headers", unit="img", leave=False, mininterval=1.0):
        try:
            size = image_size_bytes(df, i, root)
            if size == 0:
                bad.append((i, "empty file (0 bytes)"))
                continue
            with open_image_source(df, i, root) as f, Image.open(f) as im:
                if im.width <= 0 or im.height <= 0:
                    bad.append((i, "image has no pixels"))
                    continue
                if not _tail_complete(im.format, f, size):
                    im.load()  # the end marker is missing: decode to tell a cut file from trailing data
        except FileNotFoundError:
            bad.append((i, "no such file"))
        except Exception as e:  # noqa: BLE001 - any reader error means an unusable image
            bad.append((i, f"unreadable image header ({type(e).__name__}: {e})"))
    return bad

"""A folder tree of photos (JPEG, PNG, HEIC/HEIF, WebP) located by the GPS block of their EXIF.

Photos without GPS (or with a 0, 0 "no fix" position) are not an error: they are skipped and
listed. The EXIF orientation is not baked in here: every decoder applies it when it reads the image.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pandas as pd

from geotrainr.data.schema import IMAGE_EXTENSIONS, IndexValidationError
from geotrainr.preprocess import register_image_openers
from geotrainr.data.sources.common import SourceRows, fill_countries, is_excluded, relative
from geotrainr.data.trust import MAX_IMAGE_BYTES, UntrustedInputError, regular_file_size, within

PHOTO_EXTENSIONS = (*IMAGE_EXTENSIONS, ".heic", ".heif")
GPS_IFD = 0x8825
EXIF_IFD = 0x8769
DATETIME_ORIGINAL = 36867
DATETIME = 306
# GPS tag numbers (EXIF 2.3): latitude ref/value, longitude ref/value
GPS_LAT_REF, GPS_LAT, GPS_LON_REF, GPS_LON = 1, 2, 3, 4


def _degrees(value, ref) -> float | None:
    """EXIF degrees/minutes/seconds rationals (or one number) and an N/S/E/W reference -> signed degrees."""
    try:
        parts = [float(v) for v in value] if isinstance(value, (tuple, list)) else [float(value)]
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    if not parts or any(not math.isfinite(p) for p in parts):
        return None
    deg = sum(p / 60.0**k for k, p in enumerate(parts[:3]))
    if isinstance(ref, bytes):
        ref = ref.decode("ascii", "ignore")
    if isinstance(ref, str) and ref.strip().upper() in ("S", "W"):
        deg = -deg
    return deg


def read_gps(path: str | os.PathLike) -> tuple[float, float, str | None] | None:
    """(lat, lon, capture date) from a photo's EXIF, or None when it holds no usable position."""
    from PIL import Image

    with Image.open(path) as im:
        exif = im.getexif()
    gps = exif.get_ifd(GPS_IFD)
    if not gps or GPS_LAT not in gps or GPS_LON not in gps:
        return None
    lat, lon = _degrees(gps[GPS_LAT], gps.get(GPS_LAT_REF)), _degrees(gps[GPS_LON], gps.get(GPS_LON_REF))
    if lat is None or lon is None or abs(lat) > 90 or abs(lon) > 180 or (lat == 0 and lon == 0):
        return None
    when = exif.get_ifd(EXIF_IFD).get(DATETIME_ORIGINAL) or exif.get(DATETIME)
    return lat, lon, str(when).strip() if when else None


def read_exif(src: str | os.PathLike, index_dir: str | os.PathLike, columns: dict[str, str] | None = None,
              images: str | os.PathLike | None = None, exclude=()) -> SourceRows:
    """One row per photo under ``src`` whose EXIF holds GPS; the others are listed as skipped, and so are photos
    that are not regular files of at most MAX_IMAGE_BYTES or whose realpath leaves ``src`` (a symlink out)."""
    from tqdm.auto import tqdm

    register_image_openers()
    folder, index_dir = Path(src).resolve(), Path(index_dir).resolve()
    if not folder.is_dir():
        raise IndexValidationError(f"{folder}: not a folder")
    files = sorted(Path(r) / f for r, _, fs in os.walk(folder) for f in fs
                   if Path(f).suffix.lower() in PHOTO_EXTENSIONS and not is_excluded(Path(r) / f, folder, exclude))
    if not files:
        raise IndexValidationError(f"{folder}: no photos found ({', '.join(PHOTO_EXTENSIONS)})")
    rows, skipped = [], []
    for p in tqdm(files, desc="reading EXIF", unit="photo", leave=False, mininterval=1.0):
        name = os.path.relpath(p, folder)
        if not within(p, folder):
            skipped.append((name, "symlink leading outside the dataset"))
            continue
        try:
            regular_file_size(p, MAX_IMAGE_BYTES, "photo")
        except (UntrustedInputError, FileNotFoundError) as e:
            skipped.append((name, f"unreadable photo ({e})"))
            continue
        try:
            gps = read_gps(p)
        except Exception as e:  # noqa: BLE001 - an unreadable photo is listed, not fatal
            skipped.append((name, f"unreadable photo ({type(e).__name__}: {e})"))
            continue
        if gps is None:
            skipped.append((name, "no GPS position in EXIF"))
            continue
        rows.append({"image_path": relative(p, index_dir), "lat": gps[0], "lon": gps[1], "capture_date": gps[2], "source": "exif"})
    if not rows:
        raise IndexValidationError(f"{folder}: none of the {len(files)} photos holds a GPS position in its EXIF")
    df = pd.DataFrame(rows)
    df, bad = fill_countries(df, df["image_path"])
    return SourceRows(df, skipped + bad, folder)

"""Validation of everything a server sends and everything the journal holds.

A server's answer reaches the journal only through these functions: a
metadata answer becomes a :class:`Panorama` with checked types and ranges,
an image body becomes a JPEG of the asked size, a row or a place record is
checked field by field before it is written and again when a journal is
read back. A value that fails is an :class:`InvalidAnswer` (one place
fails and is retried by the next run) or, on reading, a skipped line; it is
never a traceback, and no folder can be poisoned by one bad answer.
"""

from __future__ import annotations

import io
import math
import re
import warnings
from dataclasses import dataclass

from geotrainr.data.scrape.exceptions import InvalidAnswer, TornImage

#: Longest pano_id accepted from a server (Google's are 22 characters); longer ones are hashed in file names.
MAX_PANO_ID = 512
#: Longest place id, country code, date and other short strings in a record.
MAX_SHORT = 64
#: An image is never decoded beyond this many pixels (a decompression bomb is refused from its header).
MAX_DECODE_PIXELS = 25_000_000
#: Formats accepted from a server; anything else (GIF, TIFF, SVG, HTML...) is refused.
STILL_FORMATS = ("JPEG", "PNG", "WEBP")
JPEG_QUALITY = 95

_DATE = re.compile(r"^\d{4}(?:-\d{2}(?:-\d{2})?)?$")
_COUNTRY = re.compile(r"^[A-Z]{2}$")
_IMAGE_PATH = re.compile(r"^images/[A-Za-z0-9_.-]{1,200}$")


@dataclass(frozen=True)
class Panorama:
    """What the metadata says about the panorama nearest to a location (validated)."""

    pano_id: str
    lat: float
    lon: float
    date: str | None
    copyright: str | None
    #: Mapillary only: compass angle, sequence id, creator's username, thumbnail URL (opaque, never stored).
    heading: float | None = None
    sequence: str | None = None
    creator: str | None = None
    thumb_url: str | None = None
    is_pano: bool = False


def _text(value: object, name: str, max_len: int = MAX_SHORT, required: bool = True) -> str | None:
    """A printable string of at most ``max_len`` characters (``None`` allowed unless ``required``)."""
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise InvalidAnswer(f"{name} is a {type(value).__name__}, not a string")
    value = value.strip()
    if not value and required:
        raise InvalidAnswer(f"{name} is empty")
    if len(value) > max_len:
        raise InvalidAnswer(f"{name} is {len(value)} characters long (at most {max_len})")
    if not value.isprintable():
        raise InvalidAnswer(f"{name} holds control characters")
    return value or None


def _number(value: object, name: str, lo: float, hi: float) -> float:
    """A finite real number in [lo, hi] (booleans and strings refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidAnswer(f"{name} is a {type(value).__name__}, not a number")
    x = float(value)
    if not math.isfinite(x) or not lo <= x <= hi:
        raise InvalidAnswer(f"{name} {x!r} is outside [{lo:g}, {hi:g}]")
    return x


def _date(value: object) -> str | None:
    date = _text(value, "date", required=False)
    if date is not None and not _DATE.match(date):
        raise InvalidAnswer(f"date {date[:20]!r} is not YYYY, YYYY-MM or YYYY-MM-DD")
    return date


def panorama_from_metadata(data: dict) -> Panorama:
    """The validated panorama of an ``OK`` metadata answer; raises :class:`InvalidAnswer`."""
    loc = data.get("location")
    if not isinstance(loc, dict):
        raise InvalidAnswer("location is missing or not an object")
    pano_id = _text(data.get("pano_id"), "pano_id", MAX_PANO_ID)
    copyright_ = data.get("copyright")
    return Panorama(
        pano_id=pano_id,  # type: ignore[arg-type]
        lat=_number(loc.get("lat"), "location.lat", -90, 90),
        lon=_number(loc.get("lng"), "location.lng", -180, 180),
        date=_date(data.get("date")),
        # Not stored; kept only when it is plain text.
        copyright=copyright_[:200] if isinstance(copyright_, str) and copyright_.isprintable() else None,
    )


def validate_row(rec: dict) -> dict:
    """A collected view's record with checked types; raises :class:`InvalidAnswer`."""
    path = _text(rec.get("image_path"), "image_path", 210)
    if not _IMAGE_PATH.match(path or ""):
        raise InvalidAnswer("image_path is not a file under images/")
    country = _text(rec.get("country"), "country")
    if not _COUNTRY.match(country or ""):
        raise InvalidAnswer("country is not an ISO alpha-2 code")
    return {
        "image_path": path,
        "lat": _number(rec.get("lat"), "lat", -90, 90),
        "lon": _number(rec.get("lon"), "lon", -180, 180),
        "country": country,
        "pano_id": _text(rec.get("pano_id"), "pano_id", MAX_PANO_ID),
        "heading": _number(rec.get("heading"), "heading", 0, 360),
        # Unknown for a Mapillary photo (camera set by its contributor): None.
        "pitch": _optional_number(rec.get("pitch"), "pitch", -90, 90),
        "fov": _optional_number(rec.get("fov"), "fov", 0, 180),
        "capture_date": _date(rec.get("capture_date")),
        "place_id": _text(rec.get("place_id"), "place_id"),
        "source": _text(rec.get("source"), "source"),
        "sequence": _text(rec.get("sequence"), "sequence", MAX_PANO_ID, required=False),
        "creator": _text(rec.get("creator"), "creator", MAX_PANO_ID, required=False),
        "licence": _text(rec.get("licence"), "licence", required=False),
    }


def _optional_number(value: object, name: str, lo: float, hi: float) -> float | None:
    """``None`` (or NaN read back from parquet) stays ``None``; anything else as :func:`_number`."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return _number(value, name, lo, hi)


def validate_place(rec: dict, outcomes: tuple[str, ...]) -> dict:
    """A finished place's record with checked types; raises :class:`InvalidAnswer`."""
    outcome = rec.get("outcome")
    if outcome not in outcomes:
        raise InvalidAnswer(f"outcome {str(outcome)[:20]!r} is not one of {', '.join(outcomes)}")
    return {
        "place_id": _text(rec.get("place_id"), "place_id"),
        "outcome": outcome,
        "pano_id": _text(rec.get("pano_id"), "pano_id", MAX_PANO_ID, required=False),
        "country": _text(rec.get("country"), "country"),
    }


def normalise_image(body: bytes, width: int, height: int) -> bytes:
    """A JPEG of exactly ``width`` x ``height`` made from what a server sent.

    A JPEG of the asked size is kept byte for byte; a PNG or WebP, another
    size or another colour mode is decoded, centre-cropped to the asked
    aspect, resized and stored as JPEG, so that the ``.jpg`` name and the
    size the folder was started with always hold. Raises :class:`TornImage`
    for a cut-off or undecodable body and :class:`InvalidAnswer` for
    anything that is not a still image or is too large to decode safely.
    """
    from PIL import Image, ImageOps

    if body[:2] == b"\xff\xd8" and not body.rstrip(b"\0").endswith(b"\xff\xd9"):
        raise TornImage("JPEG without end marker (truncated)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the pixel count is checked below
            with Image.open(io.BytesIO(body)) as im:
                fmt, size = im.format, im.size
                if fmt not in STILL_FORMATS:
                    raise InvalidAnswer(f"not a still image ({fmt or 'unknown format'})")
                if getattr(im, "n_frames", 1) > 1:
                    raise InvalidAnswer(f"not a still image (animated {fmt})")
                if size[0] * size[1] > MAX_DECODE_PIXELS:
                    raise InvalidAnswer(f"image of {size[0]}x{size[1]} pixels refused (asked for {width}x{height})")
                if fmt == "JPEG" and size != (width, height):
                    im.draft("RGB", (width, height))  # decode big JPEGs at a reduced scale
                im.load()
                if fmt == "JPEG" and size == (width, height) and im.mode == "RGB":
                    return body
                if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
                    rgba = im.convert("RGBA")
                    rgb = Image.new("RGB", rgba.size, (255, 255, 255))
                    rgb.paste(rgba, mask=rgba.getchannel("A"))
                else:
                    rgb = im.convert("RGB")
    except InvalidAnswer:
        raise
    except Image.DecompressionBombError:
        raise InvalidAnswer(f"image refused: more pixels than {MAX_DECODE_PIXELS} (asked for {width}x{height})") from None
    except Exception as e:  # noqa: BLE001 - any decoder failure means a bad download
        raise TornImage(f"undecodable image ({type(e).__name__})") from None
    if rgb.size != (width, height):
        rgb = ImageOps.fit(rgb, (width, height), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    rgb.save(buf, "JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def stored_image_ok(path, width: int, height: int) -> str | None:
    """Why a stored image is not whole and of the asked size, or None when it is.

    Cheap (header and last bytes, no full decode) so that a resume can check
    every image: catches missing, empty, NUL-filled and cut-off files and
    images of another size.
    """
    from PIL import Image

    try:
        size = path.stat().st_size
        if size == 0:
            return "empty"
        with open(path, "rb") as f:
            head = f.read(16)
            f.seek(max(0, size - 16))
            tail = f.read(16)
        if head[:2] == b"\xff\xd8":
            if not tail.endswith(b"\xff\xd9"):
                return "cut off (no JPEG end marker)"
        elif head[:8] == b"\x89PNG\r\n\x1a\n":
            if not tail.endswith(b"IEND\xaeB`\x82"):
                return "cut off (no PNG end chunk)"
        else:
            return "not a JPEG or PNG"
        with Image.open(path) as im:
            if im.size != (width, height):
                return f"{im.size[0]}x{im.size[1]}, not {width}x{height}"
    except FileNotFoundError:
        return "missing"
    except Exception as e:  # noqa: BLE001 - unreadable for any reason: fetch it again
        return f"unreadable ({type(e).__name__})"
    return None

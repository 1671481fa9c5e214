"""Reading uploads on the API server: bounded bodies, multipart photos, each photo's header checked against the limits.

Every refusal is a :class:`Refused` with an HTTP status and one sentence, raised before a model sees the request.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from starlette.datastructures import UploadFile
from starlette.requests import Request

from geotrainr.errors import GeotrainrError
from geotrainr.preprocess import register_image_openers


class ServeError(GeotrainrError, ValueError):
    """Server settings that cannot work (host, port, limits, batch size)."""


@dataclass(frozen=True)
class Limits:
    """What one request may hold; anything more is refused with 413 before decoding.

    Attributes:
        max_bytes: the whole request body (all photos and the multipart framing).
        max_pixels: width x height of any one photo, read from its header (decompression bombs).
        max_photos: photos per request (views of one place).
    """

    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 50_000_000
    max_photos: int = 8

    def check(self) -> None:
        for name in ("max_bytes", "max_pixels", "max_photos"):
            if getattr(self, name) < 1:
                raise ServeError(f"--{name.replace('_', '-')} must be at least 1")


class Refused(Exception):
    """An upload the server does not take: its HTTP status and one sentence for the client."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The request body, refused by its announced length and again by the bytes that arrive."""
    length = request.headers.get("content-length")
    if length is not None:
        try:
            announced = int(length)
        except ValueError:
            raise Refused(400, "The Content-Length header is not a number.") from None
        if announced > max_bytes:
            raise Refused(413, f"The upload is {announced:,} bytes; this server takes at most {max_bytes:,} bytes per request.")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise Refused(413, f"The upload is more than {max_bytes:,} bytes, the most this server takes per request.")
    return bytes(body)


async def read_photos(request: Request, limits: Limits, max_photos: int | None = None) -> list[tuple[str, bytes]]:
    """(name, bytes) of each photo of a request: multipart ``file`` fields, or the body of an ``image/*`` request."""
    max_photos = max_photos or limits.max_photos
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if not (ctype == "multipart/form-data" or ctype.startswith("image/") or ctype == "application/octet-stream"):
        shown = ctype or "none"
        raise Refused(415, f"Content type {shown} is not taken; send a photo as multipart/form-data (field 'file') "
                      "or as the raw body with an image/* content type.")
    body = await read_body(request, limits.max_bytes)
    if not body:
        raise Refused(400, "The request body is empty; send a photo.")
    if ctype != "multipart/form-data":
        name = request.query_params.get("name") or "upload"
        photos = [(name, body)]
    else:
        sent = False

        async def replay() -> dict:  # the body read above, handed to Starlette's multipart parser once
            nonlocal sent
            if sent:
                return {"type": "http.request", "body": b"", "more_body": False}
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            form = await Request(request.scope, replay).form(max_files=max_photos + 1, max_fields=100)
        except Exception as e:  # noqa: BLE001 - python-multipart and Starlette raise several kinds for a bad form
            detail = str(getattr(e, "detail", "") or e)
            if "Too many files" in detail:
                raise Refused(413, f"More than {max_photos} photos in one request; this server takes at most {max_photos}.") from None
            raise Refused(400, f"The multipart form cannot be read ({first_line(e)}).") from None
        try:
            photos = []
            for _, value in form.multi_items():
                if isinstance(value, UploadFile):
                    photos.append((value.filename or f"photo {len(photos) + 1}", await value.read()))
        finally:
            await form.close()
        if not photos:
            raise Refused(400, "The form holds no file; send each photo in a field named 'file'.")
    if len(photos) > max_photos:
        raise Refused(413, f"{len(photos)} photos in one request; this server takes at most {max_photos}.")
    for name, data in photos:
        check_photo(name, data, limits)
    return photos


def check_photo(name: str, data: bytes, limits: Limits) -> tuple[int, int]:
    """Size of a photo from its header (no decoding): refuses empty files, non-images and too many pixels."""
    from PIL import Image, UnidentifiedImageError


    if not data:
        raise Refused(400, f"{name}: the photo is empty.")
    register_image_openers()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit decides below
            with Image.open(io.BytesIO(data)) as im:
                width, height = im.size
    except Image.DecompressionBombError:
        raise Refused(413, f"{name}: the photo has more pixels than this server takes ({limits.max_pixels:,}).") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, TypeError, EOFError):
        raise Refused(415, f"{name}: not an image this server can read (JPEG, PNG, WebP, HEIC, ...).") from None
    if width * height > limits.max_pixels:
        raise Refused(413, f"{name}: {width} x {height} pixels is more than this server takes ({limits.max_pixels:,}).")
    return width, height


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__

"""The one preprocessor: decode a photo, then transform, then normalise, the same way everywhere.

A model's :class:`Preprocessing` travels in its checkpoint (and exported ``config.json``);
:class:`Preprocessor` turns it into the steps that the dataset, :class:`~geotrainr.locator.Locator`,
``explain`` and ``report`` all run, so one photo gets one tensor whichever way it arrives:

1. **decode** (:meth:`Preprocessor.open`): a path (regular files only), bytes, a file object or a
   PIL image becomes an RGB image with its EXIF orientation applied and transparency laid on
   white. Photos much larger than the model's input are reduced by 2, 4 or 8 while decoding
   (JPEG DCT scaling, several times faster for 640 px frames); an image that arrives already
   decoded is reduced by the same factor with :meth:`PIL.Image.Image.reduce`, so its size,
   crop box and geometry are the same. A path, its bytes and ``Image.open(path)`` give the same
   tensor bit for bit (an unloaded ``Image.open`` object is decoded from its file, untouched).
2. **transform**: short-side resize and centre crop (:class:`ResizeCenterCrop`).
3. **normalise**: :class:`ToNormalizedTensor`.

:meth:`Preprocessor.crop_box` says which part of the decoded photo the crop keeps (for
``explain``'s overlay), from the same geometry as the transform.
"""

from __future__ import annotations

import io
import os
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from geotrainr.errors import GeotrainrError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INTERPOLATIONS = ("bicubic", "bilinear", "nearest")

#: File endings picked up in a folder of photos (a file named explicitly is tried whatever its ending).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".heic", ".heif")


class PreprocessingError(GeotrainrError, ValueError):
    """A preprocessing record (from a checkpoint or config) that cannot describe a model's input."""


class ImageReadError(GeotrainrError, OSError):
    """One photo that cannot be opened or decoded."""


@dataclass
class Preprocessing:
    """What a model expects of its input; travels in checkpoints and exported configs.

    Attributes:
        image_size: side of the square input in pixels.
        mean, std: per-channel normalisation of values in [0, 1].
        interpolation: resampling of the resize (bicubic, bilinear or nearest).
        crop_pct: fraction of the resized short side the centre crop keeps (1.0: all of it).
        draft: reduce large photos by 2/4/8 while decoding (to at least twice ``image_size``).
    """

    image_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bicubic"
    crop_pct: float = 1.0
    draft: bool = True

    def to_dict(self) -> dict:
        return {
            "image_size": self.image_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": self.interpolation,
            "crop_pct": self.crop_pct,
            "draft": self.draft,
        }

    @classmethod
    def from_dict(cls, d: object) -> Preprocessing:
        """A record checked field by field (it may come from a file someone else wrote)."""
        if not isinstance(d, dict):
            raise PreprocessingError("preprocessing record missing or not a mapping")
        size = d.get("image_size")
        if not isinstance(size, int) or isinstance(size, bool) or not 8 <= size <= 4096:
            raise PreprocessingError(f"preprocessing image_size {size!r} is not a size in pixels (8..4096)")
        values = {}
        for key in ("mean", "std"):
            v = d.get(key)
            if (not isinstance(v, (list, tuple)) or len(v) != 3
                    or not all(isinstance(x, (int, float)) and not isinstance(x, bool) and np.isfinite(x) for x in v)):
                raise PreprocessingError(f"preprocessing {key} {v!r} is not three numbers")
            values[key] = tuple(float(x) for x in v)
        if min(values["std"]) <= 0:
            raise PreprocessingError(f"preprocessing std {values['std']} must be positive")
        interpolation = d.get("interpolation", "bicubic")
        if interpolation not in INTERPOLATIONS:
            raise PreprocessingError(f"preprocessing interpolation {interpolation!r} is not one of {', '.join(INTERPOLATIONS)}")
        crop = d.get("crop_pct", 1.0)
        if not isinstance(crop, (int, float)) or isinstance(crop, bool) or not 0.05 <= crop <= 1.0:
            raise PreprocessingError(f"preprocessing crop_pct {crop!r} is not a fraction in (0, 1]")
        draft = d.get("draft", True)
        if not isinstance(draft, bool):
            raise PreprocessingError(f"preprocessing draft {draft!r} is not true or false")
        return cls(size, values["mean"], values["std"], interpolation, float(crop), draft)

    @property
    def draft_size(self) -> int | None:
        """Decoding reduces a photo only while both sides stay at least this large."""
        return 2 * self.image_size if self.draft else None


# --- decoding ---------------------------------------------------------------------------------------

_plugins_registered = False


def register_image_openers() -> None:
    """Let Pillow open HEIC/HEIF photos (phones' default format) through pillow-heif, where it is installed.

    The one place that registers extra formats: decoding, header checks and EXIF reading all call it.
    """
    global _plugins_registered
    if _plugins_registered:
        return
    _plugins_registered = True
    try:
        from pillow_heif import register_heif_opener
    except ImportError:
        return
    register_heif_opener()


def draft_scale(size: tuple[int, int], draft_size: int | None) -> int:
    """The reduction (1, 2, 4 or 8) Pillow's JPEG ``draft`` picks for ``size`` and a square ``draft_size``."""
    if not draft_size:
        return 1
    scale = min(size[0] // draft_size, size[1] // draft_size)
    return next((s for s in (8, 4, 2) if scale >= s), 1)


def _to_rgb(im: Image.Image) -> Image.Image:
    """EXIF orientation applied, transparency laid on white, RGB."""
    im = ImageOps.exif_transpose(im)
    if im.mode == "RGB":
        return im
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        background = Image.new("RGB", im.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return im.convert("RGB")


def _is_unloaded_file(im: Image.Image) -> bool:
    """An ``Image.open`` result not decoded yet, whose file is still there."""
    filename = getattr(im, "filename", "")
    return bool(getattr(im, "tile", None)) and bool(filename) and os.path.isfile(filename)


def decode(source, draft_size: int | None = None) -> Image.Image:
    """Decode a path, bytes, file object or PIL image into RGB (see the module docstring).

    Raises Pillow's and the OS's own errors; :meth:`Preprocessor.open` turns them into one line.
    """
    register_image_openers()
    if isinstance(source, Image.Image):
        if not _is_unloaded_file(source):
            im = _to_rgb(source)
            scale = draft_scale(source.size, draft_size) if (source.format or "JPEG") == "JPEG" else 1
            return im.reduce(scale) if scale > 1 else im
        source = source.filename
    if isinstance(source, (bytes, bytearray, memoryview)):
        source = io.BytesIO(bytes(source))
    elif isinstance(source, (str, os.PathLike)):
        mode = os.stat(source).st_mode  # before open(): opening a FIFO would block
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(source)
        if not stat.S_ISREG(mode):
            raise ImageReadError(f"{source}: not a regular file")
    im = Image.open(source)
    if draft_size and im.format == "JPEG":
        im.draft("RGB", (draft_size, draft_size))
    return _to_rgb(im)


def load_rgb(source, draft_size: int | None = None) -> Image.Image:
    """:func:`decode` under the name the dataset has always used."""
    return decode(source, draft_size)


# --- transform and normalise ------------------------------------------------------------------------


class ToNormalizedTensor:
    """PIL image -> normalised float32 tensor (3, H, W): ``ToTensor`` then ``Normalize``, in NumPy.

    The same numbers as torchvision's pair, bit for bit, but computed single-threaded: per-image torch ops
    on a 128 px image are large enough to go through torch's thread pool, and with few cores shared by
    loader workers (or a busy machine) each such op can stall for a scheduler time slice. Decoding in the
    main process (``num_workers=0``) on 2 busy cores ran up to 10x slower that way. Each channel is a
    lookup in a 256-entry table computed with the same float32 steps: half the time of the arithmetic.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = np.asarray(std, dtype=np.float32)
        levels = np.arange(256, dtype=np.float32) / np.float32(255.0)
        self._table = np.ascontiguousarray(((levels[:, None] - self.mean) / self.std).T)  # (3, 256)

    def __call__(self, pic) -> torch.Tensor:
        if isinstance(pic, Image.Image) and pic.mode != "RGB":
            pic = pic.convert("RGB")
        a = np.asarray(pic)
        if a.dtype != np.uint8:  # e.g. a float array: the arithmetic the table stands for
            a = (a.astype(np.float32) / np.float32(255.0) - self.mean) / self.std
            return torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))
        out = np.empty((3, a.shape[0], a.shape[1]), dtype=np.float32)
        for c in range(3):
            np.take(self._table[c], a[..., c], out=out[c])
        return torch.from_numpy(out)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mean={self.mean.tolist()}, std={self.std.tolist()})"


class ResizeCenterCrop:
    """torchvision's ``Resize(resize_to)`` then ``CenterCrop(size)``, resampling only the kept pixels.

    The same two Pillow passes (columns, then rows) as the pair, each given the crop as its ``box``: a
    4:3 street photo at 128 px takes about two thirds of the time, as the pair resamples the whole frame
    and then throws its sides away. Pixels differ from the pair's by at most one grey level (fixed-point
    rounding of the filter weights). Nearest-neighbour (which a box could shift by one source pixel) and
    a crop larger than the resized image (padding) are left to the pair.
    """

    def __init__(self, size: int, resize_to: int, interpolation: str = "bicubic"):
        from torchvision import transforms as T

        self.size = int(size)
        self.resize_to = int(resize_to)
        self.interpolation = interpolation
        self._resample = Image.Resampling[interpolation.upper()]
        mode = T.InterpolationMode(interpolation)
        self._pair = T.Compose([T.Resize(self.resize_to, interpolation=mode), T.CenterCrop(self.size)])

    def geometry(self, width: int, height: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """(resized width, height) and (left, top) of the crop in the resized image, as torchvision computes them."""
        short, long = min(width, height), max(width, height)
        new_long = int(self.resize_to * long / short)  # torchvision's rounding of the long side
        new_w, new_h = (self.resize_to, new_long) if width <= height else (new_long, self.resize_to)
        return (new_w, new_h), (int(round((new_w - self.size) / 2.0)), int(round((new_h - self.size) / 2.0)))

    def box(self, width: int, height: int) -> tuple[float, float, float, float]:
        """The crop in the input image's pixel coordinates (left, top, right, bottom)."""
        (new_w, new_h), (left, top) = self.geometry(width, height)
        sx, sy = width / new_w, height / new_h
        return left * sx, top * sy, (left + self.size) * sx, (top + self.size) * sy

    def __call__(self, pic):
        if not isinstance(pic, Image.Image) or self.size > self.resize_to or self.interpolation == "nearest":
            return self._pair(pic)
        width, height = pic.size
        (new_w, new_h), (left, top) = self.geometry(width, height)
        if (new_w, new_h) == (width, height):  # torchvision does not resample then: crop only
            return pic.crop((left, top, left + self.size, top + self.size))
        l, t, r, b = self.box(width, height)
        columns = pic.resize((self.size, height), self._resample, box=(l, 0, r, height))
        return columns.resize((self.size, self.size), self._resample, box=(0, t, self.size, b))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size}, resize_to={self.resize_to}, interpolation={self.interpolation})"


def interpolation_of(pre: Preprocessing) -> str:
    return pre.interpolation if pre.interpolation in INTERPOLATIONS else "bicubic"


def eval_transform(pre: Preprocessing, crop: ResizeCenterCrop | None = None) -> Callable:
    """The evaluation transform: short-side resize and centre crop, then normalise (no randomness)."""
    from torchvision import transforms as T

    crop = crop or ResizeCenterCrop(pre.image_size, int(round(pre.image_size / pre.crop_pct)), interpolation_of(pre))
    return T.Compose([crop, ToNormalizedTensor(pre.mean, pre.std)])


class Preprocessor:
    """A model's :class:`Preprocessing` as the steps every consumer runs: decode, transform, normalise."""

    def __init__(self, config: Preprocessing):
        self.config = config
        self.crop = ResizeCenterCrop(config.image_size, int(round(config.image_size / config.crop_pct)), interpolation_of(config))
        self.transform = eval_transform(config, self.crop)

    def __repr__(self) -> str:
        return f"Preprocessor({self.config})"

    def open(self, source) -> Image.Image:
        """The photo as the model's input is made from it; one-line :class:`ImageReadError` if unreadable."""
        try:
            im = decode(source, self.config.draft_size)
            im.load()
            return im
        except ImageReadError:
            raise
        except FileNotFoundError:
            raise ImageReadError(f"{source}: no such file") from None
        except IsADirectoryError:
            raise ImageReadError(f"{source}: a folder, not an image") from None
        except UnidentifiedImageError:
            raise ImageReadError(f"{_label(source)}: not an image Pillow can read") from None
        except Exception as e:  # noqa: BLE001 - truncated data, decoder errors, huge images: all "unreadable"
            raise ImageReadError(f"{_label(source)}: unreadable image ({type(e).__name__}: {e})") from None

    def __call__(self, source) -> torch.Tensor:
        """The model input of one photo (path, bytes, file object or PIL image): (3, H, W) float32."""
        return self.transform(self.open(source))

    def crop_box(self, size: tuple[int, int]) -> tuple[float, float, float, float]:
        """(left, top, right, bottom) of the part of a decoded photo of ``size`` that the model sees."""
        width, height = size
        if self.crop.size > self.crop.resize_to:  # padding: the whole photo is seen
            return 0.0, 0.0, float(width), float(height)
        return self.crop.box(width, height)


def _label(source) -> str:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes>"
    if isinstance(source, Image.Image):
        return getattr(source, "filename", "") or "<image>"
    return str(source)


def image_label(source, i: int = 0) -> str:
    """How a photo is named in results: the path as given, a PIL image's file name, or its position."""
    if isinstance(source, Image.Image):
        return getattr(source, "filename", "") or f"<image {i}>"
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<bytes {i}>"
    return str(source)


__all__ = [
    "IMAGENET_MEAN", "IMAGENET_STD", "IMAGE_SUFFIXES", "Preprocessing", "PreprocessingError", "ImageReadError",
    "Preprocessor", "decode", "load_rgb", "draft_scale", "ToNormalizedTensor", "ResizeCenterCrop", "eval_transform",
    "image_label",
]

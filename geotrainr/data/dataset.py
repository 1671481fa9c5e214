"""Index rows -> training samples ``{"image", "country", "latlon", "index"}``.

The dataset holds plain arrays (no DataFrame lookups per item) so that worker
processes do no per-sample pandas work and never reopen the parquet file.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset, default_collate

from geotrainr.errors import GeotrainrError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImageLoadError(GeotrainrError, RuntimeError):
    """An image in the index could not be read or decoded."""


@dataclass
class Preprocessing:
    """What a model expects of its input; travels in checkpoints."""

    image_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bicubic"
    crop_pct: float = 1.0

    def to_dict(self) -> dict:
        return {
            "image_size": self.image_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": self.interpolation,
            "crop_pct": self.crop_pct,
        }

    @classmethod
    def from_dict(cls, d: dict) -> Preprocessing:
        return cls(int(d["image_size"]), tuple(d["mean"]), tuple(d["std"]), d.get("interpolation", "bicubic"), float(d.get("crop_pct", 1.0)))


def load_rgb(source, draft_size: int | None = None) -> Image.Image:
    """Open an image (path, bytes or file object) as RGB, EXIF orientation applied.

    ``draft_size`` lets the JPEG decoder downscale by 2/4/8 while decoding when
    the image is much larger than needed: several times faster for 640 px frames.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        source = io.BytesIO(source)
    im = Image.open(source)
    if draft_size and im.format == "JPEG":
        im.draft("RGB", (draft_size, draft_size))
    im = ImageOps.exif_transpose(im)
    if im.mode != "RGB":
        if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
            background = Image.new("RGB", im.size, (255, 255, 255))
            background.paste(im.convert("RGBA"), mask=im.convert("RGBA").getchannel("A"))
            im = background
        else:
            im = im.convert("RGB")
    return im


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

    def __call__(self, pic):
        if not isinstance(pic, Image.Image) or self.size > self.resize_to or self.interpolation == "nearest":
            return self._pair(pic)
        width, height = pic.size
        short, long = min(width, height), max(width, height)
        new_long = int(self.resize_to * long / short)  # torchvision's rounding of the long side
        new_w, new_h = (self.resize_to, new_long) if width <= height else (new_long, self.resize_to)
        left = int(round((new_w - self.size) / 2.0))
        top = int(round((new_h - self.size) / 2.0))
        if (new_w, new_h) == (width, height):  # torchvision does not resample then: crop only
            return pic.crop((left, top, left + self.size, top + self.size))
        sx, sy = width / new_w, height / new_h
        columns = pic.resize((self.size, height), self._resample, box=(left * sx, 0, (left + self.size) * sx, height))
        return columns.resize((self.size, self.size), self._resample, box=(0, top * sy, self.size, (top + self.size) * sy))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size}, resize_to={self.resize_to}, interpolation={self.interpolation})"


def build_transform(pre: Preprocessing, train: bool, hflip: bool = False, augment: bool = True) -> Callable:
    """Eval: resize the short side and centre-crop. Train: random resized crop and colour jitter.

    No horizontal flip by default: it swaps the driving side, a strong country cue.
    """
    from torchvision import transforms as T

    interpolation = pre.interpolation if pre.interpolation in ("bicubic", "bilinear", "nearest") else "bicubic"
    interp = T.InterpolationMode(interpolation)
    size = pre.image_size
    if train and augment:
        ops = [T.RandomResizedCrop(size, scale=(0.5, 1.0), ratio=(3 / 4, 4 / 3), interpolation=interp)]
        if hflip:
            ops.append(T.RandomHorizontalFlip())
        ops.append(T.ColorJitter(0.2, 0.2, 0.2))
    else:
        ops = [ResizeCenterCrop(size, int(round(size / pre.crop_pct)), interpolation)]
    ops.append(ToNormalizedTensor(pre.mean, pre.std))
    return T.Compose(ops)


@dataclass
class GeoDataset(Dataset):
    """Samples from index rows. Unreadable images give ``None`` (skipped by :func:`collate_skip`) unless ``strict``."""

    frame: pd.DataFrame
    root: Path
    transform: Callable
    classes: list[str]
    strict: bool = False
    draft_size: int | None = None
    _paths: list = field(init=False, repr=False)
    _bytes: list | None = field(init=False, repr=False)
    _archives: np.ndarray | None = field(init=False, repr=False)
    _members: np.ndarray | None = field(init=False, repr=False)

    def __post_init__(self):
        self.root = Path(self.root)
        df = self.frame.reset_index(drop=True)
        self._paths = df["image_path"].tolist() if "image_path" in df.columns else [None] * len(df)
        self._bytes = df["image"].tolist() if "image" in df.columns else None
        # images inside zip archives (archive relative to the index folder, member name): read in place
        self._archives = df["archive"].to_numpy(object) if "archive" in df.columns else None
        self._members = df["member"].to_numpy(object) if self._archives is not None else None
        self._latlon = torch.from_numpy(df[["lat", "lon"]].to_numpy(np.float32, copy=True))  # writable: no torch warning
        # vectorised class lookup (-1 outside the class list): a Python loop costs ~0.5 s per million rows
        codes = pd.Index(list(self.classes)).get_indexer(df["country"].astype(object).to_numpy())
        self._country = torch.from_numpy(codes.astype(np.int64))
        self.frame = df

    def __len__(self) -> int:
        return len(self._paths)

    def source(self, i: int):
        if self._bytes is not None and self._bytes[i] is not None:
            return self._bytes[i]
        if self._archives is not None and isinstance(self._archives[i], str):
            from geotrainr.data.archives import read_member

            return read_member(self.root / self._archives[i], self._members[i])
        return self.root / self._paths[i]

    def _label(self, i: int) -> str:
        if self._archives is not None and isinstance(self._archives[i], str):
            return f"{self._archives[i]}:{self._members[i]}"
        return self._paths[i] or "embedded bytes"

    def __getitem__(self, i: int):
        try:
            with load_rgb(self.source(i), self.draft_size) as im:
                image = self.transform(im)
        except Exception as e:  # noqa: BLE001 - any decode failure is the same event to us
            if self.strict:
                raise ImageLoadError(f"row {i} ({self._label(i)}): {type(e).__name__}: {e}") from e
            return None
        return {"image": image, "country": self._country[i], "latlon": self._latlon[i], "index": i}


def collate_skip(samples: list) -> dict:
    """Collate, dropping samples whose image failed; ``batch["skipped"]`` counts them."""
    good = [s for s in samples if s is not None]
    skipped = len(samples) - len(good)
    batch = default_collate(good) if good else {}
    batch["skipped"] = skipped
    return batch

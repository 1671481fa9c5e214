"""Index rows -> training samples ``{"image", "country", "latlon", "index"}``.

Decoding, resizing and normalisation are :mod:`geotrainr.preprocess`'s, the same steps
``locate``, ``explain`` and ``report`` run.

The dataset holds plain arrays (no DataFrame lookups per item) so that worker
processes do no per-sample pandas work and never reopen the parquet file.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset, default_collate

from geotrainr.errors import GeotrainrError
from geotrainr.preprocess import decode
from geotrainr.data.archives import read_member


class ImageLoadError(GeotrainrError, RuntimeError):
    """An image in the index could not be read or decoded."""


class DecodedRows(Dataset):
    """What every image dataset shares: decode a row's image with the preprocessor, transform it, and
    give ``None`` for an unreadable one (skipped by :func:`collate_skip`) unless ``strict``.

    Subclasses hold ``transform``, ``strict`` and ``draft_size`` and say where a row's image is
    (:meth:`source`), how it is named (:meth:`label`) and its truth (:meth:`target`).
    """

    transform: Callable
    strict: bool
    draft_size: int | None

    def source(self, i: int):
        raise NotImplementedError

    def label(self, i: int) -> str:
        raise NotImplementedError

    def target(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(class number, -1 outside the class list; (lat, lon) float32) of row ``i``."""
        raise NotImplementedError

    def __getitem__(self, i: int):
        try:
            with decode(self.source(i), self.draft_size) as im:  # the preprocessor's decoding step
                image = self.transform(im)
        except Exception as e:  # noqa: BLE001 - any decode failure is the same event to us
            if self.strict:
                raise ImageLoadError(f"row {i} ({self.label(i)}): {type(e).__name__}: {e}") from e
            return None
        country, latlon = self.target(i)
        return {"image": image, "country": country, "latlon": latlon, "index": i}


@dataclass
class GeoDataset(DecodedRows):
    """Samples from index rows (image files, zip members or embedded bytes)."""

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
            return read_member(self.root / self._archives[i], self._members[i])
        return self.root / self._paths[i]

    def label(self, i: int) -> str:
        """How row ``i``'s image is named in records and errors: a path a user can open, ``archive.zip:member``, or the row."""
        if self._archives is not None and isinstance(self._archives[i], str):
            return f"{os.path.abspath(self.root / self._archives[i])}:{self._members[i]}"
        path = self._paths[i]
        return os.path.abspath(self.root / path) if isinstance(path, str) and path else f"row {i}"

    def target(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self._country[i], self._latlon[i]


def collate_skip(samples: list) -> dict:
    """Collate, dropping samples whose image failed; ``batch["skipped"]`` counts them."""
    good = [s for s in samples if s is not None]
    skipped = len(samples) - len(good)
    batch = default_collate(good) if good else {}
    batch["skipped"] = skipped
    return batch

"""Photos without an index, for ``predict``: files and folders in, one sample per photo, no truth needed."""

from __future__ import annotations

import os
from collections.abc import Sequence

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from geotrainr.data.dataset import collate_skip
from geotrainr.preprocess import ImageReadError, Preprocessing, Preprocessor


class _PhotoSamples(Dataset):
    """``{"image", "index", "latlon" (NaN), "country" (-1)}`` per photo; None for one that cannot be read."""

    def __init__(self, files: Sequence[str], preprocessor: Preprocessor):
        self.files = np.asarray([str(f) for f in files])  # one array, not a list of objects: no copy-on-write growth
        self.preprocessor = preprocessor

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        try:
            image = self.preprocessor(str(self.files[i]))
        except ImageReadError:
            return None
        return {"image": image, "index": i, "latlon": torch.full((2,), float("nan")), "country": torch.tensor(-1)}


class PhotoDataModule(L.LightningDataModule):
    """Photo files for ``predict``; the model's own preprocessing decodes them.

    Args:
        files: the photos, in output order (see :func:`geotrainr.listing.collect_images` for folders).
        preprocessing: the model's (it travels in the checkpoint).
        batch_size: photos per forward pass.
        num_workers: decoding processes.
    """

    def __init__(self, files: Sequence[str | os.PathLike], preprocessing: Preprocessing, batch_size: int = 32,
                 num_workers: int = 0):
        super().__init__()
        self.samples = _PhotoSamples(files, Preprocessor(preprocessing))
        self.batch_size, self.num_workers = batch_size, num_workers

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(self.samples, batch_size=self.batch_size, num_workers=self.num_workers, collate_fn=collate_skip,
                          pin_memory=torch.cuda.is_available())

    def predict_size(self) -> int:
        return len(self.samples)

    def predict_rows(self, index: np.ndarray) -> tuple[list[str], None, None]:
        """Labels of the photos ``index`` (the paths as given); photos carry no truth."""
        return [str(self.samples.files[int(i)]) for i in index], None, None

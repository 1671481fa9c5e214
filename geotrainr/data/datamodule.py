"""GeoDataModule: an index on disk -> train/val/test/predict loaders."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only, rank_zero_warn
from torch.utils.data import DataLoader

from geotrainr.countries import class_list, get_country
from geotrainr.data.dataset import GeoDataset, collate_skip
from geotrainr.preprocess import Preprocessing, build_transform, resolve_policy
from geotrainr.data.index import IndexValidationError, assign_splits, index_root, read_index, validate_index
from geotrainr.errors import GeotrainrError


class UnreadableImagesError(GeotrainrError):
    """Too many images of a split could not be read: a result from the rest would be misleading."""


def resolve_index(index: str | os.PathLike) -> Path:
    """``"demo"`` (Blue Marble) and ``"demo-relief"`` (shaded relief) mean the cached offline evaluation sets
    (built on first use)."""
    from geotrainr.data.demo import ensure_named, is_demo_name

    if is_demo_name(index):
        return ensure_named(str(index))
    return Path(index)


class GeoDataModule(L.LightningDataModule):
    """Loads an image index for the geolocation tasks.

    The class list (``countries``, ``num_classes``) is known right after
    ``__init__`` so that LightningCLI can link it to the model. Image size and
    normalisation come from the model when a Trainer attaches one (its timm data
    config), else from :meth:`set_preprocessing`.

    Args:
        index: parquet index file or shard folder, or ``"demo"`` / ``"demo-relief"`` for the offline evaluation sets.
        countries: fixed class list (ISO codes, in class order); default: the countries of the training split.
        batch_size: images per batch (per device).
        num_workers: loader processes; 0 decodes in the main process.
        pin_memory: page-locked batches for faster GPU copies; default: on when CUDA is present.
        augment: training augmentation policy: ``none``, ``geo-safe`` (mild crops keeping most of the frame,
            small rotations, blur/JPEG/noise, colours untouched) or ``strong`` (crops down to half the frame,
            colour jitter); true means the default policy (``geotrainr.preprocess.DEFAULT_AUGMENT``), false ``none``.
        hflip: random horizontal flips. Off by default: they swap the driving side.
        strict: raise on an unreadable image instead of skipping and counting it.
        max_unreadable: largest fraction of a split's images that may be unreadable (skipped) in an
            epoch; above it ``fit``/``validate``/``test`` stop with one line (exit 2) instead of
            reporting or checkpointing a model trained or scored on what little was left.
        draft_decode: let the JPEG decoder downscale large images while decoding, as the model's
            preprocessing says (``Preprocessing.draft``); False decodes at full size.
        predict_split: rows that ``predict`` runs on (train, val, test or all).
        seed: seed of the fallback random split for an index without a split column.
    """

    def __init__(
        self,
        index: str = "demo",
        countries: list[str] | None = None,
        batch_size: int = 64,
        num_workers: int = 2,
        pin_memory: bool | None = None,
        augment: bool | str = True,
        hflip: bool = False,
        strict: bool = False,
        max_unreadable: float = 0.5,
        draft_decode: bool = True,
        predict_split: str = "val",
        seed: int = 0,
    ):
        super().__init__()
        if not 0.0 <= max_unreadable <= 1.0:
            raise IndexValidationError(f"max_unreadable {max_unreadable!r}: must be a fraction in [0, 1]")
        self.augment = resolve_policy(augment)  # one line for an unknown name, before any data is read
        self.save_hyperparameters(ignore=["countries"])  # the model logs the resolved class list
        self.index_path = resolve_index(index)
        self.root = index_root(self.index_path)
        meta = read_index(self.index_path, columns=["country", "split", "lat", "lon", "image_path"])
        self._has_split = "split" in meta.columns
        if countries:
            self.countries = class_list(countries)
        else:
            train = meta[meta["split"] == "train"] if self._has_split else meta
            self.countries = sorted(train["country"].str.upper().unique().tolist())
        if not self.countries:
            raise IndexValidationError(f"{self.index_path}: the training split holds no rows")
        self.num_classes = len(self.countries)
        self.preprocessing = Preprocessing()
        self.frames: dict[str, object] = {}
        self.skipped = {"train": 0, "val": 0, "test": 0, "predict": 0}
        self.has_test_split = self._has_split and bool((meta["split"] == "test").any())
        self.seen = {"train": 0, "val": 0, "test": 0, "predict": 0}  # images tried, skipped ones included

    # --- configuration -----------------------------------------------------

    def set_preprocessing(self, pre: Preprocessing) -> None:
        """Image size and normalisation to produce (the model's data config)."""
        self.preprocessing = pre

    def setup(self, stage: str | None = None) -> None:
        model = self.trainer.lightning_module if self.trainer is not None else None
        if model is not None and getattr(model, "preprocessing", None) is not None:
            self.preprocessing = model.preprocessing
        if self.frames:
            return
        df = validate_index(read_index(self.index_path))
        if not self._has_split:
            rank_zero_warn(f"{self.index_path} has no split column: using a seeded 80/20 split grouped by place")
            df = assign_splits(df, "group", val=0.2, seed=self.hparams.seed)
        for split in ("train", "val", "test"):
            self.frames[split] = df[df["split"] == split]
        self.has_test_split = len(self.frames["test"]) > 0
        if not self.has_test_split:
            self.frames["test"] = self.frames["val"]
        self.frames["all"] = df
        unseen = sorted(set(df["country"]) - set(self.countries))
        if unseen:
            rank_zero_info(f"countries outside the class list (kept for coordinate metrics): {', '.join(unseen)}")

    def dataset(self, split: str, train: bool = False) -> GeoDataset:
        if not self.frames:
            self.setup()
        if split not in self.frames:
            raise ValueError(f"unknown split {split!r}; use train, val, test or all")
        if split == "test" and not self.has_test_split and rank_zero_only.rank == 0:
            # never score the validation rows under test names without saying so
            print(f"warning: {self.index_path} has no test split: the test stage scores the val split "
                  "(re-index with --test 0.1 for a held-out test set)", file=sys.stderr)
        transform = build_transform(self.preprocessing, train=train, hflip=self.hparams.hflip, augment=self.augment)
        draft = self.preprocessing.draft_size if self.hparams.draft_decode else None
        return GeoDataset(self.frames[split], self.root, transform, self.countries, self.hparams.strict, draft)

    def _loader(self, split: str, train: bool) -> DataLoader:
        ds = self.dataset(split, train)
        if len(ds) == 0:
            raise IndexValidationError(f"{self.index_path}: the {split} split is empty")
        workers = self.hparams.num_workers
        pin = torch.cuda.is_available() if self.hparams.pin_memory is None else self.hparams.pin_memory
        return DataLoader(
            ds,
            batch_size=self.hparams.batch_size,
            shuffle=train,
            drop_last=train and len(ds) > self.hparams.batch_size,
            num_workers=workers,
            pin_memory=pin,
            persistent_workers=workers > 0,
            collate_fn=collate_skip,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.hparams.predict_split, train=False)

    # --- skipped images ----------------------------------------------------

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        skipped = batch.pop("skipped", 0) if isinstance(batch, dict) else 0
        if self.trainer is not None and isinstance(batch, dict):
            stage = self.trainer.state.stage.value if self.trainer.state.stage else "train"
            stage = {"validate": "val", "sanity_check": "val"}.get(stage, stage)
            stage = stage if stage in self.skipped else "train"
            self.skipped[stage] += int(skipped)
            self.seen[stage] += int(skipped) + (len(batch["image"]) if "image" in batch else 0)
        return batch

    def check_unreadable(self, stage: str) -> None:
        """Raise :class:`UnreadableImagesError` when more than ``max_unreadable`` of ``stage``'s images failed."""
        seen, skipped = self.seen[stage], self.skipped[stage]
        limit = self.hparams.max_unreadable
        if seen and skipped / seen > limit:
            raise UnreadableImagesError(
                f"{self.index_path}: {skipped} of {seen} {stage} images ({skipped / seen:.0%}) could not be read, "
                f"more than max_unreadable = {limit:g}; fix or re-collect the images (geotrainr index --check-images "
                "lists them), or raise --data.max_unreadable"
            )

    def pop_skipped(self, stage: str) -> int:
        """Unreadable images of ``stage`` since the last call (the task logs them at each epoch end).

        Also the point where hopeless data stops the run: ``stage`` is checked
        against ``max_unreadable``, and at the end of validation the training
        images of the epoch are checked too, because the last checkpoint is
        written right after validation and before the training epoch ends.
        """
        self.check_unreadable(stage)
        if stage == "val":
            self.check_unreadable("train")
        n, self.skipped[stage], self.seen[stage] = self.skipped[stage], 0, 0
        return n

    # --- what predict writes -------------------------------------------------

    def predict_size(self) -> int:
        """Rows ``predict`` runs on."""
        return len(self.dataset(self.hparams.predict_split))

    def predict_rows(self, index: np.ndarray) -> tuple[list[str], np.ndarray, list[str]]:
        """Image labels, true (lat, lon) and true countries of ``predict``'s rows ``index``."""
        ds = self.dataset(self.hparams.predict_split)
        frame = ds.frame.iloc[index]
        return ([ds.label(int(i)) for i in index], frame[["lat", "lon"]].to_numpy(np.float64),
                frame["country"].astype(str).str.upper().tolist())

    def describe(self) -> dict:
        """What a model card says of the training data: index, images per split, sources, licences, attribution."""
        from geotrainr.data.demo import is_demo_name
        from geotrainr.hub import KNOWN_SOURCES

        if not self.frames:
            self.setup()
        df = self.frames["all"]
        card: dict = {"index": str(self.hparams.index) if is_demo_name(self.hparams.index) else self.index_path.name,
                      "images": {s: int(len(self.frames[s])) for s in ("train", "val", "test") if s in self.frames
                                 and (s != "test" or self.frames["test"] is not self.frames["val"])}}
        sources = sorted(df["source"].dropna().astype(str).unique().tolist()) if "source" in df.columns else []
        licences = sorted(df["licence"].dropna().astype(str).unique().tolist()) if "licence" in df.columns else []
        attribution = []
        for s in sources:
            if s in KNOWN_SOURCES:
                licences.append(KNOWN_SOURCES[s][0])
                attribution.append(KNOWN_SOURCES[s][1])
        if "creator" in df.columns:
            creators = df["creator"].dropna().astype(str)
            if len(creators):
                attribution.append(f"{creators.nunique():,} photographers (the index's creator column)")
        card.update(sources=sources, licences=sorted(set(licences)), attribution=attribution)
        return card

    def train_coordinates(self) -> tuple[np.ndarray, list[str]]:
        """(lat, lon) (N, 2) and country codes of the training rows whose country is a class (for geocells)."""
        if not self.frames:
            self.setup()
        train = self.frames["train"]
        codes = train["country"].str.upper()
        known = codes.isin(self.countries)
        if not known.any():
            raise IndexValidationError(f"{self.index_path}: no training rows in the class list's countries")
        return train.loc[known, ["lat", "lon"]].to_numpy(np.float64, copy=True), codes[known].tolist()

    def class_centres(self) -> np.ndarray:
        """(num_classes, 2) centres of the classes, for anchors and country guesses."""
        return np.array([(get_country(c).lat, get_country(c).lon) for c in self.countries], dtype=np.float64)

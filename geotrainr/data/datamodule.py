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
from geotrainr.data.demo import is_demo_name, resolve_index
from geotrainr.data.licences import KNOWN_SOURCES
from geotrainr.preprocess import Preprocessing
from geotrainr.augment import build_transform, resolve_policy
from geotrainr.data.schema import IndexValidationError
from geotrainr.data.splits import assign_splits
from geotrainr.data.index import index_root, read_index, validate_index
from geotrainr.data.packed.location import is_packed
from geotrainr.data.packed.reader import PackedDataset, PackedSet
from geotrainr.data.packed.stream import ShardStream, StreamLoader
from geotrainr.errors import GeotrainrError


class UnreadableImagesError(GeotrainrError):
    """Too many images of a split could not be read: a result from the rest would be misleading."""


def open_packed(index: str | os.PathLike, buffer: int) -> PackedSet | None:
    """The packed set at ``index`` (a folder or URL written by ``geotrainr pack``), else None."""
    if is_demo_name(index) or not is_packed(index):
        return None
    return PackedSet(index, buffer)


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
        seed: seed of the fallback random split for an index without a split column; for a packed set
            also of the per-epoch shuffle.
        stream_buffer: for a packed set (``geotrainr pack``), the row groups of image bytes each loader
            process keeps in memory; training shuffles within windows of this many row groups.
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
        stream_buffer: int = 4,
    ):
        super().__init__()
        if not 0.0 <= max_unreadable <= 1.0:
            raise IndexValidationError(f"max_unreadable {max_unreadable!r}: must be a fraction in [0, 1]")
        self.augment = resolve_policy(augment)  # one line for an unknown name, before any data is read
        self.save_hyperparameters(ignore=["countries"])  # the model logs the resolved class list
        self.preprocessing = Preprocessing()
        self.frames: dict[str, object] = {}
        self.skipped = {"train": 0, "val": 0, "test": 0, "predict": 0}
        self.seen = {"train": 0, "val": 0, "test": 0, "predict": 0}  # images tried, skipped ones included
        # --- packed sets (geotrainr pack) are streamed from their row groups: geotrainr/data/packed/
        self.packed = open_packed(index, stream_buffer)
        if self.packed is not None:
            self._init_packed(countries)
        else:
            self._init_index(index, countries)
        if not self.countries:
            raise IndexValidationError(f"{self.where}: the training split holds no rows")
        self.num_classes = len(self.countries)

    def _init_index(self, index: str, countries: list[str] | None) -> None:
        """``__init__`` for a parquet index: the class list from the training split's countries (or ``countries``)."""
        self.index_path = resolve_index(index)
        self.where = str(self.index_path)  # the data, named in messages and reports
        self.root = index_root(self.index_path)
        meta = read_index(self.index_path, columns=["country", "split", "lat", "lon", "image_path"])
        self._has_split = "split" in meta.columns
        if countries:
            self.countries = class_list(countries)
        else:
            train = meta[meta["split"] == "train"] if self._has_split else meta
            self.countries = sorted(train["country"].str.upper().unique().tolist())
        self.has_test_split = self._has_split and bool((meta["split"] == "test").any())

    # --- configuration -----------------------------------------------------

    def set_preprocessing(self, pre: Preprocessing) -> None:
        """Image size and normalisation to produce (the model's data config)."""
        self.preprocessing = pre

    def setup(self, stage: str | None = None) -> None:
        model = self.trainer.lightning_module if self.trainer is not None else None
        if model is not None and getattr(model, "preprocessing", None) is not None:
            self.preprocessing = model.preprocessing
        if self.packed is not None:
            self.packed.columns()  # the light columns, once; images stay on disk
            return
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

    def dataset(self, split: str, train: bool = False) -> GeoDataset | PackedDataset:
        if self.packed is None and not self.frames:
            self.setup()
        if split not in (("train", "val", "test", "all") if self.packed is not None else self.frames):
            raise ValueError(f"unknown split {split!r}; use train, val, test or all")
        if split == "test" and not self.has_test_split and rank_zero_only.rank == 0:
            # never score the validation rows under test names without saying so
            print(f"warning: {self.where} has no test split: the test stage scores the val split "
                  "(re-index with --test 0.1 for a held-out test set)", file=sys.stderr)
        transform = build_transform(self.preprocessing, train=train, hflip=self.hparams.hflip, augment=self.augment)
        draft = self.preprocessing.draft_size if self.hparams.draft_decode else None
        if self.packed is not None:
            rows = self.packed.split_index("val" if split == "test" and not self.has_test_split else split)
            return PackedDataset(self.packed, rows, transform, self.countries, self.hparams.strict, draft)
        return GeoDataset(self.frames[split], self.root, transform, self.countries, self.hparams.strict, draft)

    def _loader(self, split: str, train: bool) -> DataLoader:
        ds = self.dataset(split, train)
        if len(ds) == 0:
            raise IndexValidationError(f"{self.where}: the {split} split is empty")
        workers = self.hparams.num_workers
        pin = torch.cuda.is_available() if self.hparams.pin_memory is None else self.hparams.pin_memory
        if self.packed is not None and train:
            return self._stream_loader(ds, workers, pin)
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
        if isinstance(batch, dict) and "stream_batch" in batch:  # a packed set's training batch: remember it for resuming
            self._stream_done.add(int(batch.pop("stream_batch")))
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
                f"{self.where}: {skipped} of {seen} {stage} images ({skipped / seen:.0%}) could not be read, "
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
        if self.packed is not None:
            return self._describe_packed(KNOWN_SOURCES)
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
        if self.packed is not None:
            return self._packed_train_coordinates()
        if not self.frames:
            self.setup()
        train = self.frames["train"]
        codes = train["country"].str.upper()
        known = codes.isin(self.countries)
        if not known.any():
            raise IndexValidationError(f"{self.where}: no training rows in the class list's countries")
        return train.loc[known, ["lat", "lon"]].to_numpy(np.float64, copy=True), codes[known].tolist()

    def class_centres(self) -> np.ndarray:
        """(num_classes, 2) centres of the classes, for anchors and country guesses."""
        return np.array([(get_country(c).lat, get_country(c).lon) for c in self.countries], dtype=np.float64)

    # --- packed sets: streamed, see geotrainr/data/packed/ ------------------------------------

    def _init_packed(self, countries: list[str] | None) -> None:
        """``__init__`` for a packed set: the class list and split counts come from its manifest, nothing is read."""
        self.index_path = Path(self.packed.location)
        self.where = self.packed.location  # a URL stays a URL (a Path would fold its '//')
        self.root = self.index_path
        self._has_split = True
        self.countries = class_list(countries) if countries else self.packed.countries
        self.has_test_split = self.packed.split_rows.get("test", 0) > 0
        self._stream_done: set[int] = set()  # batches of the current epoch the model has had
        self._stream_epoch, self._stream_world = -1, 1
        self._stream_skip: frozenset[int] = frozenset()  # batches the current epoch's plan leaves out
        self._stream_resume: dict | None = None  # from a checkpoint: {"epoch": e, "done": [batch numbers]}

    def _stream_loader(self, ds: PackedDataset, workers: int, pin: bool) -> StreamLoader:
        """Whole batches streamed from the row groups, disjoint per rank and worker, reshuffled every epoch."""
        stream = ShardStream(ds, self.hparams.batch_size, self.hparams.seed)
        return StreamLoader(stream, self._current_epoch, self._resume_point, self._stream_state, self._stream_restore,
                            num_workers=workers, pin_memory=pin)

    def _current_epoch(self) -> int:
        return self.trainer.current_epoch if self.trainer is not None else max(self._stream_epoch + 1, 0)

    def _resume_point(self, epoch: int, world: int) -> frozenset:
        """Batches of ``epoch`` to leave out: those a resumed checkpoint had trained on, once.

        Batch numbers depend on the number of processes and the batch size (not on the workers): with
        others than the checkpoint's, the epoch restarts, and one line says so.
        """
        resume, self._stream_resume = self._stream_resume, None
        if resume is None and epoch == self._stream_epoch and not self._stream_done - self._stream_skip:
            return self._stream_skip  # the same epoch's loader started again before any batch: the same plan
        self._stream_epoch, self._stream_world = epoch, world
        self._stream_done, self._stream_skip = set(), frozenset()
        if resume is None or int(resume.get("epoch", -1)) != epoch or not resume.get("done"):
            return self._stream_skip
        same = (resume.get("world"), resume.get("batch_size")) == (world, self.hparams.batch_size)
        if not same:
            rank_zero_info(f"resuming epoch {epoch} of {self.where}: the epoch restarts from its first batch (the "
                           f"checkpoint was written with {resume.get('world')} process(es) and batch size "
                           f"{resume.get('batch_size')}, this run has {world} and {self.hparams.batch_size})")
            return self._stream_skip
        self._stream_done = set(int(b) for b in resume["done"])
        self._stream_skip = frozenset(self._stream_done)
        rank_zero_info(f"resuming epoch {epoch} of {self.where} where it stopped: {len(self._stream_done)} batches "
                       "of this epoch were trained on and are not read again")
        return self._stream_skip

    def _stream_state(self) -> dict:
        """Which training batches of the current epoch the model has had: what a checkpoint carries to resume there."""
        return {"epoch": self._stream_epoch, "done": sorted(self._stream_done), "world": self._stream_world,
                "batch_size": self.hparams.batch_size}

    def _stream_restore(self, state: dict) -> None:
        self._stream_resume = state

    def state_dict(self) -> dict:
        """A packed set's resume point (Lightning restores the datamodule before it builds the loaders)."""
        return {"stream": self._stream_state()} if self.packed is not None else {}

    def load_state_dict(self, state_dict: dict) -> None:
        if self.packed is not None and "stream" in state_dict:
            self._stream_restore(state_dict["stream"])

    def _describe_packed(self, known_sources: dict) -> dict:
        m = self.packed.manifest
        images = {s: n for s, n in self.packed.split_rows.items() if s != "test" or n}
        licences, attribution = list(m.get("licences", [])), []
        for s in m.get("sources", []):
            if s in known_sources:
                licences.append(known_sources[s][0])
                attribution.append(known_sources[s][1])
        if m.get("creators"):
            attribution.append(f"{m['creators']:,} photographers (the index's creator column)")
        return {"index": Path(self.packed.location).name, "images": images, "sources": list(m.get("sources", [])),
                "licences": sorted(set(licences)), "attribution": attribution}

    def _packed_train_coordinates(self) -> tuple[np.ndarray, list[str]]:
        cols = self.packed.columns()
        rows = self.packed.split_index("train")
        codes = self.packed.country_codes[cols["country"][rows]]
        known = np.isin(codes, self.countries)
        if not known.any():
            raise IndexValidationError(f"{self.where}: no training rows in the class list's countries")
        rows = rows[known]
        return np.stack([cols["lat"][rows], cols["lon"][rows]], axis=1).astype(np.float64), codes[known].tolist()

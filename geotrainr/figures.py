"""Figures while training: the report's pictures of the validation split, logged every N epochs.

:class:`ValidationFigures` is a Lightning callback. At the end of validation it logs three
pictures, drawn by the same builders in :mod:`geotrainr.plots` that ``geotrainr report`` uses:

- ``val/map``: a fixed, seeded sample of validation photos (the same every epoch), each true place
  joined to its guess;
- ``val/confusion``: the confusion matrix of the countries most confused over the whole validation
  split (tasks with a country head; a linear coordinate model's sample otherwise);
- ``val/photos``: a grid of the first photos of that sample with their true and guessed countries.

The guesses are those of the validation pass itself (the task's ``validation_step`` returns them),
so nothing is predicted twice. Under DDP every rank collects its share and the shares are summed
onto rank 0, which draws. TensorBoard and W&B loggers receive the pictures; other loggers are
skipped, and without a logger that takes pictures nothing is collected.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import Logger, TensorBoardLogger, WandbLogger
from lightning.pytorch.trainer.states import TrainerFn

from geotrainr import maps, plots
from geotrainr.errors import GeotrainrError
from geotrainr.predictions import make_guesses

#: the logged pictures' names
TAGS = ("val/map", "val/confusion", "val/photos")


class FiguresConfigError(GeotrainrError, ValueError):
    """Settings of :class:`ValidationFigures` that cannot work (a negative count)."""


def takes_images(logger: Logger) -> bool:
    """Whether :class:`ValidationFigures` can log pictures to ``logger``."""
    return isinstance(logger, (TensorBoardLogger, WandbLogger))


@dataclass
class _Collected:
    """One validation epoch's share of this rank: sums, so that ranks add up (padding repeats rows: ``seen`` counts)."""

    dataset: object
    rows: np.ndarray  # dataset rows of the sample, in drawn order
    lookup: torch.Tensor  # dataset row -> position in the sample, -1 outside it
    counts: torch.Tensor | None  # (C, C) true x guessed over every validation image (tasks with probs)
    guess: torch.Tensor  # (S, 2) lat/lon sums
    truth: torch.Tensor  # (S, 2)
    true_class: torch.Tensor  # (S,) class number sums (-1: outside the class list)
    guess_class: torch.Tensor  # (S,) class number sums (tasks with probs)
    seen: torch.Tensor  # (S,)
    photos: torch.Tensor  # (P, 3, H, W) model input sums

    def tensors(self) -> list[str]:
        return [k for k in ("counts", "guess", "truth", "true_class", "guess_class", "seen", "photos")
                if getattr(self, k) is not None]


class ValidationFigures(Callback):
    """Log a map of validation guesses, the most confused countries and captioned photos while training.

    Add it to ``trainer.callbacks`` (the shipped task configs do), or on the command line:
    ``--trainer.callbacks+=geotrainr.figures.ValidationFigures``.

    Args:
        every_n_epochs: draw after every N-th training epoch (``validate`` always draws); 0 turns it off.
        samples: validation photos on the map, the same seeded sample every epoch.
        top_confused: countries in the confusion matrix, those with the most wrong guesses (of them or as them).
        photos: photos in the grid, the first of the map's sample.
        seed: seed of the sample.
    """

    def __init__(self, every_n_epochs: int = 1, samples: int = 64, top_confused: int = 12, photos: int = 16,
                 seed: int = 0):
        for name, value in (("every_n_epochs", every_n_epochs), ("samples", samples), ("top_confused", top_confused),
                            ("photos", photos)):
            if value < 0:
                raise FiguresConfigError(f"ValidationFigures: {name} must be 0 or more (got {value})")
        self.every_n_epochs = every_n_epochs
        self.samples = samples
        self.top_confused = top_confused
        self.photos = min(photos, samples)
        self.seed = seed
        #: seconds spent in this callback's hooks so far (collecting, drawing, logging), on this rank
        self.seconds = 0.0
        self._epoch: _Collected | None = None

    # --- when -------------------------------------------------------------------------------------

    def _due(self, trainer: Trainer) -> bool:
        if self.every_n_epochs <= 0 or trainer.sanity_checking or not any(takes_images(lg) for lg in trainer.loggers):
            return False
        if trainer.state.fn == TrainerFn.FITTING:
            return (trainer.current_epoch + 1) % self.every_n_epochs == 0
        return trainer.state.fn == TrainerFn.VALIDATING

    def sample_rows(self, trainer: Trainer, size: int) -> np.ndarray:
        """The sample: ``samples`` seeded rows among those validation reaches (``limit_val_batches``), drawn order."""
        loader = trainer.val_dataloaders[0] if isinstance(trainer.val_dataloaders, list) else trainer.val_dataloaders
        reached = size
        batches = trainer.num_val_batches[0] if trainer.num_val_batches else float("inf")
        batch_size = getattr(loader, "batch_size", None)
        if batch_size and batches != float("inf"):  # a DistributedSampler deals rows out in turn: rank r has r, r+W, ...
            reached = min(size, int(batches) * batch_size * trainer.world_size)
        rng = np.random.default_rng(self.seed)
        return rng.choice(reached, size=min(self.samples, reached), replace=False)

    # --- collect --------------------------------------------------------------------------------

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._epoch = None
        if not self._due(trainer):
            return
        start = time.perf_counter()
        loader = trainer.val_dataloaders[0] if isinstance(trainer.val_dataloaders, list) else trainer.val_dataloaders
        dataset = loader.dataset
        rows = self.sample_rows(trainer, len(dataset))
        dev = pl_module.device
        lookup = torch.full((len(dataset),), -1, dtype=torch.long, device=dev)
        lookup[torch.as_tensor(rows, dtype=torch.long, device=dev)] = torch.arange(len(rows), device=dev)
        c, s, size = pl_module.num_classes, len(rows), pl_module.preprocessing.image_size
        zeros = lambda *shape: torch.zeros(shape, dtype=torch.float64, device=dev)  # noqa: E731
        self._epoch = _Collected(
            dataset=dataset, rows=rows, lookup=lookup,
            counts=zeros(c, c) if pl_module.predicts_countries else None,
            guess=zeros(s, 2), truth=zeros(s, 2), true_class=zeros(s), guess_class=zeros(s), seen=zeros(s),
            photos=torch.zeros((min(self.photos, s), 3, size, size), device=dev),
        )
        self.seconds += time.perf_counter() - start

    def on_validation_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int,
                                dataloader_idx: int = 0) -> None:
        e = self._epoch
        guess = outputs.get("guess") if isinstance(outputs, dict) else None
        if e is None or dataloader_idx != 0 or guess is None or "image" not in batch:
            return
        start = time.perf_counter()
        true_class = batch["country"].long()
        probs = guess.get("probs")
        guess_class = probs.argmax(1) if probs is not None else None
        if e.counts is not None and guess_class is not None:
            known = true_class >= 0
            c = e.counts.shape[0]
            cells = true_class[known] * c + guess_class[known]
            e.counts.view(-1).index_add_(0, cells, torch.ones_like(cells, dtype=e.counts.dtype))
        index = batch["index"].long()
        pos = e.lookup[index.clamp(0, len(e.lookup) - 1)]
        hit = ((pos >= 0) & (index < len(e.lookup))).nonzero().squeeze(1)
        if len(hit):
            at = pos[hit]
            e.guess.index_add_(0, at, guess["latlon"][hit].double())
            e.truth.index_add_(0, at, batch["latlon"][hit].double())
            e.true_class.index_add_(0, at, true_class[hit].double())
            if guess_class is not None:
                e.guess_class.index_add_(0, at, guess_class[hit].double())
            e.seen.index_add_(0, at, torch.ones_like(at, dtype=torch.float64))
            shown = at < len(e.photos)
            images = batch["image"][hit][shown].float()
            if len(images) and images.shape[-2:] != e.photos.shape[-2:]:
                images = torch.nn.functional.interpolate(images, size=e.photos.shape[-2:], mode="bilinear")
            e.photos.index_add_(0, at[shown], images)
        self.seconds += time.perf_counter() - start

    # --- draw and log ---------------------------------------------------------------------------

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        e, self._epoch = self._epoch, None
        if e is None:
            return
        start = time.perf_counter()
        if trainer.world_size > 1:  # every rank is here (the same epochs are due everywhere): sum the shares
            for name in e.tensors():
                setattr(e, name, trainer.strategy.reduce(getattr(e, name), reduce_op="sum"))
        if trainer.is_global_zero:
            pictures = self.draw(e, pl_module, trainer.current_epoch)
            for logger in trainer.loggers:
                for tag, pixels in pictures.items():
                    log_picture(logger, tag, pixels, trainer.global_step)
        self.seconds += time.perf_counter() - start

    def draw(self, e: _Collected, pl_module: LightningModule, epoch: int) -> dict[str, np.ndarray]:
        """The pictures of one epoch's collected guesses: ``{tag: (H, W, 3) uint8 pixels}``."""
        countries = list(pl_module.countries)
        seen = e.seen.cpu().numpy()
        ok = seen > 0
        n = np.maximum(seen, 1)[:, None]
        guess = (e.guess.cpu().numpy() / n)[ok]
        truth = (e.truth.cpu().numpy() / n)[ok]
        names = [Path(str(e.dataset.label(int(r)))).name for r in e.rows[ok]]
        true_labels = [countries[k] if k >= 0 else None for k in np.rint(e.true_class.cpu().numpy()[ok] / seen[ok]).astype(int)]
        if e.counts is not None:
            guessed = [countries[k] for k in np.rint(e.guess_class.cpu().numpy()[ok] / seen[ok]).astype(int)]
        else:  # a linear coordinate model guesses the country its coordinates fall in
            guessed = [g.country for g in make_guesses(names, guess, None, {}, countries, top_k=0)]
        when = f"validation, epoch {epoch}"
        pictures: dict[str, np.ndarray] = {}
        if ok.any():
            labels = [f"{t or '?'}->{g or '?'}" for t, g in zip(true_labels, guessed)] if ok.sum() <= 25 else None
            note = pl_module.guess_note
            fig = maps.map_figure(guess, truth, labels=labels, note=f"{note[0].upper()}{note[1:]}." if note else None,
                                   title=f"Truth (green) joined to guess (red), {when}: a fixed sample of {int(ok.sum())}")
            pictures["val/map"] = plots.figure_pixels(fig)

        if e.counts is not None:
            counts, classes, what = e.counts.cpu().numpy().astype(np.int64), countries, "all"
        else:
            classes = countries + sorted({c for c in true_labels + guessed if c} - set(countries))
            counts = plots.confusion_matrix(true_labels, guessed, classes)
            what = "a sample of"
        top = plots.most_confused(counts, self.top_confused)
        if top:
            shown = [classes[i] for i in top]
            fig = plots.confusion_figure(
                counts[np.ix_(top, top)], shown, row_totals=counts.sum(1)[top],
                title=f"{len(top)} most confused countries, {when}\n({what} {int(counts.sum())} images; "
                      f"rows: true country, normalised by all its images)")
            pictures["val/confusion"] = plots.figure_pixels(fig)

        k = int(min(len(e.photos), ok[: len(e.photos)].sum()))
        if k:
            keep = np.flatnonzero(ok[: len(e.photos)])
            mean = torch.tensor(pl_module.preprocessing.mean).view(3, 1, 1)
            std = torch.tensor(pl_module.preprocessing.std).view(3, 1, 1)
            pixels = e.photos.cpu()[torch.as_tensor(keep)] / torch.as_tensor(seen[keep]).view(-1, 1, 1, 1).float()
            images = ((pixels * std + mean).clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()
            at = np.cumsum(ok) - 1  # position among the seen rows
            fig = plots.photo_grid_figure(list(images), [true_labels[at[i]] for i in keep],
                                          [guessed[at[i]] for i in keep], names=[names[at[i]] for i in keep],
                                          title=f"Photos as the model sees them, {when}")
            pictures["val/photos"] = plots.figure_pixels(fig)
        return pictures


def log_picture(logger: Logger, tag: str, pixels: np.ndarray, step: int) -> None:
    """Log one picture, (H, W, 3) uint8, to a TensorBoard or W&B logger; other loggers are skipped."""
    if isinstance(logger, TensorBoardLogger):
        logger.experiment.add_image(tag, pixels, step, dataformats="HWC")
    elif isinstance(logger, WandbLogger):
        from PIL import Image

        logger.log_image(key=tag, images=[Image.fromarray(pixels)], step=step)


__all__ = ["TAGS", "FiguresConfigError", "ValidationFigures", "log_picture", "takes_images"]

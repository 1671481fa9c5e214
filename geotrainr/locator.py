"""Locate photos with a trained model: the library API behind ``geotrainr locate``.

:class:`Locator` holds a model and its :class:`~geotrainr.preprocess.Preprocessor`; it loads from a
checkpoint, run folder, exported folder or Hub repository through the one loader (:mod:`geotrainr.loading`),
locates paths, bytes or PIL images in batches, and answers with
:class:`~geotrainr.predictions.Guess` records.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

from geotrainr.progress import ProgressCallback
from geotrainr.errors import GeotrainrError
from geotrainr.loading import load_model
from geotrainr.onnx_runtime import load_onnx
from geotrainr.preprocess import ImageReadError, Preprocessor, image_label
from geotrainr.predictions import CellDecoder, Guess, make_guesses


class DeviceError(GeotrainrError, ValueError):
    """A device that does not exist here."""


#: how a Locator runs the network: torch (the task model as trained) or onnx (onnxruntime on an exported model.onnx)
RUNTIMES = ("torch", "onnx")


class RuntimeChoiceError(GeotrainrError, ValueError):
    """A runtime that is not one of :data:`RUNTIMES`."""


class _Photos(Dataset):
    """Decodes and transforms photos; a failure is returned, not raised, so the batch goes on."""

    def __init__(self, items: Sequence, preprocessor: Preprocessor):
        self.items, self.preprocessor = list(items), preprocessor

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        try:
            return i, self.preprocessor(self.items[i]), None
        except ImageReadError as e:
            return i, None, str(e)
        except Exception as e:  # noqa: BLE001 - e.g. a transform failing on a 1-pixel image
            return i, None, f"{image_label(self.items[i], i)}: cannot prepare image ({type(e).__name__}: {e})"


def _collate(samples: list) -> tuple[list[int], torch.Tensor | None, list[tuple[int, str]]]:
    good = [(i, x) for i, x, err in samples if err is None]
    errors = [(i, err) for i, x, err in samples if err is not None]
    x = torch.stack([x for _, x in good]) if good else None
    return [i for i, _ in good], x, errors


def auto_device() -> torch.device:
    """The GPU when there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/``"auto"``: the GPU when present; otherwise the named device, checked to exist."""
    if device is None or str(device) == "auto":
        return auto_device()
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise DeviceError(f"unknown device {device!r} (auto, cpu, cuda, cuda:1, ...)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {device!r} asked for, but no CUDA GPU is available here (use auto or cpu)")
    return dev


class Locator:
    """A trained checkpoint ready to locate photos.

    >>> loc = Locator.load("runs/country/version_0/checkpoints/best.ckpt")
    >>> for g in loc.locate(["photo.jpg", "folder_image.png"], top_k=3):
    ...     print(g.image, g.country, g.probability, g.lat, g.lon, g.nearest_place)

    Works with every task kind: country models give probabilities and the
    guessed country's centre, coordinate models give coordinates (and the
    country they fall in), distance models give probabilities over their
    country anchors (a softmax of the negated predicted distances).
    """

    def __init__(self, model: nn.Module, device: str | torch.device | None = None):
        self.runtime: str = getattr(model, "runtime", "torch")
        self.device = resolve_device("cpu" if self.runtime == "onnx" and device in (None, "auto") else device)
        self.model = model.eval().to(self.device)
        self.kind: str = model.task_kind
        self.countries: list[str] = list(model.countries)
        self.preprocessing = model.preprocessing
        self.preprocessor = Preprocessor(model.preprocessing)

    @classmethod
    def load(cls, source: str | os.PathLike, device: str | torch.device | None = None, kind: str | None = None,
             runtime: str = "torch", **hub_kwargs) -> Locator:
        """A checkpoint file, a run folder, an exported folder or a Hub repository id, through
        :func:`geotrainr.loading.load_model` (no weights download, nothing executed from the file).

        Args:
            source: what ``geotrainr locate`` takes as MODEL.
            device: ``"cuda"``, ``"cpu"``...; default: the GPU when there is one.
            kind: require this task kind (country, coords, distance, multitask).
            runtime: ``onnx`` runs the network in onnxruntime on the CPU: ``source`` must then be an exported
                folder (or Hub id) holding model.onnx (``geotrainr export MODEL --out DIR --format onnx``).
            hub_kwargs: for Hub ids, ``huggingface_hub.hf_hub_download``'s ``revision``, ``token``, ...
        """
        if runtime not in RUNTIMES:
            raise RuntimeChoiceError(f"unknown runtime {runtime!r} ({' or '.join(RUNTIMES)})")
        if runtime == "onnx":
            return cls(load_onnx(source, kind=kind, **hub_kwargs), device=device)
        return cls(load_model(source, kind=kind, device="cpu", **hub_kwargs), device=device)

    #: the same loader under the names earlier releases used
    from_checkpoint = load
    from_pretrained = load

    def __repr__(self) -> str:
        runtime = ", onnxruntime" if self.runtime == "onnx" else ""
        return f"Locator({self.kind}, {len(self.countries)} countries, {self.preprocessing.image_size} px, {self.device}{runtime})"

    # --- raw predictions -------------------------------------------------------------------------

    def _default_workers(self) -> int:
        """Decoding processes for large lists: on the CPU only cores that torch's threads leave free.

        A worker sharing a core with the forward pass stalls it (on 2 cores locate ran at 0.76x of a
        raw forward with one worker and 0.90x with none).
        """
        cores = os.cpu_count() or 1
        if self.device.type == "cpu":
            return max(0, min(4, cores - torch.get_num_threads()))
        return min(4, max(1, cores // 2))

    def predict(
        self,
        images: Sequence,
        batch_size: int = 32,
        num_workers: int | None = None,
        progress: ProgressCallback | None = None,
    ) -> tuple[np.ndarray, np.ndarray | None, dict[int, str]]:
        """Batched forward pass over photos (paths or PIL images).

        Returns ``latlon`` (N, 2; NaN where an image failed), ``probs`` (N, C or None
        for linear coordinate models) and ``{position: error message}`` of the failures.
        ``num_workers`` decoding processes (default: some for large lists of files).
        ``progress`` is called with (images done, images in all) after each batch.
        """
        out = self._predict(images, batch_size, num_workers, progress)
        return out["latlon"], out.get("probs"), out["errors"]

    def _predict(self, images: Sequence, batch_size: int, num_workers: int | None,
                 progress: ProgressCallback | None) -> dict:
        """:meth:`predict` with every array the model gives (``cell_probs`` of geocell models too)."""
        images = list(images)
        n = len(images)
        if num_workers is None:
            paths_only = not any(isinstance(im, Image.Image) for im in images)
            num_workers = self._default_workers() if paths_only and n > 2 * batch_size else 0
        loader = DataLoader(
            _Photos(images, self.preprocessor),
            batch_size=max(1, batch_size),
            num_workers=num_workers,
            collate_fn=_collate,
            pin_memory=self.device.type == "cuda",
        )
        result: dict = {"latlon": np.full((n, 2), np.nan), "errors": {}}
        if self.model.predicts_countries:
            result["probs"] = np.full((n, len(self.countries)), np.nan, dtype=np.float32)
        done = 0
        with torch.inference_mode():
            for idx, x, failed in loader:
                result["errors"].update(failed)
                if x is not None:
                    out = self.model.predict_latlon(x.to(self.device, non_blocking=True))
                    result["latlon"][idx] = out["latlon"].double().cpu().numpy()
                    for key in ("probs", "cell_probs", "cell_offsets"):
                        if key in out:
                            if key not in result:
                                result[key] = np.full((n, *out[key].shape[1:]), np.nan, dtype=np.float32)
                            result[key][idx] = out[key].float().cpu().numpy()
                done += len(idx) + len(failed)
                if progress is not None:
                    progress(done, n)
        return result

    def _cell_decoder(self) -> CellDecoder:
        """Averaged cell probabilities (and per-cell offsets) of several views -> (latlon, country probabilities),
        as the model decodes one view."""
        model = self.model

        def tensor(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.asarray(a, np.float32))[None].to(self.device)

        def decode(cell_probs: np.ndarray, cell_offsets: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
            with torch.inference_mode():
                if cell_offsets is None:
                    latlon, probs = model.decode_cells(tensor(cell_probs))
                else:
                    latlon, probs = model.decode_cells(tensor(cell_probs), tensor(cell_offsets))
            return latlon[0].double().cpu().numpy(), probs[0].float().cpu().numpy()

        return decode

    # --- guesses -------------------------------------------------------------------------------

    def locate(
        self,
        images: Sequence | str | os.PathLike | Image.Image,
        top_k: int = 5,
        batch_size: int = 32,
        num_workers: int | None = None,
        progress: ProgressCallback | None = None,
    ) -> list[Guess]:
        """One :class:`Guess` per photo, in input order; unreadable photos get ``error`` set instead of raising.

        Args:
            images: paths and/or PIL images (a single one is fine too).
            top_k: how many countries to list per photo.
            batch_size: photos per forward pass.
            num_workers: decoding processes (default: some for large lists of files).
            progress: called with (photos done, photos in all) after each batch.
        """
        if isinstance(images, (str, os.PathLike, Image.Image, bytes, bytearray, memoryview)):
            images = [images]
        images = list(images)
        out = self._predict(images, batch_size, num_workers, progress)
        labels = [image_label(im, i) for i, im in enumerate(images)]
        guesses = make_guesses(labels, out["latlon"], out.get("probs"), out["errors"], self.countries, top_k)
        if "cell_probs" in out:
            decoder = self._cell_decoder()
            offsets = out.get("cell_offsets", [None] * len(images))
            for g, p, o in zip(guesses, out["cell_probs"], offsets):
                if g.ok:
                    g.cell_probs, g.cell_offsets, g.cell_decoder = p, o, decoder
        return guesses

    def locate_one(self, image, top_k: int = 5) -> Guess:
        """:meth:`locate` for one photo; raises :class:`ImageReadError` if it cannot be read."""
        guess = self.locate([image], top_k=top_k, num_workers=0)[0]
        if not guess.ok:
            raise ImageReadError(guess.error)
        return guess



"""Load a geotrainr checkpoint and predict from images with nothing else.

:class:`Locator` is the library API behind ``geotrainr locate``: load a checkpoint in one
call, locate paths or PIL images in batches, get :class:`Guess` objects back, and combine
several views of one place with :func:`group`.
"""

from __future__ import annotations

import importlib
import math
import os
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import nn
from torch.utils.data import DataLoader, Dataset

from geotrainr.errors import GeotrainrError


class CheckpointError(GeotrainrError, RuntimeError):
    """A file that is not a readable geotrainr checkpoint (or of the wrong task kind)."""


def read_checkpoint(path: str | os.PathLike) -> dict:
    """The raw checkpoint dict, with a clear error for missing, corrupt or foreign files."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - pickle, zip and EOF errors all mean "corrupt"
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(ckpt, dict) or "geotrainr" not in ckpt or "state_dict" not in ckpt:
        raise CheckpointError(f"{path}: not a geotrainr checkpoint (no task metadata); train one with 'geotrainr fit'")
    return ckpt


def load_model(path: str | os.PathLike, kind: str | None = None, device: str | torch.device = "cpu"):
    """Load a task from a checkpoint, in eval mode, without any weights download.

    Args:
        path: a checkpoint written by ``geotrainr fit``.
        kind: require this task kind (country, coords, distance).
        device: where to put the model.
    """
    ckpt = read_checkpoint(path)
    meta = ckpt["geotrainr"]
    if kind is not None and meta["task"] != kind:
        raise CheckpointError(f"{path}: a {meta['task']} checkpoint, but a {kind} checkpoint is needed")
    module_name, _, cls_name = meta["class_path"].rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), cls_name)
    except (ImportError, AttributeError):
        raise CheckpointError(f"{path}: unknown task class {meta['class_path']}") from None
    hparams = {k: v for k, v in ckpt.get("hyper_parameters", {}).items() if not k.startswith("_")}  # CLI bookkeeping
    hparams.update(countries=meta["countries"], weights=None, pretrained=False, init_from=None)
    if "geocells" in hparams:
        hparams["geocells"] = None  # the checkpoint holds the cells
    model = cls(**hparams)
    try:
        model.on_load_checkpoint(ckpt)
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit the model ({str(e).splitlines()[0]})") from None
    return model.eval().to(device)


def copy_backbone_weights(path: str | os.PathLike, backbone: nn.Module) -> int:
    """Initialise ``backbone`` from the backbone of a checkpoint (the study's task-aware pretraining).

    Returns the number of tensors copied; raises when the backbones do not match.
    """
    ckpt = read_checkpoint(path)
    source = {k[len("backbone.") :]: v for k, v in ckpt["state_dict"].items() if k.startswith("backbone.")}
    target = backbone.state_dict()
    if set(source) != set(target) or any(source[k].shape != target[k].shape for k in target):
        raise CheckpointError(
            f"{path}: its backbone ({ckpt['geotrainr'].get('backbone')}) does not match this task's backbone"
        )
    backbone.load_state_dict(source, strict=True)
    return len(source)


# --- locating photos: the library API behind `geotrainr locate` ---------------------------------------

#: File endings ``locate`` picks up in a folder (any file named explicitly is tried whatever its ending).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")

class ImageListError(GeotrainrError, ValueError):
    """Nothing to locate (an empty folder, no image among the inputs) or an unusable listing."""


class ImageReadError(GeotrainrError, OSError):
    """One photo that cannot be opened or decoded."""


@dataclass(frozen=True)
class CountryProb:
    """One entry of a guess's top-k list."""

    country: str
    probability: float


@dataclass
class Guess:
    """Where one photo (or one group of views) was taken, as a checkpoint sees it.

    Attributes:
        image: the path as given, a PIL image's file name, or the group key.
        country: ISO code of the guessed country. Country, distance and geocell models: the most
            probable class; linear coordinate models: the country the guessed coordinates fall in.
        probability: the model's probability of ``country``; None for linear coordinate models.
        top_k: the k most probable countries (empty for linear coordinate models).
        lat, lon: the guessed coordinates in degrees. Country and distance models guess a
            country and answer with its centre; coordinate models regress them or, with the
            geocell head, answer with a cell's centroid.
        nearest_place: the GeoNames place nearest to (lat, lon), as ``"Name, CC"``.
        nearest_place_km: how far that place is from (lat, lon).
        coordinate_country: the country (lat, lon) falls in (nearest GeoNames place's country).
        error: why the image could not be located; every other field is then None.
        members: the images combined into this guess (multi-view); empty for a single photo.
        true_lat, true_lon, true_country: the truth, where a listing supplied it.
        error_km: great-circle distance from the guess to the truth.
    """

    image: str
    country: str | None = None
    probability: float | None = None
    top_k: list[CountryProb] = field(default_factory=list)
    lat: float | None = None
    lon: float | None = None
    nearest_place: str | None = None
    nearest_place_km: float | None = None
    coordinate_country: str | None = None
    error: str | None = None
    members: list[str] = field(default_factory=list)
    true_lat: float | None = None
    true_lon: float | None = None
    true_country: str | None = None
    error_km: float | None = None
    #: full probability vector over ``classes`` (country, distance and geocell models), for combining views
    probs: np.ndarray | None = field(default=None, repr=False, compare=False)
    classes: tuple[str, ...] | None = field(default=None, repr=False, compare=False)
    #: geocell models: probabilities over the cells, and the model's map from them to (latlon, probs)
    cell_probs: np.ndarray | None = field(default=None, repr=False, compare=False)
    cell_decoder: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]] | None = field(default=None, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def views(self) -> int:
        """How many photos this guess combines."""
        return max(1, len(self.members))

    @property
    def country_name(self) -> str | None:
        from geotrainr.countries import country_table

        c = country_table().get(self.country or "")
        return c.name if c else None

    def set_truth(self, lat: float, lon: float, country: str | None = None) -> None:
        """Record where the photo really was taken; fills ``error_km``."""
        from geotrainr.geo import haversine_km

        self.true_lat, self.true_lon = float(lat), float(lon)
        self.true_country = country or None
        if self.ok and self.lat is not None:
            self.error_km = float(haversine_km(self.lat, self.lon, lat, lon))

    def to_dict(self) -> dict:
        """JSON-ready dict: ``image, country, country_name, probability, top_k, lat, lon, nearest_place, ...``."""
        d = {
            "image": self.image,
            "country": self.country,
            "country_name": self.country_name,
            "probability": _round(self.probability, 4),
            "top_k": [{"country": t.country, "probability": round(t.probability, 4)} for t in self.top_k],
            "lat": _round(self.lat, 5),
            "lon": _round(self.lon, 5),
            "nearest_place": self.nearest_place,
            "nearest_place_km": _round(self.nearest_place_km, 1),
            "coordinate_country": self.coordinate_country,
        }
        if self.members:
            d["views"] = self.views
            d["members"] = list(self.members)
        if self.true_lat is not None:
            d.update(true_lat=_round(self.true_lat, 5), true_lon=_round(self.true_lon, 5), true_country=self.true_country,
                     error_km=_round(self.error_km, 1))
        d["error"] = self.error
        return d

    def to_row(self) -> dict:
        """Flat dict for CSV: ``top_k`` as ``"DE:0.620 AT:0.110"``, members joined by ``|``."""
        d = self.to_dict()
        d["top_k"] = " ".join(f"{t['country']}:{t['probability']:.3f}" for t in d["top_k"])
        if "members" in d:
            d["members"] = "|".join(d["members"])
        return d


def _round(x: float | None, ndigits: int) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(float(x), ndigits)


def pil_to_rgb(im: Image.Image) -> Image.Image:
    """RGB copy of a PIL image, EXIF orientation applied, transparency on white (as :func:`load_rgb`)."""
    im = ImageOps.exif_transpose(im)
    if im.mode == "RGB":
        return im
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        background = Image.new("RGB", im.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return im.convert("RGB")


def open_photo(source, draft_size: int | None = None) -> Image.Image:
    """A path or PIL image as an RGB photo; a one-line :class:`ImageReadError` for anything unreadable."""
    from geotrainr.data.dataset import load_rgb

    if isinstance(source, Image.Image):
        return pil_to_rgb(source)
    path = Path(source)
    try:
        im = load_rgb(path, draft_size)
        im.load()
        return im
    except FileNotFoundError:
        raise ImageReadError(f"{source}: no such file") from None
    except IsADirectoryError:
        raise ImageReadError(f"{source}: a folder, not an image") from None
    except UnidentifiedImageError:
        raise ImageReadError(f"{source}: not an image Pillow can read") from None
    except Exception as e:  # noqa: BLE001 - truncated data, decoder errors, huge images: all "unreadable"
        raise ImageReadError(f"{source}: unreadable image ({type(e).__name__}: {e})") from None


def image_label(source, i: int = 0) -> str:
    """How a photo is named in results: the path as given, or a PIL image's file name."""
    if isinstance(source, Image.Image):
        return getattr(source, "filename", "") or f"<image {i}>"
    return str(source)


def collect_images(inputs: Sequence[str | os.PathLike], recursive: bool = True) -> tuple[list[Path], list[str]]:
    """Expand files and folders into the photos to locate, with notes on what was left out.

    A folder contributes its files with an image ending (:data:`IMAGE_SUFFIXES`), sorted,
    searching subfolders when ``recursive``; other files are counted in a note. A file named
    explicitly is always tried (and reported if unreadable). Raises :class:`ImageListError`
    when nothing at all is left to locate.
    """
    files: list[Path] = []
    notes: list[str] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(q for q in (p.rglob("*") if recursive else p.iterdir()) if q.is_file())
            images = [q for q in found if q.suffix.lower() in IMAGE_SUFFIXES and not q.name.startswith(".")]
            others = len(found) - len(images)
            if others:
                notes.append(f"{p}: skipped {others} file(s) that are not images (by file ending)")
            if not images:
                notes.append(f"{p}: no image files")
            files.extend(images)
        else:
            files.append(p)  # a missing or unreadable file becomes an error of its own
    if not files:
        where = ", ".join(str(i) for i in inputs) or "(no input)"
        raise ImageListError(f"no image files to locate in {where}")
    return files, notes


class _Photos(Dataset):
    """Decodes and transforms photos; a failure is returned, not raised, so the batch goes on."""

    def __init__(self, items: Sequence, transform: Callable, draft_size: int | None):
        self.items, self.transform, self.draft_size = list(items), transform, draft_size

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        try:
            im = open_photo(self.items[i], self.draft_size)
            return i, self.transform(im), None
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
        raise ImageListError(f"unknown device {device!r} (auto, cpu, cuda, cuda:1, ...)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ImageListError(f"device {device!r} asked for, but no CUDA GPU is available here (use auto or cpu)")
    return dev


def _places(lats: np.ndarray, lons: np.ndarray):
    from geotrainr.places import place_index

    return place_index().nearest(lats, lons) if len(lats) else []


class Locator:
    """A trained checkpoint ready to locate photos.

    >>> loc = Locator.from_checkpoint("runs/country/checkpoints/best.ckpt")
    >>> for g in loc.locate(["photo.jpg", "folder_image.png"], top_k=3):
    ...     print(g.image, g.country, g.probability, g.lat, g.lon, g.nearest_place)

    Works with every task kind: country models give probabilities and the
    guessed country's centre, coordinate models give coordinates (and the
    country they fall in), distance models give probabilities over their
    country anchors (a softmax of the negated predicted distances).
    """

    def __init__(self, model: nn.Module, device: str | torch.device | None = None):
        self.device = resolve_device(device)
        self.model = model.eval().to(self.device)
        self.kind: str = model.task_kind
        self.countries: list[str] = list(model.countries)
        self.preprocessing = model.preprocessing
        self._centres = model.class_centres.detach().cpu().numpy()

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device: str | torch.device | None = None, kind: str | None = None) -> Locator:
        """Load a checkpoint written by ``geotrainr fit`` (no weights download, no config).

        Args:
            path: the ``.ckpt`` file.
            device: ``"cuda"``, ``"cpu"``...; default: the GPU when there is one.
            kind: require this task kind (country, coords, distance).
        """
        return cls(load_model(path, kind=kind, device="cpu"), device=device)

    def __repr__(self) -> str:
        return f"Locator({self.kind}, {len(self.countries)} countries, {self.preprocessing.image_size} px, {self.device})"

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
        progress: Callable[[int], None] | None = None,
    ) -> tuple[np.ndarray, np.ndarray | None, dict[int, str]]:
        """Batched forward pass over photos (paths or PIL images).

        Returns ``latlon`` (N, 2; NaN where an image failed), ``probs`` (N, C or None
        for linear coordinate models) and ``{position: error message}`` of the failures.
        ``num_workers`` decoding processes (default: some for large lists of files).
        ``progress`` is called with the number of images done after each batch.
        """
        out = self._predict(images, batch_size, num_workers, progress)
        return out["latlon"], out.get("probs"), out["errors"]

    def _predict(self, images: Sequence, batch_size: int, num_workers: int | None,
                 progress: Callable[[int], None] | None) -> dict:
        """:meth:`predict` with every array the model gives (``cell_probs`` of geocell models too)."""
        from geotrainr.data.dataset import build_transform

        images = list(images)
        n = len(images)
        pre = self.preprocessing
        if num_workers is None:
            paths_only = not any(isinstance(im, Image.Image) for im in images)
            num_workers = self._default_workers() if paths_only and n > 2 * batch_size else 0
        loader = DataLoader(
            _Photos(images, build_transform(pre, train=False), draft_size=2 * pre.image_size),
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
                    for key in ("probs", "cell_probs"):
                        if key in out:
                            if key not in result:
                                result[key] = np.full((n, out[key].shape[1]), np.nan, dtype=np.float32)
                            result[key][idx] = out[key].float().cpu().numpy()
                done += len(idx) + len(failed)
                if progress is not None:
                    progress(done)
        return result

    def _cell_decoder(self) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
        """Averaged cell probabilities of several views -> (latlon, country probabilities), as the model decodes."""
        model = self.model

        def decode(cell_probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            with torch.inference_mode():
                latlon, probs = model.decode_cells(torch.from_numpy(np.asarray(cell_probs, np.float32)).reshape(1, -1).to(self.device))
            return latlon[0].double().cpu().numpy(), probs[0].float().cpu().numpy()

        return decode

    # --- guesses -------------------------------------------------------------------------------

    def locate(
        self,
        images: Sequence | str | os.PathLike | Image.Image,
        top_k: int = 5,
        batch_size: int = 32,
        num_workers: int | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> list[Guess]:
        """One :class:`Guess` per photo, in input order; unreadable photos get ``error`` set instead of raising.

        Args:
            images: paths and/or PIL images (a single one is fine too).
            top_k: how many countries to list per photo.
            batch_size: photos per forward pass.
            num_workers: decoding processes (default: some for large lists of files).
            progress: called with the number of photos done after each batch.
        """
        if isinstance(images, (str, os.PathLike, Image.Image)):
            images = [images]
        images = list(images)
        out = self._predict(images, batch_size, num_workers, progress)
        labels = [image_label(im, i) for i, im in enumerate(images)]
        guesses = make_guesses(labels, out["latlon"], out.get("probs"), out["errors"], self.countries, top_k)
        if "cell_probs" in out:
            decoder = self._cell_decoder()
            for g, p in zip(guesses, out["cell_probs"]):
                if g.ok:
                    g.cell_probs, g.cell_decoder = p, decoder
        return guesses

    def locate_one(self, image, top_k: int = 5) -> Guess:
        """:meth:`locate` for one photo; raises :class:`ImageReadError` if it cannot be read."""
        guess = self.locate([image], top_k=top_k, num_workers=0)[0]
        if not guess.ok:
            raise ImageReadError(guess.error)
        return guess


def make_guesses(
    labels: Sequence[str],
    latlon: np.ndarray,
    probs: np.ndarray | None,
    errors: dict[int, str],
    countries: Sequence[str],
    top_k: int = 5,
) -> list[Guess]:
    """Turn raw predictions into :class:`Guess` objects: top-k, nearest place, country of the coordinates."""
    classes = tuple(countries)
    ok = [i for i in range(len(labels)) if i not in errors and not np.isnan(latlon[i]).any()]
    places = dict(zip(ok, _places(latlon[ok, 0], latlon[ok, 1])))
    k = max(0, min(int(top_k), len(classes)))
    guesses = []
    for i, label in enumerate(labels):
        if i not in places:
            guesses.append(Guess(image=label, error=errors.get(i, f"{label}: no prediction")))
            continue
        place = places[i]
        g = Guess(
            image=label,
            lat=float(latlon[i, 0]),
            lon=float(latlon[i, 1]),
            nearest_place=f"{place.name}, {place.country}",
            nearest_place_km=place.distance_km,
            coordinate_country=place.country,
        )
        if probs is not None:
            p = probs[i]
            order = np.argsort(-p, kind="stable")
            g.probs, g.classes = p, classes
            g.country, g.probability = classes[order[0]], float(p[order[0]])
            g.top_k = [CountryProb(classes[j], float(p[j])) for j in order[:k]]
        else:
            g.country = place.country
        guesses.append(g)
    return guesses


# --- multi-view -------------------------------------------------------------------------------------

#: ``abc_90`` / ``abc-2`` / ``abc_0.5``: a view suffix of at most 3 digits, below 360 (a heading or a view number).
#: Four-digit camera counters (``IMG_1234``) are left alone so that unrelated photos do not merge.
_VIEW_SUFFIX = re.compile(r"^(?P<stem>.+?)[_-](?P<n>\d{1,3}(?:\.\d+)?)$")


def auto_group_key(image: str | os.PathLike) -> str:
    """Group key of a file: its stem without a trailing ``_<heading>``/``-<n>``/``_<n>``, in its folder.

    ``pano/abc_0.jpg`` and ``pano/abc_90.jpg`` give ``pano/abc``; ``IMG_1234.jpg`` stays ``IMG_1234``.
    """
    p = Path(image)
    stem = p.stem
    m = _VIEW_SUFFIX.match(stem)
    if m and float(m["n"]) < 360:
        stem = m["stem"]
    return stem if str(p.parent) in ("", ".") else str(p.parent / stem)


def group(guesses: Sequence[Guess], keys: Sequence[str], top_k: int | None = None) -> list[Guess]:
    """Combine the guesses sharing a key into one guess per key (in order of first appearance).

    Country and distance models: the probabilities of the views are averaged (PIGEON found
    plain averaging of four views best) and the guess is the top class's centre. Geocell
    models: the cell probabilities are averaged and decoded as the model does. Linear
    coordinate models: the coordinates are combined by :func:`geotrainr.geo.spherical_mean`. Views that
    failed are left out; a key whose views all failed keeps an error. Truth, when every
    view has it, is carried over (their spherical mean).
    """
    from geotrainr.countries import get_country
    from geotrainr.geo import spherical_mean

    if len(keys) != len(guesses):
        raise ValueError(f"{len(guesses)} guesses but {len(keys)} keys")
    buckets: dict[str, list[Guess]] = {}
    for g, key in zip(guesses, keys):
        buckets.setdefault(str(key), []).append(g)
    labels, latlon, probs_rows, errors, classes, cells = [], [], [], {}, None, {}
    for n, (key, members) in enumerate(buckets.items()):
        labels.append(key)
        good = [g for g in members if g.ok]
        if not good:
            errors[n] = f"{key}: none of its {len(members)} view(s) could be read"
            latlon.append((np.nan, np.nan))
            probs_rows.append(None)
            continue
        if good[0].cell_probs is not None:
            classes = good[0].classes
            cell_probs = np.mean(np.stack([g.cell_probs for g in good]), axis=0)
            ll, p = good[0].cell_decoder(cell_probs)
            latlon.append(tuple(ll.tolist()))
            probs_rows.append(p)
            cells[n] = (cell_probs, good[0].cell_decoder)
        elif good[0].probs is not None:
            classes = good[0].classes
            p = np.mean(np.stack([g.probs for g in good]), axis=0)
            c = get_country(classes[int(np.argmax(p))])
            latlon.append((c.lat, c.lon))
            probs_rows.append(p)
        else:
            latlon.append(tuple(spherical_mean(torch.tensor([[g.lat, g.lon] for g in good])).tolist()))
            probs_rows.append(None)
    if top_k is None:
        top_k = max((len(g.top_k) for g in guesses), default=5)
    probs = None
    if classes is not None:
        probs = np.stack([p if p is not None else np.full(len(classes), np.nan, dtype=np.float32) for p in probs_rows])
    out = make_guesses(labels, np.asarray(latlon, dtype=float), probs, errors, classes or (), top_k)
    for n, (g, members) in enumerate(zip(out, buckets.values())):
        g.members = [m.image for m in members]
        if n in cells and g.ok:
            g.cell_probs, g.cell_decoder = cells[n]
        truth = [m for m in members if m.true_lat is not None]
        if truth and len(truth) == len(members):
            lat, lon = spherical_mean(torch.tensor([[m.true_lat, m.true_lon] for m in truth])).tolist()
            countries = Counter(m.true_country for m in truth if m.true_country)
            g.set_truth(lat, lon, countries.most_common(1)[0][0] if countries else None)
    return out


# --- listings: truth and group fields from a CSV ------------------------------------------------------


def read_listing(csv_path: str | os.PathLike):
    """A CSV of photos (``path`` or ``image_path``, optional ``lat``, ``lon``, ``country`` and any other columns).

    Paths are read relative to the CSV's folder; the returned DataFrame has an absolute
    ``path`` column. Used for truth (maps, error columns) and for ``--group-by FIELD``.
    """
    import pandas as pd

    csv_path = Path(csv_path)
    try:
        df = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except FileNotFoundError:
        raise ImageListError(f"{csv_path}: no such CSV file") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise ImageListError(f"{csv_path}: not a readable CSV ({str(e).splitlines()[0]})") from None
    if "path" not in df.columns and "image_path" in df.columns:
        df = df.rename(columns={"image_path": "path"})
    if "path" not in df.columns:
        raise ImageListError(f"{csv_path}: needs a 'path' (or 'image_path') column; it has {', '.join(df.columns)}")
    if len(df) == 0:
        raise ImageListError(f"{csv_path}: no rows")
    base = csv_path.resolve().parent
    df["path"] = [str((base / p).resolve()) if p else "" for p in df["path"]]
    for col in ("lat", "lon"):
        if col in df.columns:
            values = pd.to_numeric(df[col].replace("", np.nan), errors="coerce")
            bad = np.flatnonzero(values.isna().to_numpy() & (df[col] != "").to_numpy())
            if len(bad):
                raise ImageListError(f"{csv_path} row {bad[0] + 1}: {col} {df[col].iloc[bad[0]]!r} is not a number")
            df[col] = values
    if "country" in df.columns:
        df["country"] = df["country"].str.strip().str.upper()
    return df


def match_listing(images: Sequence[str | os.PathLike], listing) -> list[int | None]:
    """Row of ``listing`` (from :func:`read_listing`) for each image: same file, else the only row with that file name."""
    by_path = {p: i for i, p in enumerate(listing["path"])}
    names = Counter(Path(p).name for p in listing["path"])
    by_name = {Path(p).name: i for i, p in enumerate(listing["path"]) if names[Path(p).name] == 1}
    rows = []
    for im in images:
        p = Path(im)
        i = by_path.get(str(p.resolve()))
        rows.append(i if i is not None else by_name.get(p.name))
    return rows


def attach_truth(guesses: Sequence[Guess], rows: Sequence[int | None], listing) -> int:
    """Copy lat/lon/country of matched listing rows into the guesses; returns how many got a truth."""
    if "lat" not in listing.columns or "lon" not in listing.columns:
        return 0
    n = 0
    for g, r in zip(guesses, rows):
        if r is None:
            continue
        lat, lon = listing["lat"].iloc[r], listing["lon"].iloc[r]
        if np.isnan(lat) or np.isnan(lon):
            continue
        country = listing["country"].iloc[r] if "country" in listing.columns else None
        g.set_truth(float(lat), float(lon), country or None)
        n += 1
    return n

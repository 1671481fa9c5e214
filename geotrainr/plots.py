"""The pictures of an evaluation: error CDF, confusion matrix, per-country accuracy, photo grids (maps: :mod:`geotrainr.maps`).

Each picture has a builder (``map_figure``, ``confusion_figure``, ``photo_grid_figure``, ...) that
returns a ``matplotlib.figure.Figure``; ``plot_*`` write one to a file (``report``, ``locate --map``)
and :mod:`geotrainr.figures` logs the same figures while training, so both show the same pictures.
Figures are built with ``Figure`` directly (no pyplot), so drawing needs no display, leaves no
global state behind in notebooks and works under any backend. Files are written atomically (temp
file + ``os.replace``): a reader never sees half a PNG.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from geotrainr.files import atomic_path
from geotrainr.geo import ACCURACY_THRESHOLDS_KM

DPI = 110


def _save(fig: Figure, target, fmt: str, **kwargs) -> None:
    fig.savefig(target, format=fmt, dpi=fig.dpi, bbox_inches="tight", pad_inches=0.15, **kwargs)


def save_figure(fig: Figure, path: str | os.PathLike) -> Path:
    """Write ``fig`` to ``path`` atomically; the format follows the file ending (png, pdf, svg, jpg)."""
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower() or "png"
    with atomic_path(path) as tmp:
        _save(fig, tmp, fmt)
    return path


def figure_png(fig: Figure) -> bytes:
    """``fig`` as the PNG bytes :func:`save_figure` would write (for web pages, notebooks)."""
    buf = io.BytesIO()
    _save(fig, buf, "png")
    return buf.getvalue()


def figure_pixels(fig: Figure) -> np.ndarray:
    """``fig`` as the (H, W, 3) uint8 pixels of the picture :func:`save_figure` would write (for loggers,
    which encode pictures themselves: an uncompressed PNG in between saves one compression)."""
    from PIL import Image

    buf = io.BytesIO()
    _save(fig, buf, "png", pil_kwargs={"compress_level": 0})
    buf.seek(0)
    with Image.open(buf) as im:
        return np.asarray(im.convert("RGB"))


def save_image(image, path: str | os.PathLike) -> Path:
    """Write a PIL image atomically; the format follows the file ending."""
    path = Path(path)
    fmt = {"jpg": "JPEG", "jpeg": "JPEG", "png": "PNG", "webp": "WEBP", "tif": "TIFF", "tiff": "TIFF", "bmp": "BMP"}.get(
        path.suffix.lstrip(".").lower(), "PNG"
    )
    with atomic_path(path) as tmp:
        image.convert("RGB").save(tmp, format=fmt)
    return path


# --- evaluation pictures ----------------------------------------------------------------------------


def error_cdf_figure(
    err_km: Sequence[float],
    thresholds_km: Sequence[float] = ACCURACY_THRESHOLDS_KM,
    title: str | None = None,
) -> Figure:
    """Cumulative distribution of great-circle errors, log km axis, marks at the accuracy thresholds."""
    err = np.sort(np.asarray(err_km, float)[np.isfinite(np.asarray(err_km, float))])
    fig = Figure(figsize=(8, 4.8), dpi=DPI)
    ax = fig.add_axes((0.1, 0.13, 0.85, 0.77))
    names = {1.0: "street", 25.0: "city", 200.0: "region", 750.0: "country", 2500.0: "continent"}
    lo = 0.1
    if len(err):
        y = np.arange(1, len(err) + 1) / len(err)
        ax.step(np.maximum(err, lo), y, where="post", color="#1f5fbf", lw=2, label=f"{len(err)} images")
    for t in thresholds_km:
        frac = float((err <= t).mean()) if len(err) else 0.0
        ax.axvline(t, color="#888888", ls="--", lw=1)
        ax.text(t * 1.08, 0.02, f"{t:g} km\n{names.get(float(t), '')}\n{100 * frac:.0f}%", fontsize=8, color="#333333")
    ax.set_xscale("log")
    ax.set_xlim(lo, 20100)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("great-circle error (km, log scale)")
    ax.set_ylabel("fraction of images within")
    ax.grid(alpha=0.3, which="both")
    if len(err):
        ax.legend(loc="upper left", fontsize=8)
    ax.set_title(title or "Error distribution", fontsize=11)
    return fig


def plot_error_cdf(
    err_km: Sequence[float],
    out: str | os.PathLike,
    thresholds_km: Sequence[float] = ACCURACY_THRESHOLDS_KM,
    title: str | None = None,
) -> Path:
    """:func:`error_cdf_figure` written to ``out``."""
    return save_figure(error_cdf_figure(err_km, thresholds_km, title), out)


def confusion_matrix(true: Sequence[str], pred: Sequence[str], rows: Sequence[str],
                     columns: Sequence[str] | None = None) -> np.ndarray:
    """Counts (len(rows), len(columns)); pairs with a label outside them are left out."""
    columns = rows if columns is None else columns
    r = {c: i for i, c in enumerate(rows)}
    k = {c: i for i, c in enumerate(columns)}
    m = np.zeros((len(rows), len(columns)), dtype=np.int64)
    for t, p in zip(true, pred):
        if t in r and p in k:
            m[r[t], k[p]] += 1
    return m


def most_confused(counts: np.ndarray, k: int) -> list[int]:
    """The ``k`` classes most involved in confusions (wrong guesses of them plus wrong guesses as them),
    most first; classes never confused fill in by image count, classes without images are left out."""
    counts = np.asarray(counts)
    wrong = counts - np.diag(np.diag(counts))
    involved = wrong.sum(0) + wrong.sum(1)
    seen = counts.sum(0) + counts.sum(1)
    order = np.lexsort((-seen, -involved))  # by confusions, then by images
    return [int(i) for i in order[:k] if seen[i] > 0]


def confusion_figure(
    counts: np.ndarray,
    classes: Sequence[str],
    columns: Sequence[str] | None = None,
    title: str | None = None,
    row_totals: Sequence[int] | None = None,
) -> Figure:
    """Confusion matrix of countries from counts (rows: true ``classes``, columns: guessed ``columns``).

    Each row is normalised by ``row_totals`` (default: its sum), so a matrix cut down to a few
    countries can still show fractions of all of a true country's images.
    """
    classes = list(classes)
    columns = list(columns) if columns is not None else classes
    counts = np.asarray(counts)
    rows = counts.sum(1, keepdims=True) if row_totals is None else np.asarray(row_totals).reshape(-1, 1)
    norm = np.divide(counts, rows, out=np.zeros(counts.shape, float), where=rows > 0)
    nr, nc = len(classes), len(columns)
    n = max(nr, nc)
    cell = 0.3 if n > 12 else 0.5
    height = min(18.0, max(4.0, cell * nr + 1.8))
    width = min(20.0, max(5.0, cell * nc + 2.8))
    fig = Figure(figsize=(width, height), dpi=DPI)
    ax = fig.add_axes((0.1, 0.1, 0.78, 0.82))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1, interpolation="nearest", aspect="auto")
    fs = 9 if n <= 20 else max(5, int(9 - (n - 20) / 8))
    ax.set_xticks(range(nc), columns, rotation=90, fontsize=fs)
    ax.set_yticks(range(nr), classes, fontsize=fs)
    ax.set_xlabel("guessed country")
    ax.set_ylabel("true country")
    if n <= 20:
        for i in range(nr):
            for j in range(nc):
                if counts[i, j]:
                    ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=7,
                            color="white" if norm[i, j] > 0.5 else "black")
    cax = fig.add_axes((0.9, 0.1, 0.025, 0.82))
    fig.colorbar(im, cax=cax, label="fraction of the true country's images")
    ax.set_title(title or "Confusion matrix (rows: true country, normalised)", fontsize=11)
    return fig


def plot_confusion(
    true: Sequence[str],
    pred: Sequence[str],
    out: str | os.PathLike,
    classes: Sequence[str] | None = None,
    columns: Sequence[str] | None = None,
    title: str | None = None,
) -> Path:
    """Confusion matrix of countries, each row normalised by its true country's count.

    ``classes`` are the rows (true countries) and, unless ``columns`` is given, the columns
    (guessed countries); default: every label seen, sorted.
    """
    classes = list(classes) if classes is not None else sorted(set(true) | set(pred))
    columns = list(columns) if columns is not None else classes
    return save_figure(confusion_figure(confusion_matrix(true, pred, classes, columns), classes, columns, title), out)


def per_country_figure(
    countries: Sequence[str],
    accuracy: Sequence[float],
    counts: Sequence[int],
    title: str | None = None,
) -> Figure:
    """Horizontal bars of accuracy per true country (best first), each labelled with its image count."""
    order = np.argsort(-np.asarray(accuracy, float), kind="stable")
    n = len(countries)
    fig = Figure(figsize=(7.5, max(2.5, 0.22 * n + 1.2)), dpi=DPI)
    ax = fig.add_axes((0.2, 0.6 / max(2.5, 0.22 * n + 1.2), 0.72, 1 - 1.1 / max(2.5, 0.22 * n + 1.2)))
    y = np.arange(n)
    acc = np.asarray(accuracy, float)[order]
    ax.barh(y, acc, color="#1f5fbf")
    ax.set_yticks(y, [f"{countries[i]} (n={counts[i]})" for i in order], fontsize=8 if n <= 30 else 6)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("accuracy (top-1)")
    for yi, a in zip(y, acc):
        inside = a > 0.88  # no room to the right: write it in the bar
        ax.text(a - 0.01 if inside else a + 0.01, yi, f"{a:.2f}", va="center", ha="right" if inside else "left",
                fontsize=7, color="white" if inside else "black")
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(title or "Accuracy per true country", fontsize=11)
    return fig


def plot_per_country_accuracy(
    countries: Sequence[str],
    accuracy: Sequence[float],
    counts: Sequence[int],
    out: str | os.PathLike,
    title: str | None = None,
) -> Path:
    """:func:`per_country_figure` written to ``out``."""
    return save_figure(per_country_figure(countries, accuracy, counts, title), out)


# --- photos --------------------------------------------------------------------------------------------


def photo_grid_figure(
    images: Sequence[np.ndarray],
    true: Sequence[str | None],
    guessed: Sequence[str | None],
    names: Sequence[str] | None = None,
    title: str | None = None,
    columns: int | None = None,
    cell_in: float = 2.2,
) -> Figure:
    """Photos in a grid, each captioned with its true and guessed label (green when they agree, red when not).

    The photos are laid into one mosaic and drawn as one image (one axes per photo costs seconds).

    Args:
        images: (H, W, 3) uint8 arrays.
        true, guessed: a label per photo (None: unknown).
        names: a short name per photo (e.g. the file), written under it.
        title: figure title.
        columns: photos per row; default: a near-square grid.
        cell_in: width of one photo's cell in inches (at 110 dpi).
    """
    n = len(images)
    cols = max(1, min(n, columns or int(np.ceil(np.sqrt(max(n, 1))))))
    rows = max(1, int(np.ceil(n / cols)))
    h = max([np.asarray(im).shape[0] for im in images] or [64])
    w = max([np.asarray(im).shape[1] for im in images] or [64])
    top, bottom, gap = int(np.ceil(h * 0.16)), int(np.ceil(h * 0.1)) if names is not None else 0, int(np.ceil(w * 0.05))
    ch, cw = top + h + bottom, w + gap
    mosaic = np.full((rows * ch, cols * cw, 3), 255, np.uint8)
    for i, im in enumerate(images):
        im = np.asarray(im)[..., :3]
        y, x = (i // cols) * ch + top, (i % cols) * cw + gap // 2
        mosaic[y : y + im.shape[0], x : x + im.shape[1]] = im
    title_in = 0.45 if title else 0.05
    width = cols * cell_in
    height = width * mosaic.shape[0] / mosaic.shape[1]
    fig = Figure(figsize=(width, height + title_in), dpi=DPI)
    ax = fig.add_axes((0, 0, 1, height / (height + title_in)))
    ax.imshow(mosaic, interpolation="nearest")
    ax.axis("off")
    for i in range(n):
        x, y = (i % cols) * cw + cw / 2, (i // cols) * ch
        t, g = true[i], guessed[i]
        colour = "#888888" if t is None or g is None else ("#1a9641" if t == g else "#d7191c")
        ax.text(x, y + top * 0.85, f"true {t or '?'}  guess {g or '?'}", ha="center", va="bottom", fontsize=9,
                color=colour, fontweight="bold")
        if names is not None and names[i]:
            ax.text(x, y + top + h + bottom * 0.15, str(names[i])[:28], ha="center", va="top", fontsize=6, color="#444444")
    if title:
        fig.suptitle(title, fontsize=11, y=1 - 0.1 / (height + title_in))
    return fig



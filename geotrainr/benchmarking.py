"""Standard geolocation benchmarks: Im2GPS3k, YFCC4k and the OSV-5M test set, scored the way papers do.

``geotrainr report MODEL --benchmark NAME --data DIR`` reads the benchmark in the layout it is
published in (no dataset ships with geotrainr; docs/benchmarks.md says where each lives), scores
the model with :func:`geotrainr.report.evaluate`, and sets the standard table (accuracy within
1, 25, 200, 750 and 2500 km, median km, GeoScore, country accuracy) beside published figures,
each with its source (:data:`PUBLISHED`).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from geotrainr.data.index import validate_index, write_index
from geotrainr.data.sources import reader
from geotrainr.errors import GeotrainrError
from geotrainr.report import evaluate

#: benchmark -> (index source format, the split of it that is the benchmark)
BENCHMARKS = {"im2gps3k": ("im2gps3k", "test"), "yfcc4k": ("yfcc4k", "test"), "osv5m-test": ("osv5m", "test")}

#: the standard table's columns: metric name -> heading
STANDARD_COLUMNS = {
    "acc_1km": "1 km", "acc_25km": "25 km", "acc_200km": "200 km", "acc_750km": "750 km", "acc_2500km": "2500 km",
    "err_km_median": "median km", "geoscore": "GeoScore", "acc1": "country",
}


@dataclass(frozen=True)
class Published:
    """A published result on a benchmark: percentages (accuracy within X km, country), km, GeoScore points."""

    method: str
    figures: dict[str, float]
    source: str


#: Published results, read from the papers' tables (see each source). Percentages as printed there.
_KM = ("acc_1km", "acc_25km", "acc_200km", "acc_750km", "acc_2500km")
_G3 = "G3 (Jia et al., arXiv 2405.14702), Table 1"
_IMG2LOC = "Img2Loc (Zhou et al., arXiv 2403.19584), Table 1"


def _km(*values: float | None) -> dict[str, float]:
    """Accuracies within 1, 25, 200, 750 and 2500 km, as printed (None: not reported)."""
    return {k: v for k, v in zip(_KM, values) if v is not None}


PUBLISHED: dict[str, list[Published]] = {
    "im2gps3k": [
        Published("GeoCLIP", _km(14.11, 34.47, 50.65, 69.67, 83.82), f"{_IMG2LOC}; {_G3}"),
        Published("PIGEOTTO", _km(11.3, 36.7, 53.8, 72.4, 85.3), f"{_G3} (row \"PIGEON\")"),
        Published("StreetCLIP (zero-shot)", _km(None, 22.4, 37.4, 61.3, 80.4),
                  "StreetCLIP model card, huggingface.co/geolocal/StreetCLIP"),
    ],
    "yfcc4k": [
        Published("GeoCLIP", _km(9.59, 19.31, 32.63, 55.0, 74.69), f"{_IMG2LOC}; {_G3} (reproduced by those authors)"),
        Published("PIGEOTTO", _km(10.4, 23.7, 40.6, 62.2, 77.7), f"{_G3} (row \"PIGEON\")"),
    ],
    "osv5m-test": [
        Published("OSV-5M baseline", {"geoscore": 3361, "acc1": 68.0},
                  "osv5m/baseline model card, huggingface.co/osv5m/baseline"),
    ],
}


class BenchmarkError(GeotrainrError, ValueError):
    """A benchmark that is unknown or whose data cannot be read."""


def benchmark_index(name: str, data: str | os.PathLike, workdir: str | os.PathLike,
                    images: str | os.PathLike | None = None, columns: dict[str, str] | None = None) -> tuple[Path, list]:
    """An index of benchmark ``name`` read from ``data`` (its published layout), written in ``workdir``.

    Returns the index path and the items left out (id without an image, bad coordinates).
    """
    if name not in BENCHMARKS:
        raise BenchmarkError(f"unknown benchmark {name!r}; use one of {', '.join(BENCHMARKS)}")
    fmt, split = BENCHMARKS[name]
    rows = reader(fmt)(data, workdir, columns, images)
    df = rows.frame[rows.frame["split"] == split] if "split" in rows.frame.columns else rows.frame
    if len(df) == 0:
        raise BenchmarkError(f"{data}: no {split} rows with an image for {name}")
    df = validate_index(df.assign(split="test").reset_index(drop=True))
    return write_index(df, Path(workdir) / "index.parquet", image_root=rows.root), list(rows.skipped)


def run_benchmark(model, name: str, data: str | os.PathLike, images: str | os.PathLike | None = None,
                  columns: dict[str, str] | None = None, **evaluate_kwargs):
    """Evaluate ``model`` (checkpoint, exported folder, Hub id or Locator) on a benchmark; returns the Evaluation."""
    with tempfile.TemporaryDirectory(prefix=f"geotrainr-{name}-") as tmp:
        index, skipped = benchmark_index(name, data, tmp, images, columns)
        ev = evaluate(model, index=index, split="test", **evaluate_kwargs)
    ev.index = f"{name} ({data})"
    n = len(ev.records)
    if skipped:
        ev.notes.append(f"{len(skipped)} item(s) of {name} left out (no image or unusable coordinates), {n} scored")
    if "acc1" in ev.metrics:
        in_classes = sum(r.true_country in ev.countries for r in ev.records)
        ev.notes.append(f"country accuracy counts the {in_classes} of {n} images whose country is in the model's class list")
    return ev


def _cell(name: str, value: float | None) -> str:
    if value is None:
        return "—"
    if name == "err_km_median":
        return f"{value:,.0f}"
    if name == "geoscore":
        return f"{value:,.0f}"
    return f"{value:.1f}"


def standard_table(ev, name: str, label: str = "this model") -> str:
    """The standard table (Markdown): this model's row, then the published rows with their sources."""
    ours = {k: (100 * v if k.startswith("acc") else v) for k, v in ev.metrics.items() if k in STANDARD_COLUMNS}
    lines = ["| method | " + " | ".join(STANDARD_COLUMNS.values()) + " |",
             "| --- | " + " | ".join("---:" for _ in STANDARD_COLUMNS) + " |",
             f"| **{label}** | " + " | ".join(_cell(k, ours.get(k)) for k in STANDARD_COLUMNS) + " |"]
    published = PUBLISHED.get(name, [])
    for p in published:
        lines.append(f"| {p.method} | " + " | ".join(_cell(k, p.figures.get(k)) for k in STANDARD_COLUMNS) + " |")
    lines.append("")
    lines.append("Accuracies in %, within each distance of the truth; country: top-1 country accuracy; "
                 "GeoScore: mean of 5000 exp(-d / 1492.7 km).")
    if published:
        lines.append("")
        lines += [f"- {p.method}: {p.source}" for p in published]
    return "\n".join(lines)


__all__ = ["BENCHMARKS", "PUBLISHED", "Published", "BenchmarkError", "STANDARD_COLUMNS", "benchmark_index",
           "run_benchmark", "standard_table"]

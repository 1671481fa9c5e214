"""Evaluation report of a checkpoint on an index split: metrics, pictures and one Markdown page.

``evaluate`` runs the model over the split (with the checkpoint's own
preprocessing) and computes the logged metric names of the design (``acc1``,
``err_km_median``, ``acc_25km``, ``geoscore``, ...). ``write_report`` draws the
pictures with :mod:`geotrainr.plots` and ties them together in ``report.md``:

- ``error_cdf.png``: cumulative great-circle error with the 1/25/200/750/2500 km marks,
- ``map.png``: true and guessed points joined by lines (the study's figure 9),
- ``confusion.png``: countries, each row normalised by its true country,
- ``per_country.png``: top-1 accuracy per true country,
- ``predictions.csv`` and ``metrics.json``: the numbers behind them.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from geotrainr import maps, plots
from geotrainr.data.datamodule import GeoDataModule
from geotrainr.data.dataset import collate_skip
from geotrainr.progress import ProgressCallback
from geotrainr.errors import GeotrainrError
from geotrainr.files import write_text_atomic
from geotrainr.locator import Locator
from geotrainr.metrics import country_accuracy, metrics_table
from geotrainr.predictions import make_guesses, write_records

__all__ = ["Evaluation", "ReportError", "evaluate", "make_report", "write_report"]

class ReportError(GeotrainrError, ValueError):
    """The report cannot be made (unknown or empty split, unusable index or output folder)."""


@dataclass
class Evaluation:
    """Per-image prediction records of a model on one split, and their metrics.

    ``records`` are :class:`~geotrainr.predictions.Guess` objects with the truth set (the schema
    ``locate`` and ``predict`` write too); ``frame`` is the same as a table.
    """

    kind: str
    countries: list[str]
    records: list
    metrics: dict[str, float]
    index: str
    split: str
    skipped: int = 0
    notes: list[str] = field(default_factory=list)
    description: str = ""
    guess_note: str = ""

    @property
    def frame(self) -> pd.DataFrame:
        """One row per image: the records' columns (``image, country, probability, lat, lon, true_*, error_km, correct``)."""
        rows = [r.to_row() for r in self.records]
        frame = pd.DataFrame(rows)
        frame["correct"] = frame["correct"].fillna(False).astype(bool) if "correct" in frame else False
        return frame

    def per_country(self) -> pd.DataFrame:
        """Images, top-1 accuracy and median error per true country (most images first)."""
        f = self.frame
        f = f[f["true_country"].notna()]
        g = f.groupby("true_country")
        out = pd.DataFrame({"images": g.size(), "accuracy": g["correct"].mean(), "median_km": g["error_km"].median()})
        return out.sort_values(["images", "accuracy"], ascending=[False, False])


def evaluate(
    checkpoint,
    index: str | os.PathLike = "demo",
    split: str = "val",
    batch_size: int = 64,
    num_workers: int | None = None,
    device: str | torch.device | None = None,
    progress: ProgressCallback | None = None,
    top_k: int = 5,
    runtime: str = "torch",
) -> Evaluation:
    """Run a model over ``split`` of an index and score it with the task's own metrics.

    Args:
        checkpoint: a ``.ckpt`` path, an exported folder or hub id, or a Locator.
        index: parquet index, shard folder or ``"demo"``.
        split: train, val, test or all (test falls back to val when the index has no test rows).
        batch_size: images per forward pass.
        num_workers: decoding processes (default: half the CPU cores, at most 4).
        device: default: the GPU when there is one.
        progress: called with (images done, total) after each batch.
        top_k: countries listed per record.
        runtime: torch, or onnx (onnxruntime; an exported folder with model.onnx).
    """
    loc = checkpoint if isinstance(checkpoint, Locator) else Locator.load(checkpoint, device=device, runtime=runtime)
    model = loc.model
    if num_workers is None:
        num_workers = min(4, (os.cpu_count() or 1) // 2)
    if split not in ("train", "val", "test", "all"):
        raise ReportError(f"unknown split {split!r}; use train, val, test or all")
    dm = GeoDataModule(index=str(index), countries=loc.countries, batch_size=batch_size, num_workers=num_workers, augment=False)
    dm.set_preprocessing(loc.preprocessing)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*NumPy array is not writable.*")
        dm.setup()
        ds = dm.dataset(split)
    n = len(ds)
    if n == 0:
        raise ReportError(f"{dm.where}: the {split} split is empty")
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_skip,
                                         pin_memory=loc.device.type == "cuda")
    metrics = {k: m.to(loc.device) for k, m in model.new_metrics().items()}
    rows, latlon, probs, skipped, done = [], [], [], 0, 0
    with torch.inference_mode():
        for batch in loader:
            skipped += int(batch.get("skipped", 0))
            done += int(batch.get("skipped", 0))
            if "image" not in batch:
                continue
            batch = {k: v.to(loc.device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            out = model.predict_latlon(batch["image"])
            model.update_metrics(metrics, out, batch)
            rows.append(batch["index"].cpu().numpy())
            latlon.append(out["latlon"].double().cpu().numpy())
            if "probs" in out:
                probs.append(out["probs"].float().cpu().numpy())
            done += len(batch["index"])
            if progress is not None:
                progress(done, n)
    if not rows:
        raise ReportError(f"{dm.where}: none of the {n} images of the {split} split could be read")
    idx = np.concatenate(rows)
    values = {k.split("/")[-1]: float(v) for k, v in model.compute_metrics(metrics).items()}
    records = make_guesses([ds.label(i) for i in idx], np.concatenate(latlon), np.concatenate(probs) if probs else None,
                           {}, loc.countries, top_k)
    truth = ds.frame.iloc[idx]
    for r, lat, lon, country in zip(records, truth["lat"], truth["lon"], truth["country"].astype(str).str.upper()):
        r.set_truth(float(lat), float(lon), country)
    if "acc1" not in values and len(loc.countries) > 1:  # a task without a country head still guesses a country
        values.update(country_accuracy([r.true_country for r in records], [r.country for r in records]))
    notes = []
    if "source" in ds.frame.columns and (ds.frame["source"] == "bluemarble").any() or str(index) == "demo":
        notes.append("Data: the offline demo set, NASA Blue Marble patches around GeoNames places: an aerial "
                     "stand-in for street photos, so these numbers say nothing about street imagery.")
    elif "source" in ds.frame.columns and (ds.frame["source"] == "relief").any() or str(index) == "demo-relief":
        notes.append("Data: the offline relief set, shaded-relief map patches around GeoNames places: an aerial "
                     "stand-in for street photos, so these numbers say nothing about street imagery.")
    unseen = sorted(set(truth["country"].astype(str).str.upper()) - set(loc.countries))
    if unseen:
        notes.append(f"True countries outside the model's class list (count against accuracy, left out of Acc@k): {', '.join(unseen)}")
    return Evaluation(model.task_kind, loc.countries, records, values, dm.where, split, skipped, notes,
                      model.description, model.guess_note)


def write_report(ev: Evaluation, out_dir: str | os.PathLike, checkpoint: str | os.PathLike | None = None,
                 title: str | None = None) -> Path:
    """Pictures, ``predictions.csv``, ``metrics.json`` and ``report.md`` in ``out_dir``; returns the page's path."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ReportError(f"{out}: cannot create the report folder ({e.strerror})") from None
    f = ev.frame
    split_name = f"{ev.split} split"
    plots.plot_error_cdf(f["error_km"], out / "error_cdf.png", title=f"Great-circle error, {split_name} ({len(f)} images)")
    labels = None if len(f) > 25 else [Path(p).stem[:18] for p in f["image"]]
    maps.plot_map(f[["lat", "lon"]].to_numpy(), out / "map.png", true_latlon=f[["true_lat", "true_lon"]].to_numpy(),
                   labels=labels, title=f"Truth (green) joined to guess (red), {split_name}",
                   note="Lines join each photo's true place to its guess.")
    true_set, guessed = set(f["true_country"]), set(f["country"])
    order = list(ev.countries) + sorted((true_set | guessed) - set(ev.countries))
    rows = [c for c in order if c in true_set]
    columns = [c for c in order if c in guessed or (c in true_set and c in ev.countries)]  # keeps the diagonal
    plots.plot_confusion(f["true_country"], f["country"], out / "confusion.png", classes=rows, columns=columns)
    per = ev.per_country()
    plots.plot_per_country_accuracy(per.index.tolist(), per["accuracy"].tolist(), per["images"].tolist(),
                                    out / "per_country.png")
    write_records(ev.records, out / "predictions.csv")
    write_text_atomic(out / "metrics.json", json.dumps({"kind": ev.kind, "split": ev.split, "index": ev.index, "images": len(f),
                                                       "skipped": ev.skipped, "metrics": ev.metrics}, indent=2))

    what = ev.description
    lines = [
        f"# {title or 'geotrainr evaluation report'}",
        "",
        f"- checkpoint: `{checkpoint}` ({what}, {len(ev.countries)} countries)" if checkpoint else f"- model: {what}",
        f"- data: `{ev.index}`, {split_name}: {len(f)} images" + (f" ({ev.skipped} unreadable, skipped)" if ev.skipped else ""),
    ]
    if ev.guess_note:
        lines.append(f"- {ev.guess_note}")
    lines += [f"- {n}" for n in ev.notes]
    lines += ["", "## Metrics", "", "| metric | value | meaning |", "| --- | ---: | --- |"]
    lines += [f"| `{k}` | {v} | {m} |" for k, v, m in metrics_table(ev.metrics)]
    lines += [
        "", "## Error distribution", "",
        "Fraction of images whose guess is within a distance of the truth; dashed lines at 1, 25, 200, 750 "
        "and 2500 km (street, city, region, country, continent).", "",
        "![error CDF](error_cdf.png)", "",
        "## Map", "", "Each line joins a photo's true place (green) to its guess (red).", "", "![map](map.png)", "",
        "## Countries", "", "![confusion matrix](confusion.png)", "", "![accuracy per country](per_country.png)", "",
        "| true country | images | accuracy | median error (km) |", "| --- | ---: | ---: | ---: |",
    ]
    lines += [f"| {c} | {int(r.images)} | {100 * r.accuracy:.1f} % | {r.median_km:,.0f} |" for c, r in per.iterrows()]
    lines += ["", "Files: [predictions.csv](predictions.csv) (one row per image), [metrics.json](metrics.json).", ""]
    return write_text_atomic(out / "report.md", "\n".join(lines))


def make_report(checkpoint: str | os.PathLike, out_dir: str | os.PathLike = "report", index: str | os.PathLike = "demo",
                split: str = "val", **evaluate_kwargs) -> tuple[Evaluation, Path]:
    """:func:`evaluate` then :func:`write_report`; returns the evaluation and the page's path."""
    ev = evaluate(checkpoint, index=index, split=split, **evaluate_kwargs)
    label = checkpoint if isinstance(checkpoint, (str, os.PathLike)) else None
    return ev, write_report(ev, out_dir, checkpoint=label)

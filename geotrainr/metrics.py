"""Geolocation metrics as torchmetrics ``Metric`` classes (they sync across DDP ranks).

Every evaluation (fit's validation, ``validate``, ``test``, ``report``, ``ablate``, ``report --benchmark``)
computes its numbers with these classes, and :data:`METRIC_LABELS` says what each one means, once.

Names follow the logged contract (``acc1``, ``err_km_median``, ...). Formulas:

- ``acc1``/``acc5``: micro top-k accuracy (the literature's Acc@k); ``acc_macro``: top-1 accuracy averaged over the
  countries that occur in the truth of the split scored (:class:`MacroAccuracy`);
- ``err_km_*``: great-circle (haversine, R = 6371.009 km) distance of guess to truth;
- ``acc_Xkm``: fraction of guesses within X km, X in 1/25/200/750/2500;
- ``geoscore``: mean of 5000 exp(-d / 1492.7 km);
- ``err_deg_mean`` and ``within_5deg``: the seed study's degree measure (Euclidean in lat/lon), for comparison only;
- ``anchor_acc1``/``anchor_acc5``: is the geographically nearest anchor among the k nearest in predicted distance.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torchmetrics import MeanAbsoluteError, Metric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy
from torchmetrics.utilities import dim_zero_cat

from geotrainr.geo import ACCURACY_THRESHOLDS_KM, degree_error, geoscore, great_circle_error_km


#: What each metric means, in report order: the one written definition (tables, reports, model cards).
METRIC_LABELS = {
    "acc1": "top-1 country accuracy (micro)",
    "acc5": "true country among the 5 most probable (micro)",
    "acc_macro": "top-1 accuracy averaged over the countries that occur in the truth of the split (macro)",
    "anchor_acc1": "nearest anchor (by true distance) ranked first by predicted distance",
    "anchor_acc5": "nearest anchor among the 5 nearest by predicted distance",
    "err_km_mean": "mean great-circle error (km)",
    "err_km_median": "median great-circle error (km)",
    "acc_1km": "guesses within 1 km (street)",
    "acc_25km": "guesses within 25 km (city)",
    "acc_200km": "guesses within 200 km (region)",
    "acc_750km": "guesses within 750 km (country)",
    "acc_2500km": "guesses within 2500 km (continent)",
    "geoscore": "mean GeoGuessr score, 5000 exp(-d / 1492.7 km)",
    "err_deg_mean": "the study's mean error in degrees (Euclidean lat/lon; not a distance); distance models: "
                    "mean error of the predicted image-to-anchor distances",
    "within_5deg": "the study's fraction within 5 degrees",
}


def format_metric(name: str, value: float) -> str:
    """A metric's value as tables print it: km with one decimal, GeoScore whole, fractions in %."""
    if name.startswith("err_km"):
        return f"{value:,.1f}"
    if name == "geoscore":
        return f"{value:,.0f}"
    if name == "err_deg_mean":
        return f"{value:.2f}"
    return f"{100 * value:.1f} %"


def metrics_table(metrics: dict[str, float]) -> list[tuple[str, str, str]]:
    """(name, formatted value, meaning) in report order, then any other metric."""
    names = [k for k in METRIC_LABELS if k in metrics] + sorted(k for k in metrics if k not in METRIC_LABELS)
    return [(k, format_metric(k, metrics[k]), METRIC_LABELS.get(k, "")) for k in names]


class MacroAccuracy(MulticlassAccuracy):
    """Top-1 accuracy averaged over the classes that occur in the truth (mean per-class recall).

    torchmetrics' ``average="macro"`` also averages in, at 0, every class that was guessed but never true,
    so its value depends on the wrong guesses' spread; this one keeps torchmetrics' counting and syncing
    and leaves those classes out.
    """

    def __init__(self, num_classes: int, **kwargs):
        super().__init__(num_classes, top_k=1, average="none", **kwargs)

    def compute(self) -> torch.Tensor:
        tp, _, _, fn = self._final_state()
        support = tp + fn
        seen = support > 0
        if not seen.any():
            return torch.tensor(float("nan"), device=tp.device)
        return (tp[seen].double() / support[seen].double()).mean().float()


class GeolocationError(Metric):
    """Great-circle error statistics of (lat, lon) guesses; keeps every error so the median is exact."""

    full_state_update = False
    higher_is_better = False

    def __init__(self, thresholds_km: tuple[float, ...] = ACCURACY_THRESHOLDS_KM, degrees: bool = True, **kwargs):
        """``degrees=False`` leaves out the seed's degree figures (the distance task logs its own ``err_deg_mean``)."""
        super().__init__(**kwargs)
        self.thresholds_km = tuple(thresholds_km)
        self.degrees = degrees
        self.add_state("err_km", default=[], dist_reduce_fx="cat")
        self.add_state("err_deg", default=[], dist_reduce_fx="cat")

    def update(self, pred_latlon: torch.Tensor, true_latlon: torch.Tensor) -> None:
        self.err_km.append(great_circle_error_km(pred_latlon, true_latlon).reshape(-1))
        self.err_deg.append(degree_error(pred_latlon, true_latlon).reshape(-1))

    def compute(self) -> dict[str, torch.Tensor]:
        km = dim_zero_cat(self.err_km).double()
        deg = dim_zero_cat(self.err_deg).double()
        if km.numel() == 0:
            return {}
        out = {
            "err_km_mean": km.mean(),
            "err_km_median": torch.quantile(km, 0.5),
        }
        for t in self.thresholds_km:
            out[f"acc_{t:g}km"] = (km <= t).double().mean()
        out["geoscore"] = geoscore(km).mean()
        if self.degrees:
            out["err_deg_mean"] = deg.mean()
            out["within_5deg"] = (deg <= 5.0).double().mean()
        return {k: v.float() for k, v in out.items()}


def classification_metrics(num_classes: int) -> MetricCollection:
    """Acc@1, Acc@5 (micro, as in the literature) and macro accuracy over the true classes."""
    metrics = {
        "acc1": MulticlassAccuracy(num_classes, top_k=1, average="micro", ignore_index=-1),
        "acc_macro": MacroAccuracy(num_classes, ignore_index=-1),
    }
    if num_classes >= 5:
        metrics["acc5"] = MulticlassAccuracy(num_classes, top_k=5, average="micro", ignore_index=-1)
    return MetricCollection(metrics)


def anchor_metrics(num_anchors: int) -> MetricCollection:
    """anchor_acc1/anchor_acc5: scores are negated predicted distances to every anchor."""
    metrics = {"anchor_acc1": MulticlassAccuracy(num_anchors, top_k=1, average="micro")}
    if num_anchors >= 5:
        metrics["anchor_acc5"] = MulticlassAccuracy(num_anchors, top_k=5, average="micro")
    return MetricCollection(metrics)


def distance_error() -> MeanAbsoluteError:
    """err_deg_mean of predicted against true (clipped) distances, in degrees."""
    return MeanAbsoluteError()


def country_accuracy(true: Sequence[str | None], guessed: Sequence[str | None]) -> dict[str, float]:
    """``acc1`` and ``acc_macro`` of guessed against true country codes, through the same Metric classes as
    training (for models without a country head, whose guess is the country their coordinates fall in).
    Rows without a true country are left out; a missing guess counts as wrong."""
    pairs = [(t, g) for t, g in zip(true, guessed) if t]
    if not pairs:
        return {}
    classes = {c: i for i, c in enumerate(sorted({t for t, _ in pairs} | {g for _, g in pairs if g}))}
    target = torch.tensor([classes[t] for t, _ in pairs])
    wrong = len(classes)  # a class of its own for "no guess": never true, so it never counts as right
    pred = torch.tensor([classes[g] if g else wrong for _, g in pairs])
    metrics = MetricCollection({"acc1": MulticlassAccuracy(wrong + 1, top_k=1, average="micro"),
                                "acc_macro": MacroAccuracy(wrong + 1)})
    metrics.update(pred, target)
    return {k: float(v) for k, v in metrics.compute().items()}


def was_updated(metric: Metric | MetricCollection) -> bool:
    """Whether this process updated the metric (ranks may disagree: ``GeoTask._updated_on_any_rank`` asks them all)."""
    if isinstance(metric, MetricCollection):
        return any(m.update_called for m in metric.values())
    return metric.update_called


def compute_flat(metrics: dict[str, Metric | MetricCollection], prefix: str = "",
                 updated: Sequence[bool] | None = None) -> dict[str, torch.Tensor]:
    """Flat ``{prefix + name: value}`` of the metrics (those ``updated`` on any rank, default: on this one), then
    reset them. A metric returning a dict gives its keys; every evaluation scores through here."""
    flat: dict[str, torch.Tensor] = {}
    named = list(metrics.items())
    if updated is None:
        updated = [was_updated(m) for _, m in named]
    for (name, metric), any_rank in zip(named, updated):
        if not any_rank:
            continue
        with warnings.catch_warnings():
            if not was_updated(metric):  # only another rank's data: this one joins the sync
                warnings.filterwarnings("ignore", message=".*was called before the ``update`` method")
            value = metric.compute()
        if isinstance(value, dict):
            flat.update({f"{prefix}{k}": v for k, v in value.items()})
        else:
            flat[f"{prefix}{name}"] = value
        metric.reset()
    return flat

"""Geolocation metrics as torchmetrics ``Metric`` classes (they sync across DDP ranks).

Names follow the logged contract (``acc1``, ``err_km_median``, ...). Formulas:

- ``acc1``/``acc5``: micro top-k accuracy (the literature's Acc@k), ``acc_macro``: mean of per-class recall;
- ``err_km_*``: great-circle (haversine, R = 6371.009 km) distance of guess to truth;
- ``acc_Xkm``: fraction of guesses within X km, X in 1/25/200/750/2500;
- ``geoscore``: mean of 5000 exp(-d / 1492.7 km);
- ``err_deg_mean`` and ``within_5deg``: the seed study's degree measure (Euclidean in lat/lon), for comparison only;
- ``anchor_acc1``/``anchor_acc5``: is the geographically nearest anchor among the k nearest in predicted distance.
"""

from __future__ import annotations

import torch
from torchmetrics import MeanAbsoluteError, Metric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy
from torchmetrics.utilities import dim_zero_cat

from geotrainr.geo import ACCURACY_THRESHOLDS_KM, degree_error, geoscore, great_circle_error_km


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
    """Acc@1, Acc@5 (micro, as in the literature) and macro accuracy."""
    metrics = {
        "acc1": MulticlassAccuracy(num_classes, top_k=1, average="micro", ignore_index=-1),
        "acc_macro": MulticlassAccuracy(num_classes, top_k=1, average="macro", ignore_index=-1),
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

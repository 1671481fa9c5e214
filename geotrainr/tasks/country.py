"""Country classification: the study's main task (Acc@1/Acc@5 over the class list)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import Metric, MetricCollection

from geotrainr.metrics import GeolocationError, classification_metrics
from geotrainr.tasks.base import GeoTask, TaskConfigError


class CountryClassifier(GeoTask):
    """Backbone + linear head over the countries, cross-entropy with label smoothing.

    Besides Acc@k it reports great-circle metrics of the predicted country's
    centre, so country and coordinate models compare on one scale.

    Args:
        label_smoothing: cross-entropy label smoothing (the study: 0.1).
        dropout: dropout before the head.
        **kwargs: see :class:`GeoTask`.
    """

    task_kind = "country"
    monitor = "val/acc1"
    monitor_mode = "max"
    description = "country classifier"
    guess_note = "country model: lat/lon is the guessed country's centre"

    def __init__(self, *args, label_smoothing: float = 0.1, dropout: float = 0.2, **kwargs):
        self._label_smoothing = label_smoothing
        self._dropout = dropout
        super().__init__(*args, **kwargs)

    def configure_heads(self) -> None:
        if self.num_classes < 2:
            raise TaskConfigError(f"a country classifier needs at least two countries; the class list holds only "
                                  f"{', '.join(self.countries)} (train the coords or geocells config on one country)")
        self.head = nn.Sequential(nn.Dropout(self._dropout), nn.Linear(self.num_features, self.num_classes))

    def configure_metrics(self) -> dict[str, Metric | MetricCollection]:
        return {"cls": classification_metrics(self.num_classes), "geo": GeolocationError()}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits (N, C)."""
        return self.head(self.features(images))

    def shared_step(self, batch: dict, stage: str) -> torch.Tensor:
        logits = self(batch["image"])
        loss = F.cross_entropy(logits.float(), batch["country"], label_smoothing=self._label_smoothing, ignore_index=-1)
        with torch.no_grad():
            self.score(stage, self.guess(logits), batch)
        return loss

    def guess(self, logits: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits -> ``probs`` (N, C) and ``latlon``, the most probable country's centre."""
        probs = logits.float().softmax(-1)
        return {"probs": probs, "latlon": self.class_centres[probs.argmax(1)]}

    def raw_outputs(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": self(images)}

    def decode_outputs(self, raw: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.guess(raw["logits"])

    def update_metrics(self, metrics: dict, out: dict[str, torch.Tensor], batch: dict) -> None:
        target = batch["country"]
        known = target >= 0
        if known.any():
            metrics["cls"].update(out["probs"][known], target[known])
        metrics["geo"].update(out["latlon"], batch["latlon"])

    def explain_score(self, pooled: torch.Tensor, target: str | None) -> tuple[torch.Tensor, str, str, float]:
        return self._explain_class(self.head(pooled).float(), target)

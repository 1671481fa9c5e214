"""Distance prediction between images and between images and country anchors (the study's section 3.2)."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import Metric, MetricCollection

from geotrainr.geo import degree_error
from geotrainr.metrics import GeolocationError, anchor_metrics, distance_error
from geotrainr.tasks.base import GeoTask, TaskConfigError


class DistancePredictor(GeoTask):
    """Predicts how far apart two images (or an image and a country anchor) were taken, in degrees.

    Every technique of the study is an option:

    Args:
        head: ``euclidean``: distance of embeddings; ``discriminator``: an MLP on a symmetric pair code.
        embed_dim: size of the embedding the backbone features are projected to.
        clip_deg: targets are clipped at this distance (the study: 10 deg); None keeps them whole.
        sigmoid_scale: discriminator output = scale * sigmoid (the study: 10); None uses softplus.
        pair_sampling: ``balanced``: half the pairs nearer than ``near_deg``; ``random``: any pair.
        near_deg: what counts as a near pair.
        anchors: add image-to-anchor pairs; anchors sit at the class countries' centres, their embeddings are learned.
        anchor_weight: weight of the anchor loss.
        identity_weight: weight of the identity loss (an image is 0 deg from itself).
        **kwargs: see :class:`GeoTask`.

    Metrics: ``err_deg_mean`` over every (image, anchor) pair against clipped targets,
    ``anchor_acc1``/``anchor_acc5`` and the great-circle metrics of the nearest anchor's centre.
    """

    task_kind = "distance"
    monitor = "val/err_deg_mean"
    monitor_mode = "min"
    description = "distance predictor"
    guess_note = "distance model: p is over its country anchors; lat/lon is the nearest anchor's centre"
    explain_label = "closeness to the anchor of"

    def __init__(
        self,
        *args,
        head: Literal["euclidean", "discriminator"] = "discriminator",
        embed_dim: int = 128,
        clip_deg: float | None = 10.0,
        sigmoid_scale: float | None = 10.0,
        pair_sampling: Literal["balanced", "random"] = "balanced",
        near_deg: float = 3.0,
        anchors: bool = True,
        anchor_weight: float = 1.0,
        identity_weight: float = 0.1,
        **kwargs,
    ):
        if head not in ("euclidean", "discriminator"):
            raise ValueError(f"unknown head {head!r} (euclidean or discriminator)")
        self._opts = dict(
            head=head, embed_dim=embed_dim, clip_deg=clip_deg, sigmoid_scale=sigmoid_scale, pair_sampling=pair_sampling,
            near_deg=near_deg, anchors=anchors, anchor_weight=anchor_weight, identity_weight=identity_weight,
        )
        super().__init__(*args, **kwargs)

    def configure_heads(self) -> None:
        if self.num_classes < 2:
            raise TaskConfigError(f"a distance model's anchors are its countries and it needs at least two; the class "
                                  f"list holds only {', '.join(self.countries)}")
        d = self._opts["embed_dim"]
        self.embed = nn.Linear(self.num_features, d)
        self.anchor_embed = nn.Parameter(torch.randn(self.num_classes, d) * 0.02)
        if self._opts["head"] == "discriminator":
            self.discriminator = nn.Sequential(nn.Linear(3 * d, 256), nn.ReLU(), nn.Linear(256, 1))

    def configure_metrics(self) -> dict[str, Metric | MetricCollection]:
        return {"err_deg_mean": distance_error(), "anchor": anchor_metrics(self.num_classes), "geo": GeolocationError(degrees=False)}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Embeddings (N, embed_dim)."""
        return self.embed(self.features(images)).float()

    def pair_distance(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Predicted distance in degrees between embeddings ``a`` and ``b`` (broadcasting)."""
        if self._opts["head"] == "euclidean":
            return torch.sqrt(((a - b) ** 2).sum(-1) + 1e-9)
        a, b = torch.broadcast_tensors(a, b)
        z = self.discriminator(torch.cat(((a - b).abs(), a * b, a + b), dim=-1)).squeeze(-1)
        scale = self._opts["sigmoid_scale"]
        return scale * torch.sigmoid(z) if scale else F.softplus(z)

    def anchor_distances(self, emb: torch.Tensor) -> torch.Tensor:
        """Predicted distance of each embedding to each anchor (N, num_classes)."""
        return self.pair_distance(emb[:, None, :], self.anchor_embed[None, :, :])

    def _clip(self, d: torch.Tensor) -> torch.Tensor:
        clip = self._opts["clip_deg"]
        return d.clamp(max=clip) if clip else d

    def _partners(self, true_d: torch.Tensor) -> torch.Tensor:
        """One partner per image: half near, half far when ``balanced``."""
        n = true_d.shape[0]
        scores = torch.rand(n, n, device=true_d.device)
        scores.fill_diagonal_(-1.0)
        if self._opts["pair_sampling"] == "balanced":
            want_near = torch.rand(n, 1, device=true_d.device) < 0.5
            is_near = true_d < self._opts["near_deg"]
            preferred = torch.where(want_near, is_near, ~is_near)
            scores = scores + 2.0 * preferred.float()
            scores.fill_diagonal_(-1.0)
        return scores.argmax(1)

    def true_anchor_distances(self, latlon: torch.Tensor) -> torch.Tensor:
        """Targets of the anchor distances: degrees from each true position to each anchor, clipped (N, C)."""
        return self._clip(degree_error(latlon.double()[:, None, :], self.class_centres[None, :, :])).float()

    def shared_step(self, batch: dict, stage: str) -> torch.Tensor:
        emb = self(batch["image"])
        latlon = batch["latlon"].double()
        true_anchor = self.true_anchor_distances(latlon)
        pred_anchor = self.anchor_distances(emb)
        losses = []
        if len(emb) > 1:
            true_pair = degree_error(latlon[:, None, :], latlon[None, :, :]).float()
            j = self._partners(true_pair)
            target = self._clip(true_pair[torch.arange(len(emb)), j])
            losses.append(F.smooth_l1_loss(self.pair_distance(emb, emb[j]), target))
        if self._opts["anchors"]:
            losses.append(self._opts["anchor_weight"] * F.smooth_l1_loss(pred_anchor, true_anchor))
        if self._opts["identity_weight"] and self._opts["head"] == "discriminator":
            losses.append(self._opts["identity_weight"] * self.pair_distance(emb, emb).pow(2).mean())
        loss = torch.stack(losses).sum()
        with torch.no_grad():
            self.score(stage, self.guess(pred_anchor), batch)
        return loss

    def guess(self, anchor_distance_deg: torch.Tensor) -> dict[str, torch.Tensor]:
        """Predicted anchor distances -> ``probs`` (softmax of minus them), the distances, ``latlon`` of the nearest."""
        d = anchor_distance_deg
        return {"probs": (-d).softmax(-1), "anchor_distance_deg": d, "latlon": self.class_centres[d.argmin(1)]}

    def raw_outputs(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"embedding": self(images)}

    def decode_outputs(self, raw: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.guess(self.anchor_distances(raw["embedding"]))

    def update_metrics(self, metrics: dict, out: dict[str, torch.Tensor], batch: dict) -> None:
        pred = out["anchor_distance_deg"].float()
        true = self.true_anchor_distances(batch["latlon"])
        metrics["err_deg_mean"].update(pred.reshape(-1), true.reshape(-1))
        metrics["anchor"].update(-pred, true.argmin(1))
        metrics["geo"].update(out["latlon"], batch["latlon"])

    def explain_score(self, pooled: torch.Tensor, target: str | None) -> tuple[torch.Tensor, str, str, float]:
        return self._explain_class(-self.anchor_distances(self.embed(pooled).float()), target)

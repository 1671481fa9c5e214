"""Coordinate prediction: the study's linear head, or a geocell classifier (``head: geocells``)."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import Metric, MetricCollection

from geotrainr.errors import GeotrainrError
from geotrainr.geo import from_seed_frame, great_circle_error_km, to_seed_frame
from geotrainr.geocells import DEFAULT_TAU_KM, Geocells, country_probs, decode, haversine_smoothed_targets
from geotrainr.metrics import GeolocationError, classification_metrics
from geotrainr.tasks.base import ExplainError, GeoTask, TaskConfigError


class CoordinateRegressor(GeoTask):
    """Backbone + a coordinate head.

    ``head: linear`` is the study's recipe: 2 outputs, x 10 + (50 N, 10 E) is the guess.
    The study froze the backbone (default here too) and showed that starting
    from a country model (``init_from``) cuts the error from 6.35 to 4.89 deg.

    ``head: geocells`` classifies into geocells (:mod:`geotrainr.geocells`), built
    from the training split when fitting starts and saved in the checkpoint. The
    loss is cross-entropy against haversine-smoothed targets (PIGEON). A
    country's probability is the sum over its cells; the guess is the centroid
    of the most probable cell of the most probable country (or the
    probability-weighted centroid of its top ``guess_top_k`` cells), so the
    model reports a country consistent with its coordinates, and ``acc1``.

    Args:
        head: ``linear`` (the study) or ``geocells``.
        loss: linear head: ``frame``: MSE in the seed frame (the study); ``haversine``: great-circle km / 1000.
        geocells: geocell head: a cells file (``geotrainr geocells --out``) or checkpoint to take the cells from;
            default: build them from the datamodule's training split.
        min_per_cell: geocell head: fewest training images per cell (a country with fewer keeps one cell).
        max_per_cell: geocell head: most training images per cell.
        tau_km: geocell head: temperature of the haversine label smoothing (PIGEON: 65-75 km).
        guess_top_k: geocell head: 1 answers with the top cell's centroid; k > 1 with the
            probability-weighted spherical mean of the top k centroids.
        freeze_backbone: default True, as in the study.
        **kwargs: see :class:`GeoTask`.
    """

    task_kind = "coords"
    monitor = "val/err_km_median"
    monitor_mode = "min"

    def __init__(
        self,
        *args,
        head: Literal["linear", "geocells"] = "linear",
        loss: Literal["frame", "haversine"] = "frame",
        geocells: str | None = None,
        min_per_cell: int = 10,
        max_per_cell: int = 100,
        tau_km: float = DEFAULT_TAU_KM,
        guess_top_k: int = 1,
        freeze_backbone: bool = True,
        **kwargs,
    ):
        if head not in ("linear", "geocells"):
            raise TaskConfigError(f"unknown head {head!r} (linear or geocells)")
        if loss not in ("frame", "haversine"):
            raise TaskConfigError(f"unknown loss {loss!r} (frame or haversine)")
        if tau_km <= 0 or guess_top_k < 1:
            raise TaskConfigError(f"tau_km must be positive and guess_top_k at least 1 (got {tau_km}, {guess_top_k})")
        self.head_kind = head
        self._loss = loss
        self.geocells: Geocells | None = None
        super().__init__(*args, freeze_backbone=freeze_backbone, **kwargs)
        if head == "geocells" and geocells:
            self.set_geocells(Geocells.load(geocells))

    # --- heads -----------------------------------------------------------------------------------

    def configure_heads(self) -> None:
        # the geocell head is made by set_geocells, once the number of cells is known
        self.head = nn.Linear(self.num_features, 2) if self.head_kind == "linear" else None

    def set_geocells(self, cells: Geocells) -> None:
        """Use ``cells`` (a fresh head with one output per cell unless the current one already fits)."""
        index = torch.from_numpy(cells.country_index(self.countries))
        self.geocells = cells
        self.register_buffer("cell_centroids", torch.from_numpy(cells.centroids.copy()), persistent=False)
        self.register_buffer("cell_country", index, persistent=False)
        if self.head is None or self.head.out_features != len(cells):
            self.head = nn.Linear(self.num_features, len(cells))
        device = next(self.backbone.parameters()).device
        self.to(device)

    def setup(self, stage: str) -> None:
        """Build the geocells from the datamodule's training split when a run starts without any.

        Outside ``fit`` a checkpoint (``ckpt_path``) usually brings them (it replaces these on load),
        so there a datamodule that cannot build them is no error yet: the first forward pass says so.
        """
        if self.head_kind != "geocells" or self.geocells is not None:
            return
        dm = getattr(self.trainer, "datamodule", None)
        try:
            if dm is None or not hasattr(dm, "train_coordinates"):
                raise TaskConfigError("a geocell model needs its cells: fit it with a GeoDataModule, pass "
                                      "geocells: FILE, or load a checkpoint (ckpt_path)")
            latlon, countries = dm.train_coordinates()
        except GeotrainrError:
            if stage == "fit":
                raise
            return
        self.set_geocells(Geocells.build(latlon, countries, self.hparams.min_per_cell, self.hparams.max_per_cell))

    def _require_cells(self) -> None:
        if self.head is None:
            raise TaskConfigError("this geocell model has no cells yet: fit it, pass geocells: FILE or load a checkpoint")

    @property
    def predicts_countries(self) -> bool:
        return self.head_kind == "geocells"

    def configure_metrics(self) -> dict[str, Metric | MetricCollection]:
        """Great-circle metrics; geocell models add country accuracy, where there is more than one country."""
        if self.head_kind == "geocells" and self.num_classes > 1:
            return {"cls": classification_metrics(self.num_classes), "geo": GeolocationError()}
        return {"geo": GeolocationError()}

    # --- forward, loss, guesses --------------------------------------------------------------------

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Raw head output: seed-frame coordinates (N, 2) or cell logits (N, K)."""
        self._require_cells()
        return self.head(self.features(images))

    def country_logits(self, cell_logits: torch.Tensor) -> torch.Tensor:
        """Geocell head: log-probability of each country (N, C), the log of the sum over its cells."""
        probs = country_probs(cell_logits.float().softmax(-1), self.cell_country, self.num_classes)
        return probs.clamp_min(1e-30).log()

    def guess(self, out: torch.Tensor) -> dict[str, torch.Tensor]:
        """Head output -> ``latlon`` (N, 2), and for the geocell head ``probs`` (N, C) and ``cell_probs`` (N, K)."""
        if self.head_kind == "linear":
            return {"latlon": from_seed_frame(out.float())}
        cell_probs = out.float().softmax(-1)
        latlon, probs = self.decode_cells(cell_probs)
        return {"latlon": latlon, "probs": probs, "cell_probs": cell_probs}

    def decode_cells(self, cell_probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cell probabilities -> (guessed (lat, lon), country probabilities); see :func:`geotrainr.geocells.decode`."""
        return decode(cell_probs, self.cell_centroids, self.cell_country, self.num_classes, self.hparams.guess_top_k)

    def cell_loss(self, cell_logits: torch.Tensor, true: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-entropy of cell logits (N, K) against haversine-smoothed targets around the true points;
        also returns the (N, K) km from each true point to every cell's centroid."""
        distances = great_circle_error_km(true[:, None, :], self.cell_centroids[None, :, :])
        target = haversine_smoothed_targets(distances, self.hparams.tau_km).float()
        return -(target * cell_logits.log_softmax(-1)).sum(-1).mean(), distances

    def shared_step(self, batch: dict, stage: str) -> torch.Tensor:
        out = self(batch["image"]).float()
        true = batch["latlon"]
        if self.head_kind == "geocells":
            loss, _ = self.cell_loss(out, true)
        elif self._loss == "frame":
            loss = F.mse_loss(out, to_seed_frame(true).float())
        else:
            loss = great_circle_error_km(from_seed_frame(out), true).mean().float() / 1000.0
        with torch.no_grad():
            self.score(stage, self.guess(out), batch)
        return loss

    def raw_outputs(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Seed-frame ``coords`` (N, 2) of the linear head, or ``cell_logits`` (N, K)."""
        return {"coords" if self.head_kind == "linear" else "cell_logits": self(images)}

    def decode_outputs(self, raw: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.guess(raw["coords" if self.head_kind == "linear" else "cell_logits"])

    def update_metrics(self, metrics: dict, out: dict[str, torch.Tensor], batch: dict) -> None:
        metrics["geo"].update(out["latlon"], batch["latlon"])
        if "cls" in metrics:
            known = batch["country"] >= 0
            if known.any():
                metrics["cls"].update(out["probs"][known], batch["country"][known])

    # --- what the model says about itself ----------------------------------------------------------

    @property
    def description(self) -> str:
        return "geocell classifier" if self.head_kind == "geocells" else "coordinate regressor"

    @property
    def guess_note(self) -> str:
        if self.head_kind == "geocells":
            return "geocell model: lat/lon is the centroid of a cell in the guessed country"
        return "coordinate model: 'guess' is the country the coordinates fall in"

    def explain_target(self, target: str | None) -> str | None:
        if self.head_kind == "geocells":
            if target is not None and target.strip().lower() in ("lat", "lon"):
                raise ExplainError("a geocell model explains a country (its cells' summed probability), not 'lat'/'lon'")
            return super().explain_target(target)
        target = (target or "lat").strip().lower()
        if target not in ("lat", "lon"):
            raise ExplainError(f"a coordinate model explains 'lat' or 'lon', not {target!r}: it has no country classes")
        return target

    def explain_score(self, pooled: torch.Tensor, target: str | None) -> tuple[torch.Tensor, str, str, float]:
        """Geocells: a country's summed cell probability; linear: the latitude or longitude output."""
        if self.head_kind == "geocells":
            return self._explain_class(self.country_logits(self.head(pooled).float()), target)
        target = self.explain_target(target)
        out = self.head(pooled).float()
        latlon = from_seed_frame(out.detach())[0]
        k = 0 if target == "lat" else 1
        return out[0, k], target, f"{float(latlon[0]):.2f}, {float(latlon[1]):.2f}", float(latlon[k])

    # --- checkpoints ----------------------------------------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        if self.geocells is not None:
            checkpoint["geotrainr"]["geocells"] = self.geocells.to_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        record = checkpoint.get("geotrainr", {}).get("geocells")
        if self.head_kind == "geocells" and record is not None:
            self.set_geocells(Geocells.from_dict(record))

"""One model, three heads: country, geocell and an offset inside the cell, guessed hierarchically (PIGEON)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from geotrainr.artifact import read_checkpoint
from geotrainr.geocells import Geocells, cells_of_top_country, country_probs
from geotrainr.tasks.base import TaskConfigError
from geotrainr.tasks.coords import CoordinateRegressor


class MultiTaskGeolocator(CoordinateRegressor):
    """Backbone + country head + geocell head + per-cell offset head, trained together with weighted losses.

    The loss is ``country_weight`` x cross-entropy over the countries (label smoothing) +
    ``cell_weight`` x cross-entropy against haversine-smoothed cell targets +
    ``offset_weight`` x smooth-L1 of the true point's offset from its nearest cell's centroid (degrees).

    The guess is hierarchical. First the country, from the country head (without one, the sum of
    its cells' probabilities). Then the most probable cell inside that country. Then, with ``offset``, the offset
    head's correction for that cell, kept inside the box of the cell's training points. The
    reported cell distribution is P(country) x P(cell | country), so that decoding it (as several
    views of one place are, averaged) gives the same country and cell as the single-image guess.

    Country-model init (``init_from`` a country checkpoint, the study's task-aware pretraining) starts
    the backbone and, when the class lists agree, the country head from the country model.

    A single-country class list trains too: the country head is left out (its loss and accuracy
    would be trivially perfect), and the cells and offsets do the work. A head whose loss weight
    is 0 is left out as well (the country from the cells alone; the cell's centroid as the answer).

    Args:
        country_weight, cell_weight, offset_weight: loss weights of the three heads.
        offset: answer with the offset-corrected point (else the cell's centroid).
        label_smoothing: country head's label smoothing.
        freeze_backbone: default False: the backbone is fine-tuned, at ``lr * backbone_lr_mult``.
        **kwargs: see :class:`CoordinateRegressor` (cells: ``min_per_cell``, ``max_per_cell``, ``tau_km``,
            ``geocells``) and :class:`~geotrainr.tasks.base.GeoTask` (``init_from``, ``head_warmup_epochs``, ...).
    """

    task_kind = "multitask"
    monitor = "val/err_km_median"
    monitor_mode = "min"
    description = "multi-task model (country, geocell and offset heads)"

    def __init__(
        self,
        *args,
        country_weight: float = 1.0,
        cell_weight: float = 1.0,
        offset_weight: float = 1.0,
        offset: bool = True,
        label_smoothing: float = 0.1,
        freeze_backbone: bool = False,
        **kwargs,
    ):
        head = kwargs.pop("head", "geocells")
        if head != "geocells":
            raise TaskConfigError(f"the multi-task model's coordinate head is geocells, not {head!r}")
        weights = {"country_weight": country_weight, "cell_weight": cell_weight, "offset_weight": offset_weight}
        if any(w < 0 for w in weights.values()) or cell_weight == 0:
            raise TaskConfigError(f"loss weights must be 0 or more and cell_weight positive (got {weights})")
        if not 0.0 <= label_smoothing < 1.0:
            raise TaskConfigError(f"label_smoothing {label_smoothing} is not a fraction in [0, 1)")
        self._label_smoothing = label_smoothing
        self._weights = weights  # configure_heads runs inside super().__init__, before hparams exist
        self.offset_head: nn.Linear | None = None
        super().__init__(*args, head="geocells", freeze_backbone=freeze_backbone, **kwargs)
        if self.hparams.get("init_from") and self.country_head is not None:
            self._init_country_head(self.hparams.init_from)

    def _init_country_head(self, path: str) -> bool:
        """Country-model init goes beyond the backbone: a country checkpoint with the same class list also
        starts the country head (its linear layer). Returns whether it did."""
        artifact = read_checkpoint(path)
        record, state = artifact.record, artifact.state()
        weight, bias = state.get("head.1.weight"), state.get("head.1.bias")
        if record.get("task") != "country" or record.get("countries") != self.countries or weight is None or bias is None:
            return False
        if tuple(weight.shape) != tuple(self.country_head.weight.shape):
            return False
        with torch.no_grad():
            self.country_head.weight.copy_(weight)
            self.country_head.bias.copy_(bias)
        return True

    # --- heads -----------------------------------------------------------------------------------

    def configure_heads(self) -> None:
        super().configure_heads()  # the cell head comes with the cells (set_geocells)
        # a head without a loss would never train (and DDP refuses parameters without gradients): none then
        wanted = self.num_classes > 1 and self._weights["country_weight"] > 0
        self.country_head = nn.Linear(self.num_features, self.num_classes) if wanted else None

    def set_geocells(self, cells: Geocells) -> None:
        """The cells, their heads (cells and per-cell offsets) and each cell's box of training points."""
        fresh = self.head is None or self.head.out_features != len(cells)
        super().set_geocells(cells)
        self.register_buffer("cell_bounds", torch.from_numpy(cells.bounds.astype("float64").copy()), persistent=False)
        has_cells = torch.zeros(self.num_classes)
        has_cells[self.cell_country] = 1.0
        self.register_buffer("has_cells", has_cells, persistent=False)
        if self._weights["offset_weight"] == 0:
            self.offset_head = None
        elif fresh or self.offset_head is None or self.offset_head.out_features != 2 * len(cells):
            self.offset_head = nn.Linear(self.num_features, 2 * len(cells))
            nn.init.zeros_(self.offset_head.weight)  # start at the centroids
            nn.init.zeros_(self.offset_head.bias)
        self.to(next(self.backbone.parameters()).device)

    # --- the hierarchical guess ---------------------------------------------------------------------

    def heads(self, feats: torch.Tensor) -> dict[str, torch.Tensor]:
        """Raw outputs of the three heads for pooled features (N, F)."""
        self._require_cells()
        out = {"cell_logits": self.head(feats).float()}
        if self.offset_head is not None:
            out["offsets"] = self.offset_head(feats).float()
        if self.country_head is not None:
            out["country_logits"] = self.country_head(feats).float()
        return out

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Cell logits (N, K), as the geocell model's."""
        return self.heads(self.features(images))["cell_logits"]

    def combined(self, out: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(P(country) (N, C), P(country) x P(cell | country) (N, K)) from the heads' outputs.

        P(country) is the country head's alone: multiplying in the cells' summed probability, tried
        first, cost 4.9 points of Acc@1 and 24 km of median error on the relief set and gained
        nothing on the demo (docs/results.md). Without a country head it is the cells' sum.
        """
        logits = out["cell_logits"]
        if "country_logits" in out:  # a class-list country without training cells cannot be the guess
            probs = out["country_logits"].softmax(-1) * self.has_cells
            probs = probs / probs.sum(-1, keepdim=True).clamp_min(1e-30)
        else:
            probs = country_probs(logits.softmax(-1), self.cell_country, self.num_classes)
        idx = self.cell_country[None, :].expand_as(logits)
        # P(cell | its country) in log space: a country whose cells all underflow in a global softmax keeps its sum 1
        top = logits.new_full(probs.shape, float("-inf")).scatter_reduce(1, idx, logits, "amax")
        shifted = (logits - top.gather(1, idx)).exp()
        within = shifted / shifted.new_zeros(probs.shape).index_add_(1, self.cell_country, shifted).gather(1, idx)
        return probs, within * probs.gather(1, idx)

    def guess(self, out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Heads' outputs -> ``latlon`` (N, 2), ``probs`` (N, C), ``cell_probs`` (N, K) and, with an offset
        head, ``cell_offsets`` (N, K, 2): decoding ``cell_probs`` and ``cell_offsets`` gives ``latlon``."""
        probs, cell_probs = self.combined(out)
        offsets = out["offsets"].view(len(cell_probs), -1, 2) if "offsets" in out else None
        latlon, _ = self.decode_cells(cell_probs, offsets)
        guess = {"latlon": latlon, "probs": probs, "cell_probs": cell_probs}
        if offsets is not None:
            guess["cell_offsets"] = offsets
        return guess

    def decode_cells(self, cell_probs: torch.Tensor, offsets: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Cell probabilities (N, K) and per-cell offsets (N, K, 2) -> (guessed (lat, lon), country probabilities).

        The country is the one with the most probability over its cells, then its most probable cell; with
        ``offset``, that cell's offset is added, kept inside the box of the cell's training points. Several
        views of one place decode their averaged cell probabilities and offsets here, as one view does.
        """
        inside, probs = cells_of_top_country(cell_probs, self.cell_country, self.num_classes)
        cell = inside.argmax(-1)
        latlon = self.cell_centroids[cell].clone()
        if self.hparams.offset and offsets is not None:
            offset = offsets[torch.arange(len(cell), device=cell.device), cell].double()
            box = self.cell_bounds[cell]
            latlon[:, 0] = (latlon[:, 0] + offset[:, 0]).clamp(box[:, 0], box[:, 1])
            latlon[:, 1] = torch.maximum(torch.minimum(latlon[:, 1] + offset[:, 1], box[:, 3]), box[:, 2])
        return latlon, probs

    def raw_outputs(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.heads(self.features(images))

    def decode_outputs(self, raw: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.guess(raw)

    # --- training -------------------------------------------------------------------------------------

    def shared_step(self, batch: dict, stage: str) -> torch.Tensor:
        hp = self.hparams
        out = self.heads(self.features(batch["image"]))
        true = batch["latlon"]
        cell_loss, distances = self.cell_loss(out["cell_logits"], true)
        loss = hp.cell_weight * cell_loss
        if "country_logits" in out and bool((batch["country"] >= 0).any()):
            loss = loss + hp.country_weight * F.cross_entropy(out["country_logits"], batch["country"],
                                                              label_smoothing=self._label_smoothing, ignore_index=-1)
        if "offsets" in out:
            nearest = distances.argmin(-1)
            n = torch.arange(len(nearest), device=nearest.device)
            delta = (true.double() - self.cell_centroids[nearest]).float()
            delta[:, 1] = (delta[:, 1] + 180.0) % 360.0 - 180.0  # across the antimeridian
            predicted = out["offsets"].view(len(nearest), -1, 2)[n, nearest]
            loss = loss + hp.offset_weight * F.smooth_l1_loss(predicted, delta)
        with torch.no_grad():
            self.score(stage, self.guess({k: v.detach() for k, v in out.items()}), batch)
        return loss

    # --- what the model says about itself ----------------------------------------------------------

    @property
    def guess_note(self) -> str:
        corrected = self.hparams.offset and self.offset_head is not None
        where = "the offset-corrected point inside a cell" if corrected else "the centroid of a cell"
        return f"multi-task model: lat/lon is {where} of the guessed country"

    def explain_score(self, pooled: torch.Tensor, target: str | None) -> tuple[torch.Tensor, str, str, float]:
        """A country's probability as the guess uses it (the country head's, or its cells' sum without one)."""
        probs, _ = self.combined(self.heads(pooled))
        return self._explain_class(probs.clamp_min(1e-30).log(), target)

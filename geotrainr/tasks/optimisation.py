"""The tasks' optimiser and learning-rate schedule: head and backbone groups, warm-up, cosine per step.

The optimiser comes from timm's factory (``create_optimizer_v2``: adamw, adam, or sgd with Nesterov
momentum 0.9); the schedule is a torch ``LambdaLR`` (cosine, with linear warm-up, stepped every batch),
``StepLR`` (a tenth every third of the epochs) or none, each with the head warm-up's hold of the backbone.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from timm.optim import create_optimizer_v2
from torch import nn

from geotrainr.errors import GeotrainrError

OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULERS = ("cosine", "step", "none")


class TaskConfigError(GeotrainrError, ValueError):
    """The task's arguments do not fit together (e.g. no class list, an unknown optimiser or schedule)."""


def param_groups(head: Sequence[nn.Parameter], backbone: Sequence[nn.Parameter], lr: float,
                 backbone_lr_mult: float) -> list[dict[str, Any]]:
    """The head's group at ``lr``, then (when it trains) the backbone's at ``lr * backbone_lr_mult``."""
    groups: list[dict[str, Any]] = [{"params": list(head), "lr": lr}]
    if backbone:
        groups.append({"params": list(backbone), "lr": lr * backbone_lr_mult})
    return groups


def make_optimizer(groups: list[dict[str, Any]], name: str, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """timm's optimiser ``name`` over ``groups`` (decoupled weight decay for adamw, L2 for adam and sgd)."""
    if name not in OPTIMIZERS:
        raise TaskConfigError(f"unknown optimizer {name!r} (adamw, adam or sgd)")
    return create_optimizer_v2(groups, opt=name, lr=lr, weight_decay=weight_decay, momentum=0.9)


def warmup_steps(total: int, epochs: float, max_epochs: int | None, keep_one: bool = True) -> int:
    """Steps of ``epochs`` out of ``total`` steps over ``max_epochs`` (at least one step left when ``keep_one``)."""
    if not epochs or not max_epochs:
        return 0
    steps = int(total * epochs / max_epochs)
    return min(total - 1, steps) if keep_one else min(total, steps)


def cosine_factor(warmup: int, total: int) -> Callable[[int], float]:
    """Step -> lr factor: linear warm-up from ``1/(warmup+1)`` to 1, then half a cosine to 0 at ``total``."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total - warmup)
        # float32 cosine, as the recipe's runs were trained with (math.cos differs in the last bits)
        return 0.5 * (1.0 + torch.cos(torch.tensor(math.pi * min(1.0, progress))).item())

    return factor


def configure(hp: Any, head: Sequence[nn.Parameter], backbone: Sequence[nn.Parameter], trainer: Any | None
              ) -> tuple[torch.optim.Optimizer | dict[str, Any], int]:
    """Lightning's ``configure_optimizers`` answer for a task's hyper-parameters, and the head warm-up's steps.

    ``trainer`` (None outside a Trainer) gives the step count of cosine and of the head warm-up.
    """
    groups = param_groups(head, backbone, hp.lr, hp.backbone_lr_mult)
    opt = make_optimizer(groups, hp.optimizer, hp.lr, hp.weight_decay)
    if hp.scheduler not in SCHEDULERS:
        raise TaskConfigError(f"unknown scheduler {hp.scheduler!r} (cosine, step or none)")
    max_epochs = trainer.max_epochs if trainer is not None else None
    wants_hold = bool(hp.get("head_warmup_epochs")) and bool(backbone)
    counted = trainer is not None and (hp.scheduler == "cosine" or wants_hold)
    total = max(1, int(trainer.estimated_stepping_batches)) if counted else 1
    hold = 0
    if wants_hold and trainer is not None and max_epochs:
        hold = min(total, int(round(total * hp.head_warmup_epochs / max_epochs)))

    def resting(step: int) -> float:
        return 0.0 if step < hold else 1.0

    # torch's and timm's schedulers lack a per-group hold (the head warm-up) and this warm-up's start; LambdaLR has both
    if hp.scheduler == "none":
        if not hold:
            return opt, hold
        sched = torch.optim.lr_scheduler.LambdaLR(opt, [lambda step: 1.0, resting])
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}, hold
    if hp.scheduler == "step":
        if hold:
            raise TaskConfigError("head_warmup_epochs needs scheduler cosine or none (step keeps whole epochs)")
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=max(1, max_epochs // 3 if max_epochs else 10), gamma=0.1)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}, hold
    factor = cosine_factor(warmup_steps(total, hp.warmup_epochs, max_epochs), total)
    lambdas = [factor, lambda step: resting(step) * factor(step)] if len(groups) > 1 else factor
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambdas)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}, hold

"""The optimiser and schedule of geotrainr.tasks.optimisation against the recipe's own formula, per shipped config."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import yaml

from geotrainr.config_files import CONFIG_DIR
from geotrainr.tasks import optimisation


class HP(dict):
    __getattr__ = dict.__getitem__


def recipe_factor(step: int, warmup: int, total: int) -> float:
    """The recipe's cosine as first written (float32 cosine), the reference the factory-built schedule must match."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + torch.cos(torch.tensor(torch.pi * min(1.0, progress))).item())


def settings(config: str) -> HP:
    cfg = yaml.safe_load((CONFIG_DIR / config).read_text())
    args = cfg["model"]["init_args"]
    hp = HP(optimizer="adamw", lr=1e-3, backbone_lr_mult=1.0, weight_decay=0.01, scheduler="cosine",
            warmup_epochs=0.0, head_warmup_epochs=0.0)
    hp.update({k: v for k, v in args.items() if k in hp})
    hp["max_epochs"] = cfg["trainer"]["max_epochs"]
    return hp


@pytest.mark.parametrize("config", sorted(p.name for p in CONFIG_DIR.glob("*.yaml")))
@pytest.mark.parametrize("variant", ["shipped", "cosine-warmup", "sgd-step"])
def test_learning_rates_per_step_follow_the_recipe(config, variant):
    hp = settings(config)
    if variant == "cosine-warmup":
        hp.update(scheduler="cosine", warmup_epochs=1.0, backbone_lr_mult=0.1, head_warmup_epochs=0.5)
    elif variant == "sgd-step":
        hp.update(optimizer="sgd", scheduler="step", head_warmup_epochs=0.0)
    steps_per_epoch = 7
    total = steps_per_epoch * hp.max_epochs
    trainer = SimpleNamespace(max_epochs=hp.max_epochs, estimated_stepping_batches=total)
    head, backbone = [torch.nn.Parameter(torch.ones(2))], [torch.nn.Parameter(torch.ones(3))]
    config_out, hold = optimisation.configure(hp, head, backbone, trainer)
    opt = config_out["optimizer"] if isinstance(config_out, dict) else config_out
    expected_type = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam, "sgd": torch.optim.SGD}[hp.optimizer]
    assert type(opt) is expected_type
    assert [g["params"] for g in opt.param_groups] == [head, backbone]
    assert [g["weight_decay"] for g in opt.param_groups] == [hp.weight_decay] * 2
    if hp.optimizer == "sgd":
        assert all(g["momentum"] == 0.9 and g["nesterov"] for g in opt.param_groups)
    base = [hp.lr, hp.lr * hp.backbone_lr_mult]
    expected_hold = min(total, int(round(total * hp.head_warmup_epochs / hp.max_epochs))) if hp.head_warmup_epochs else 0
    assert hold == expected_hold
    warmup = min(total - 1, int(total * hp.warmup_epochs / hp.max_epochs)) if hp.warmup_epochs else 0
    sched = config_out["lr_scheduler"]["scheduler"] if isinstance(config_out, dict) else None
    interval = config_out["lr_scheduler"]["interval"] if isinstance(config_out, dict) else None
    for step in range(total):
        epoch = step // steps_per_epoch
        if hp.scheduler == "cosine":
            f = recipe_factor(step, warmup, total)
            want = [base[0] * f, base[1] * (0.0 if step < hold else 1.0) * f]
        elif hp.scheduler == "step":
            want = list(base)
            for _ in range(epoch // max(1, hp.max_epochs // 3)):  # StepLR multiplies, as the recipe always did
                want = [w * 0.1 for w in want]
        else:
            want = [base[0], base[1] * (0.0 if step < hold else 1.0)]
        assert [g["lr"] for g in opt.param_groups] == want, (step, variant)  # exact, not approximate
        opt.step()
        if sched is not None and (interval == "step" or (step + 1) % steps_per_epoch == 0):
            sched.step()


def test_unknown_names_are_one_line():
    hp = settings("country.yaml")
    with pytest.raises(optimisation.TaskConfigError, match="unknown optimizer"):
        optimisation.configure(HP(hp, optimizer="lion"), [torch.nn.Parameter(torch.ones(1))], [], None)
    with pytest.raises(optimisation.TaskConfigError, match="unknown scheduler"):
        optimisation.configure(HP(hp, scheduler="poly"), [torch.nn.Parameter(torch.ones(1))], [], None)
    assert math.isclose(optimisation.cosine_factor(0, 10)(5), 0.5, abs_tol=1e-7)

"""The shipped configs (``geotrainr/configs``, installed with the package) and ``--config`` values that name them.

``geotrainr fit --config country`` works wherever geotrainr is installed; ``--config trainer/ddp``
and ``--config logger/wandb`` stack the others. A path to a file always wins over a shipped name,
so ``--config configs/country.yaml`` (a checkout's ``configs`` folder) and your own files work as before.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from geotrainr.errors import GeotrainrError

#: the shipped configs, package data of geotrainr
CONFIG_DIR = Path(__file__).resolve().parent / "configs"
#: configs that are not Trainer configs (W&B sweep definitions): not addressable by name
NOT_TRAINER_CONFIGS = ("sweeps",)


class ConfigNotFoundError(GeotrainrError, FileNotFoundError):
    """A ``--config`` value is neither a file nor the name of a shipped config."""


def shipped_configs() -> list[str]:
    """The names ``--config`` takes, e.g. ``country``, ``trainer/ddp``, ``logger/wandb``."""
    names = []
    for path in sorted(CONFIG_DIR.rglob("*.yaml")):
        rel = path.relative_to(CONFIG_DIR).with_suffix("")
        if rel.parts[0] not in NOT_TRAINER_CONFIGS:
            names.append(rel.as_posix())
    return names


def config_path(name: str) -> Path:
    """The file of the shipped config ``name`` (``country``, ``country.yaml``, ``trainer/ddp``)."""
    stem = name.removesuffix(".yaml")
    if stem in shipped_configs():
        return CONFIG_DIR / f"{stem}.yaml"
    raise ConfigNotFoundError(f"--config {name}: no such file, and not a shipped config "
                              f"(shipped: {', '.join(shipped_configs())})")


def _is_inline(value: str) -> bool:
    """jsonargparse also takes the config's text itself (``--config '{"trainer": ...}'``)."""
    return "\n" in value or value.lstrip().startswith("{") or ": " in value


def resolve_config(value: str) -> str:
    """A ``--config`` value as LightningCLI takes it: files and inline YAML unchanged, shipped names as their path."""
    if os.path.isfile(value) or _is_inline(value):
        return value
    return str(config_path(value))


def resolve_config_args(args: Sequence[str]) -> list[str]:
    """``args`` with every ``--config``/``-c`` value resolved (both ``--config X`` and ``--config=X``)."""
    out: list[str] = []
    expect = False
    for arg in args:
        if expect:
            out.append(resolve_config(arg))
            expect = False
        elif arg in ("--config", "-c"):
            out.append(arg)
            expect = True
        elif arg.startswith("--config="):
            out.append("--config=" + resolve_config(arg.split("=", 1)[1]))
        else:
            out.append(arg)
    return out


__all__ = ["CONFIG_DIR", "ConfigNotFoundError", "config_path", "resolve_config", "resolve_config_args", "shipped_configs"]

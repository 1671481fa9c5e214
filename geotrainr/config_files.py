"""The shipped configs (``geotrainr/configs``, installed with the package) and ``--config`` values that name them.

``geotrainr fit --config country`` works wherever geotrainr is installed; ``--config trainer/ddp``
and ``--config logger/wandb`` stack the others. A path to a file always wins over a shipped name,
so ``--config configs/country.yaml`` (a checkout's ``configs`` folder) and your own files work as before.
"""

from __future__ import annotations

import os
import re
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


#: jsonargparse parser mode of geotrainr's commands: YAML whose only booleans are true and false (YAML 1.2)
PARSER_MODE = "geotrainr-yaml"
_BOOL = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")
#: YAML 1.2 floats: 1e-3 is a number (YAML 1.1 wants a dot), as jsonargparse reads it too
_FLOAT = re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+][0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""", re.VERBOSE)


def _yaml12_loader():
    """A YAML loader for configs and command-line values where yes/no/on/off/y/n stay strings.

    YAML 1.1 (PyYAML's default, and jsonargparse's) reads ``NO`` as false, so a class list
    ``[DE, NO, SE]`` lost Norway. jsonargparse has no switch for this, only a loader per parser
    mode (``set_loader``): this one is its YAML loader with YAML 1.2's booleans (and, like it,
    YAML 1.2's floats and no timestamps).
    """
    import yaml
    from jsonargparse import get_loader

    replaced = {"tag:yaml.org,2002:bool", "tag:yaml.org,2002:float", "tag:yaml.org,2002:timestamp"}

    class Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
        pass

    Loader.yaml_implicit_resolvers = {first: [(tag, rx) for tag, rx in entries if tag not in replaced]
                                      for first, entries in yaml.SafeLoader.yaml_implicit_resolvers.items()}

    Loader.add_implicit_resolver("tag:yaml.org,2002:bool", _BOOL, list("tTfF"))
    Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))
    jsonargparse_yaml = get_loader("yaml")

    def load(stream: str):
        value = yaml.load(stream, Loader=Loader)
        if isinstance(value, dict) and value and all(v is None for v in value.values()):
            return jsonargparse_yaml(stream)  # its special cases for values such as "{a, b}" or "key:"
        return value

    return load, yaml.YAMLError


def register_parser_mode() -> str:
    """Make :data:`PARSER_MODE` known to jsonargparse (idempotent); returns its name."""
    from jsonargparse import set_loader

    load, error = _yaml12_loader()
    set_loader(PARSER_MODE, load, exceptions=(error,))
    return PARSER_MODE


__all__ = ["CONFIG_DIR", "PARSER_MODE", "ConfigNotFoundError", "config_path", "register_parser_mode", "resolve_config",
           "resolve_config_args", "shipped_configs"]

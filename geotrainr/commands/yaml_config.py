"""``--config FILE.yaml`` for an argparse verb: the file's keys are the verb's long options, the command line wins.

LightningCLI verbs have their own configs; this gives the argparse verbs with many flags (``scrape``)
the same habit: keep a run's settings in a file, override a few on the command line.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from geotrainr.errors import GeotrainrError


class ConfigFileError(GeotrainrError, ValueError):
    """A ``--config`` file that cannot be read or names options the verb does not have."""


class YamlConfigParser(argparse.ArgumentParser):
    """An ArgumentParser with ``--config FILE``: a YAML mapping of option names (``per_country`` or ``per-country``)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.add_argument("--config", metavar="FILE.yaml", default=None,
                          help="YAML file of options (keys are the long option names); the command line overrides it")

    def parse_args(self, args: Sequence[str] | None = None, namespace=None):
        args = list(args or [])
        path = _config_path(args)
        if path is not None:
            args = self._expand(path, args) + args
        return super().parse_args(args, namespace)

    def _options(self) -> dict[str, argparse.Action]:
        """Long option name (without dashes, ``_`` for ``-``) -> action."""
        out = {}
        for action in self._actions:
            for opt in action.option_strings:
                if opt.startswith("--") and opt != "--config":
                    out[opt[2:].replace("-", "_")] = action
        return out

    def _expand(self, path: Path, cli: list[str]) -> list[str]:
        import yaml

        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigFileError(f"--config {path}: no such file") from None
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
            raise ConfigFileError(f"--config {path}: not a readable YAML file ({str(e).splitlines()[0]})") from None
        if data is None:
            return []
        if not isinstance(data, dict):
            raise ConfigFileError(f"--config {path}: expected a mapping of option names to values")
        options = self._options()
        given = {options[a[2:].split("=")[0].replace("-", "_")].dest for a in cli
                 if a.startswith("--") and a[2:].split("=")[0].replace("-", "_") in options}
        given |= {other.dest for group in self._mutually_exclusive_groups for action in group._group_actions
                  if action.dest in given for other in group._group_actions}
        tokens: list[str] = []
        for key, value in data.items():
            name = str(key).replace("-", "_")
            if name not in options:
                raise ConfigFileError(f"--config {path}: unknown option {key!r} (see --help for the options)")
            action = options[name]
            if action.dest in given:
                continue  # the command line wins
            flag = action.option_strings[-1] if action.option_strings[-1].startswith("--") else action.option_strings[0]
            if action.nargs == 0:  # store_true and friends
                if not isinstance(value, bool):
                    raise ConfigFileError(f"--config {path}: {key} must be true or false, not {value!r}")
                if value:
                    tokens.append(flag)
            elif isinstance(action, argparse._AppendAction):
                for v in value if isinstance(value, list) else [value]:
                    tokens += [flag, str(v)]
            elif isinstance(value, list):
                tokens += [flag, ",".join(str(v) for v in value)]
            elif value is not None:
                tokens += [flag, str(value)]
        return tokens


def _config_path(args: list[str]) -> Path | None:
    for i, a in enumerate(args):
        if a == "--config" and i + 1 < len(args):
            return Path(args[i + 1])
        if a.startswith("--config="):
            return Path(a.split("=", 1)[1])
    return None

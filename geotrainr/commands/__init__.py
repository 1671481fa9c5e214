"""What every verb of the command line shares: its vocabulary's old spellings, the ``--force`` rule, ``--device``.

An old spelling keeps working for one release: it prints one line
``geotrainr VERB: warning: OLD is deprecated, use NEW`` on stderr and behaves like the new one.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from geotrainr.errors import GeotrainrError


class OutputExistsError(GeotrainrError, FileExistsError):
    """A verb would replace something that exists, and ``--force`` was not given."""


def warn_deprecated(prog: str, old: str, new: str) -> None:
    """The one deprecation line of the command line."""
    print(f"{prog}: warning: {old} is deprecated, use {new}", file=sys.stderr)


class Deprecated(argparse.Action):
    """An old spelling (an option, or an optional positional): warns once and stores into the new spelling's dest.

    ``new`` is the spelling to use instead, as the warning says it. A positional is only taken when given,
    so it never clears what the new option stored.
    """

    def __init__(self, option_strings: list[str], dest: str, new: str, store: str | None = None,
                 nargs: Any = None, const: Any = None, default: Any = argparse.SUPPRESS, **kwargs: Any):
        if not option_strings:
            nargs = "?" if nargs is None else nargs
        super().__init__(option_strings, dest, nargs=nargs, const=const, default=default, **kwargs)
        self.new = new
        self.store = store or dest

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        if not self.option_strings and values in (None, []):
            return
        old = option_string or f"the positional {self.metavar or self.dest.upper()}"
        warned = namespace.__dict__.setdefault("_deprecated_warned", set())
        if old not in warned:
            warned.add(old)
            warn_deprecated(parser.prog, old, self.new)
        current = getattr(namespace, self.store, None)
        if not self.option_strings and current not in (None, [], False) and current != values:
            parser.error(f"give {self.new} once ({old} is its old spelling)")
        setattr(namespace, self.store, self.const if self.nargs == 0 else values)


def is_old_spelling(action: argparse.Action) -> bool:
    """Whether a parser's action is a deprecated spelling (it names its replacement in ``new``)."""
    return isinstance(action, Deprecated) or bool(getattr(action, "new", None))


def deprecated(parser: argparse.ArgumentParser | argparse._ArgumentGroup, old: str, new: str, store: str,
               flag: bool = False, **kwargs: Any) -> argparse.Action:
    """Add ``old`` (an option like ``--rebuild``, or a positional name) as a hidden old spelling of ``new``.

    ``store``: the dest of the new spelling. ``flag``: a switch (``--rebuild``), stored as True.
    """
    options = dict(action=Deprecated, new=new, store=store, help=argparse.SUPPRESS, **kwargs)
    if flag:
        options.update(nargs=0, const=True)
    if old.startswith("-"):
        return parser.add_argument(old, dest=f"deprecated_{old.lstrip('-').replace('-', '_')}", **options)
    options["help"] = f"old spelling of {new} (deprecated)"
    return parser.add_argument(f"deprecated_{old}", metavar=old.upper(), **options)


def add_out(parser: argparse.ArgumentParser, what: str, **kwargs: Any) -> argparse.Action:
    """``-o/--out``: where the verb writes."""
    return parser.add_argument("-o", "--out", help=what, **kwargs)


def add_force(parser: argparse.ArgumentParser, what: str = "the output") -> argparse.Action:
    """``--force``: the one flag that lets a verb replace what exists."""
    return parser.add_argument("--force", action="store_true", help=f"replace {what} if it exists (without it: refused)")


def add_device(parser: argparse.ArgumentParser) -> argparse.Action:
    """``--device``: where the model runs."""
    return parser.add_argument("--device", default="auto",
                               help="cpu, cuda, cuda:1, mps (default auto: cuda if available else cpu)")


def refuse_existing(path: str | os.PathLike | None, force: bool, flag: str = "--out") -> None:
    """Raise :class:`OutputExistsError` when ``path`` exists (a file, or a folder holding files) and not ``force``."""
    if path is None or force or "://" in str(path):
        return
    p = Path(path)
    if p.is_dir() and not any(p.iterdir()):
        return
    if p.exists() or p.is_symlink():
        raise OutputExistsError(f"{flag} {path} exists; add --force to replace it")


def lightning_device(device: str | None) -> tuple[str, list[int] | None]:
    """``--device`` as Lightning's (accelerator, devices): cuda:1 -> ("gpu", [1]); devices None: Lightning's choice."""
    if device in (None, "", "auto"):
        return "auto", None
    name, _, number = str(device).partition(":")
    accelerator = {"cuda": "gpu", "gpu": "gpu", "cpu": "cpu", "mps": "mps"}.get(name.lower())
    if accelerator is None or (number and not number.isdigit()):
        raise DeviceError(f"--device {device}: use cpu, cuda, cuda:N or mps")
    return accelerator, [int(number)] if number else None


class DeviceError(GeotrainrError, ValueError):
    """A ``--device`` that names no device."""


def lightning_device_args(device: str) -> list[str]:
    """``--device`` as LightningCLI's trainer settings."""
    accelerator, devices = lightning_device(device)
    out = [f"--trainer.accelerator={accelerator}"]
    if devices is not None:
        out.append(f"--trainer.devices=[{devices[0]}]")
    elif accelerator != "auto":
        out.append("--trainer.devices=1")
    return out


def split_values(values: Sequence[str] | str | None) -> list[str]:
    """A repeatable option's values, each of which may be a comma list, as one list."""
    if values is None:
        return []
    values = [values] if isinstance(values, str) else values
    return [v.strip() for value in values for v in str(value).split(",") if v.strip()]

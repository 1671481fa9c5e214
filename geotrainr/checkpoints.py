"""The one place where checkpoints are read, checked and turned into models.

A checkpoint is data from somewhere else: it is loaded with ``torch.load(weights_only=True)``
(tensors and plain containers only, so a crafted pickle cannot run code), and the model class
is looked up by task kind in :data:`geotrainr.tasks.TASKS`, never imported by a name the file
gives. Every field the model is built from is type-checked first, so a damaged or foreign
file ends in one :class:`CheckpointError` line instead of a traceback.

Used by ``locate``, ``explain``, ``report``, ``geocells --checkpoint``, ``export``, ``init_from``
and the LightningCLI verbs' ``--ckpt_path``.
"""

from __future__ import annotations

import inspect
import os
import pickle
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from geotrainr.errors import GeotrainrError

#: Layout version of the ``checkpoint["geotrainr"]`` record. Files without the field are
#: format 1 (the layout it was introduced with); a newer format is refused, not guessed at.
FORMAT_VERSION = 1

#: Hyper-parameters that refer to files or the network when a task is trained; a loaded model
#: takes its weights (and geocells) from the checkpoint, so these are reset on load.
_TRAINING_ONLY = {"weights": None, "pretrained": False, "init_from": None, "geocells": None}


class CheckpointError(GeotrainrError, RuntimeError):
    """A file that is not a readable, trustworthy geotrainr checkpoint (or of the wrong kind)."""


def _unpickler_reason(e: Exception) -> str:
    """The unpickler's own reason, without torch's advice to load unsafely (which geotrainr never does)."""
    text = str(e)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0][:160] if lines else type(e).__name__


def read_checkpoint(path: str | os.PathLike) -> dict:
    """The checkpoint dict, loaded without executing anything, its geotrainr record validated."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if not path.is_file():
        raise CheckpointError(f"{path}: not a regular file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "global" in str(e).lower():  # torch's safe unpickler met a class or function it does not allow
            raise CheckpointError(
                f"{path}: refused: it holds Python objects beyond tensors and plain data, which could run code when "
                "loaded (geotrainr checkpoints never do)"
            ) from None
        raise CheckpointError(f"{path}: not a readable checkpoint, truncated or corrupt ({_unpickler_reason(e)})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"{path}: not a readable checkpoint, truncated or corrupt ({first})") from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path}: not a geotrainr checkpoint (a {type(ckpt).__name__}, not a dict)")
    if "geotrainr" not in ckpt:
        what = "a plain state dict" if ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()) else "a torch file"
        raise CheckpointError(f"{path}: {what}, not a geotrainr checkpoint (no task record); train one with 'geotrainr fit'")
    ckpt["geotrainr"] = validate_record(ckpt["geotrainr"], path)
    state = ckpt.get("state_dict")
    if not isinstance(state, dict) or not state or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise CheckpointError(f"{path}: its state_dict is missing or holds something other than named tensors")
    return ckpt


def validate_record(record: Any, where: str | os.PathLike = "checkpoint") -> dict:
    """The ``geotrainr`` record of a checkpoint (or an exported config), checked field by field."""
    from geotrainr.countries import country_table
    from geotrainr.preprocess import Preprocessing, PreprocessingError
    from geotrainr.tasks import TASKS

    if not isinstance(record, dict):
        raise CheckpointError(f"{where}: its geotrainr record is not a mapping")
    fmt = record.get("format", 1)
    if not isinstance(fmt, int) or fmt < 1:
        raise CheckpointError(f"{where}: bad format version {fmt!r}")
    if fmt > FORMAT_VERSION:
        raise CheckpointError(f"{where}: written in format {fmt} by a newer geotrainr (this one reads up to "
                              f"{FORMAT_VERSION}); upgrade geotrainr")
    task = record.get("task")
    if task not in TASKS:
        raise CheckpointError(f"{where}: unknown task kind {task!r} (known: {', '.join(sorted(TASKS))})")
    countries = record.get("countries")
    if not isinstance(countries, list) or not countries or not all(isinstance(c, str) for c in countries):
        raise CheckpointError(f"{where}: its class list (countries) is missing or not a list of country codes")
    table = country_table()
    unknown = [c for c in countries if c.upper() not in table]
    if unknown:
        raise CheckpointError(f"{where}: unknown country codes in its class list: {', '.join(map(str, unknown[:5]))}")
    if len(set(countries)) != len(countries):
        raise CheckpointError(f"{where}: its class list names a country twice")
    if not isinstance(record.get("backbone"), str) or not record["backbone"]:
        raise CheckpointError(f"{where}: no backbone name")
    try:
        Preprocessing.from_dict(record.get("preprocessing"))
    except PreprocessingError as e:
        raise CheckpointError(f"{where}: {e}") from None
    for key in ("head", "architecture"):
        if record.get(key) is not None and not isinstance(record[key], str):
            raise CheckpointError(f"{where}: bad {key} {record[key]!r}")
    return record


def task_class(record: dict) -> type:
    """The registered task class of a validated record (never a class named by the file)."""
    from geotrainr.tasks import TASKS

    return TASKS[record["task"]]


def _plain(value: Any) -> bool:
    """JSON-like data only: what a task's constructor may receive from a file."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return False


def _init_parameters(cls: type) -> set[str]:
    """Keyword arguments a task class accepts (its own and those of its bases, through ``**kwargs``)."""
    names: set[str] = set()
    for klass in cls.__mro__:
        if "__init__" not in vars(klass) or klass is nn.Module or not hasattr(klass, "task_kind"):
            continue
        names |= {p.name for p in inspect.signature(klass.__init__).parameters.values()
                  if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self"}
    return names


def task_arguments(cls: type, hparams: Any, record: dict, where: str | os.PathLike = "checkpoint") -> dict:
    """Constructor arguments for ``cls`` from saved hyper-parameters: known names and plain values only."""
    if not isinstance(hparams, dict):
        hparams = {}
    allowed = _init_parameters(cls)
    args = {}
    for key, value in hparams.items():
        if not isinstance(key, str) or key.startswith("_") or key not in allowed:
            continue  # CLI bookkeeping (_class_path, _instantiator) and names of other versions
        if not _plain(value):
            raise CheckpointError(f"{where}: hyper-parameter {key!r} is not plain data")
        args[key] = value
    args.update({k: v for k, v in _TRAINING_ONLY.items() if k in allowed})
    args["countries"] = list(record["countries"])
    args["backbone"] = _offline_backbone(record)
    if record.get("head") is not None and "head" in allowed:
        args["head"] = record["head"]
    return args


def _offline_backbone(record: dict) -> str:
    """The backbone to rebuild: a hub or folder name becomes its timm architecture, so loading needs no hub."""
    import timm

    name, arch = record["backbone"], record.get("architecture")
    hub_or_folder = name.startswith(("hf-hub:", "local-dir:")) or ("/" in name and not name.startswith("timm/"))
    return arch if hub_or_folder and arch and timm.is_model(arch) else name


def check_countries(saved: Sequence[str], data: Sequence[str], where: str | os.PathLike = "checkpoint") -> None:
    """Refuse a class list that differs from the checkpoint's: same codes in another order permute every label."""
    saved, data = [c.upper() for c in saved], [c.upper() for c in data]
    if saved == data:
        return
    if sorted(saved) == sorted(data):
        raise CheckpointError(f"{where}: the data's class list holds the checkpoint's {len(saved)} countries in another "
                              "order, which would permute every label; pass the checkpoint's order as data.countries")
    missing, extra = sorted(set(saved) - set(data)), sorted(set(data) - set(saved))
    raise CheckpointError(f"{where}: the checkpoint's {len(saved)} classes differ from the data's {len(data)} "
                          f"(only in the checkpoint: {', '.join(missing) or '-'}; only in the data: {', '.join(extra) or '-'})")


def build_model(record: dict, hparams: Any, state_dict: dict, where: str | os.PathLike = "checkpoint",
                extra: dict | None = None) -> nn.Module:
    """A task model in eval mode from a validated record, its hyper-parameters and weights."""
    cls = task_class(record)
    args = task_arguments(cls, hparams, record, where)
    try:
        model = cls(**args)
    except GeotrainrError as e:
        raise CheckpointError(f"{where}: cannot rebuild its model ({e})") from None
    except (TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{where}: cannot rebuild its model ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    from geotrainr.preprocess import Preprocessing

    model.preprocessing = Preprocessing.from_dict(record["preprocessing"])  # what it was trained with, as recorded
    try:
        model.on_load_checkpoint({"geotrainr": record, **(extra or {})})
        model.load_state_dict(state_dict, strict=True)
    except GeotrainrError as e:
        raise CheckpointError(f"{where}: {e}") from None
    except (RuntimeError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{where}: weights do not fit the model ({str(e).splitlines()[0]})") from None
    return model.eval()


def load_model(path: str | os.PathLike, kind: str | None = None, device: str | torch.device = "cpu") -> nn.Module:
    """A task model from a checkpoint file, in eval mode, without any weights download.

    Args:
        path: a checkpoint written by ``geotrainr fit``.
        kind: require this task kind (``country``, ``coords``, ``distance``).
        device: where to put the model.
    """
    ckpt = read_checkpoint(path)
    record = ckpt["geotrainr"]
    if kind is not None and record["task"] != kind:
        raise CheckpointError(f"{path}: a {record['task']} checkpoint, but a {kind} checkpoint is needed")
    return build_model(record, ckpt.get("hyper_parameters"), ckpt["state_dict"], path).to(device)


def copy_backbone_weights(path: str | os.PathLike, backbone: nn.Module) -> int:
    """Initialise ``backbone`` from a checkpoint's backbone (the study's task-aware pretraining).

    Returns the number of tensors copied; raises when the backbones do not match.
    """
    ckpt = read_checkpoint(path)
    source = {k[len("backbone.") :]: v for k, v in ckpt["state_dict"].items() if k.startswith("backbone.")}
    target = backbone.state_dict()
    if set(source) != set(target) or any(source[k].shape != target[k].shape for k in target):
        raise CheckpointError(f"{path}: its backbone ({ckpt['geotrainr']['backbone']}) does not match this task's backbone")
    backbone.load_state_dict(source, strict=True)
    return len(source)


__all__ = [
    "FORMAT_VERSION", "CheckpointError", "read_checkpoint", "validate_record", "task_class", "task_arguments",
    "check_countries", "build_model", "load_model", "copy_backbone_weights",
]

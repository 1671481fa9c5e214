"""``load_model(source)``: the one way a trained model gets in.

Every door goes through here: the MODEL of ``locate``, ``explain``, ``report``, ``export``, ``predict``
and ``geocells``, ``--ckpt_path`` (and its abbreviations, and ``ckpt_path:`` in a config) of
``fit``/``validate``/``test``/``predict`` and Lightning's own resume, ``init_from`` and
``geotrainr.load``. The files are read as plain data and checked (:mod:`geotrainr.artifact`); the
model is built only from geotrainr's registry of tasks (:data:`geotrainr.tasks.TASKS`) and timm's
registry of architectures:

- nothing a file names is imported, fetched or opened: no class path, no weights file, no geocells
  file, no Hub or folder backbone (a Hub backbone is rebuilt from its recorded timm architecture);
- the model is first built on the ``meta`` device (no memory) and its tensor shapes compared with the
  file's, so a record that asks for a huge model is refused before anything is allocated;
- the weights must be finite, and every class list the file carries must agree.
"""

from __future__ import annotations

import inspect
import os
import re
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from geotrainr.artifact import CONFIG_NAME, WEIGHTS_NAME, Artifact, CheckpointError, read_checkpoint, read_exported
from geotrainr.errors import GeotrainrError
from geotrainr.preprocess import Preprocessing
from geotrainr.runs import RUN_BEST
from geotrainr.tasks import TASKS, GeoTask

#: Hyper-parameters that name files or the network when a task is trained; a loaded model takes its
#: weights (and geocells) from its own file, so these are reset.
TRAINING_ONLY = {"weights": None, "pretrained": False, "init_from": None, "geocells": None}
#: where ``geotrainr fit`` keeps a run's best checkpoint, under the run folder
#: a Hugging Face Hub repository id
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[\w.-]{1,96}$")
_NON_REGISTRY_PREFIXES = ("hf-hub:", "hf_hub:", "local-dir:", "local_dir:")


def read_source(source: str | os.PathLike, **hub_kwargs) -> Artifact:
    """The artifact behind ``source``: a checkpoint file, a run folder (its best checkpoint), an exported
    folder, or a Hub repository id (its exported files, through the huggingface_hub cache)."""
    path = Path(source)
    if path.is_dir():
        if (path / CONFIG_NAME).exists() or (path / WEIGHTS_NAME).exists():
            return read_exported(path)
        if (path / RUN_BEST).exists():
            return read_checkpoint(path / RUN_BEST)
        raise CheckpointError(f"{source}: a folder that is neither an exported model ({CONFIG_NAME}, {WEIGHTS_NAME}) "
                              f"nor a run folder ({RUN_BEST})")
    if os.path.lexists(path) or path.suffix == ".ckpt":
        return read_checkpoint(path)
    if HUB_ID.match(str(source)):
        return read_exported(hub_snapshot(str(source), **hub_kwargs), where=str(source))
    raise CheckpointError(f"{source}: not a checkpoint file, an exported model folder or a Hub repository id (org/name)")


def hub_snapshot(repo_id: str, names: tuple[str, ...] = (CONFIG_NAME, WEIGHTS_NAME),
                 error: type[CheckpointError] = CheckpointError, **hub_kwargs) -> Path:
    """The local folder of a Hub repository's exported files ``names`` (downloaded, or from the cache when offline)."""
    from huggingface_hub import hf_hub_download

    try:
        files = [Path(hf_hub_download(repo_id=repo_id, filename=name, **hub_kwargs)) for name in names]
    except Exception as e:  # noqa: BLE001 - hub, network and cache errors all mean "cannot get it"
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise error(f"{repo_id}: cannot load it from the Hugging Face Hub or its cache ({type(e).__name__}: {first[:200]})") from None
    if len({f.parent for f in files}) != 1:
        raise error(f"{repo_id}: its {', '.join(names)} come from different revisions")
    return files[0].parent


def task_class(artifact: Artifact) -> type[GeoTask]:
    """The registered class of the artifact's task kind (the reader has checked any class path the file names)."""
    return TASKS[artifact.task]


def class_path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def offline_backbone(record: dict, where: str) -> str:
    """The timm registry architecture to rebuild: a Hub or folder backbone becomes its recorded architecture."""
    name, arch = record["backbone"].strip(), record.get("architecture")
    elsewhere = name.lower().startswith(_NON_REGISTRY_PREFIXES) or ("/" in name and not name.startswith("timm/"))
    if not elsewhere:
        registry = name.removeprefix("timm/")
        if timm.is_model(registry):
            return registry
    if isinstance(arch, str) and timm.is_model(arch):
        return arch
    raise CheckpointError(f"{where}: its backbone {name[:120]!r} is not an architecture of timm's registry and the file "
                          "names none to rebuild it from; loading never fetches or opens what a file names")


def _init_parameters(cls: type) -> set[str]:
    """Keyword arguments a task class accepts (its own and those of its bases, through ``**kwargs``)."""
    names: set[str] = set()
    for klass in cls.__mro__:
        if "__init__" not in vars(klass) or klass is nn.Module or not hasattr(klass, "task_kind"):
            continue
        names |= {p.name for p in inspect.signature(klass.__init__).parameters.values()
                  if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self"}
    return names


def task_arguments(cls: type, artifact: Artifact) -> dict[str, Any]:
    """Constructor arguments from the saved hyper-parameters: names the class takes, plain values, the
    record's class list and offline backbone, and nothing that names a file or the network."""
    allowed = _init_parameters(cls)
    args = {k: v for k, v in artifact.hparams.items() if not k.startswith("_") and k in allowed}
    args.update({k: v for k, v in TRAINING_ONLY.items() if k in allowed})
    args["countries"] = list(artifact.countries)
    args["backbone"] = offline_backbone(artifact.record, artifact.source)
    if artifact.record.get("head") is not None and "head" in allowed:
        args["head"] = artifact.record["head"]
    return args


def _construct(cls: type, args: dict, artifact: Artifact) -> GeoTask:
    """The task model with the record's preprocessing and geocells, its weights not yet loaded."""
    where = artifact.source
    try:
        model = cls(**args)
        model.preprocessing = Preprocessing.from_dict(artifact.record["preprocessing"])  # what it was trained with
        model.on_load_checkpoint({"geotrainr": artifact.record})  # geocells and their heads
    except GeotrainrError as e:
        raise CheckpointError(f"{where}: cannot rebuild its model ({e})") from None
    except (TypeError, ValueError, RuntimeError, KeyError, IndexError, OverflowError, MemoryError) as e:
        raise CheckpointError(f"{where}: cannot rebuild its model ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    return model


def _check_shapes(expected: dict[str, tuple[int, ...]], artifact: Artifact) -> None:
    got = artifact.shapes
    missing, unexpected = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
    wrong = sorted(k for k in set(expected) & set(got) if tuple(expected[k]) != tuple(got[k]))
    if missing or unexpected or wrong:
        detail = (f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}" if unexpected
                  else f"{wrong[0]} is {tuple(got[wrong[0]])}, the model's {tuple(expected[wrong[0]])}")
        raise CheckpointError(f"{artifact.source}: weights do not fit the model its record describes ({detail})")


def build_model(artifact: Artifact) -> GeoTask:
    """A task model in eval mode on the CPU from a checked artifact."""
    cls = task_class(artifact)
    args = task_arguments(cls, artifact)
    with torch.device("meta"):  # shapes first: nothing is allocated for a record that asks for too much
        dry = _construct(cls, args, artifact)
    _check_shapes({k: tuple(v.shape) for k, v in dry.state_dict().items()}, artifact)
    del dry
    model = _construct(cls, args, artifact)
    try:
        model.load_state_dict(artifact.state(), strict=True)
    except (RuntimeError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{artifact.source}: weights do not fit the model ({str(e).splitlines()[0][:200]})") from None
    return model.eval()


def load_model(source: str | os.PathLike, kind: str | None = None, device: str | torch.device = "cpu",
               **hub_kwargs) -> GeoTask:
    """A task model from a checkpoint, a run folder, an exported folder or a Hub id, in eval mode.

    Args:
        source: what ``geotrainr locate`` takes as MODEL.
        kind: require this task kind (``country``, ``coords``, ``distance``, ``multitask``).
        device: where to put the model.
        hub_kwargs: passed to ``huggingface_hub.hf_hub_download`` for Hub ids (``revision``, ``token``, ...).
    """
    artifact = read_source(source, **hub_kwargs)
    if kind is not None and artifact.task != kind:
        what = "checkpoint" if artifact.checkpoint is not None else "model"
        raise CheckpointError(f"{source}: a {artifact.task} {what}, but a {kind} {what} is needed")
    return build_model(artifact).to(device)


__all__ = ["TRAINING_ONLY", "build_model", "class_path", "hub_snapshot", "load_model", "offline_backbone", "read_source",
           "task_arguments", "task_class"]

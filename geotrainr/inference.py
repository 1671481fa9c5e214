"""Load a geotrainr checkpoint and predict from images with nothing else."""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import torch
from torch import nn

from geotrainr.errors import GeotrainrError


class CheckpointError(GeotrainrError, RuntimeError):
    """A file that is not a readable geotrainr checkpoint (or of the wrong task kind)."""


def read_checkpoint(path: str | os.PathLike) -> dict:
    """The raw checkpoint dict, with a clear error for missing, corrupt or foreign files."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - pickle, zip and EOF errors all mean "corrupt"
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(ckpt, dict) or "geotrainr" not in ckpt or "state_dict" not in ckpt:
        raise CheckpointError(f"{path}: not a geotrainr checkpoint (no task metadata); train one with 'geotrainr fit'")
    return ckpt


def load_model(path: str | os.PathLike, kind: str | None = None, device: str | torch.device = "cpu"):
    """Load a task from a checkpoint, in eval mode, without any weights download.

    Args:
        path: a checkpoint written by ``geotrainr fit``.
        kind: require this task kind (country, coords, distance).
        device: where to put the model.
    """
    ckpt = read_checkpoint(path)
    meta = ckpt["geotrainr"]
    if kind is not None and meta["task"] != kind:
        raise CheckpointError(f"{path}: a {meta['task']} checkpoint, but a {kind} checkpoint is needed")
    module_name, _, cls_name = meta["class_path"].rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), cls_name)
    except (ImportError, AttributeError):
        raise CheckpointError(f"{path}: unknown task class {meta['class_path']}") from None
    hparams = dict(ckpt.get("hyper_parameters", {}))
    hparams.update(countries=meta["countries"], weights=None, pretrained=False, init_from=None)
    hparams.pop("_instantiator", None)
    model = cls(**hparams)
    try:
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit the model ({str(e).splitlines()[0]})") from None
    return model.eval().to(device)


def copy_backbone_weights(path: str | os.PathLike, backbone: nn.Module) -> int:
    """Initialise ``backbone`` from the backbone of a checkpoint (the study's task-aware pretraining).

    Returns the number of tensors copied; raises when the backbones do not match.
    """
    ckpt = read_checkpoint(path)
    source = {k[len("backbone.") :]: v for k, v in ckpt["state_dict"].items() if k.startswith("backbone.")}
    target = backbone.state_dict()
    if set(source) != set(target) or any(source[k].shape != target[k].shape for k in target):
        raise CheckpointError(
            f"{path}: its backbone ({ckpt['geotrainr'].get('backbone')}) does not match this task's backbone"
        )
    backbone.load_state_dict(source, strict=True)
    return len(source)

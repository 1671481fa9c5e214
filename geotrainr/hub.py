"""Publishing models in the Hugging Face layout: ``model.safetensors``, ``config.json``, ``README.md``.

``geotrainr export MODEL --out DIR`` writes such a folder; ``huggingface-cli upload`` or
:meth:`ExportedModel.push_to_hub` publishes it. Reading one back, from a folder or a Hub repository,
is :func:`geotrainr.loading.load_model`'s, as for every other model file: nothing in an exported
folder is executed (the weights are safetensors, the config is JSON checked field by field, the
task class comes from the registry of task kinds).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import EvalResult, ModelCard, ModelCardData, ModelHubMixin
from safetensors.torch import save_file

from geotrainr.artifact import CONFIG_NAME, WEIGHTS_NAME, CheckpointError
from geotrainr.files import staged_folder
from geotrainr.loading import build_model, load_model, read_source
from geotrainr.onnx_runtime import ONNX_NAME, export_onnx
from geotrainr.metrics import metrics_table
from geotrainr.version import __version__


class ExportError(CheckpointError):
    """An export that cannot be written (e.g. the output folder holds something else)."""


def export_config(model, provenance: dict | None = None) -> dict:
    """config.json of a task model: its checkpoint record plus its hyper-parameters, all plain JSON.

    ``provenance``: ``metrics`` and ``data`` of the record a checkpoint was trained with, which a model
    loaded outside a Trainer cannot ask its Trainer for.
    """
    checkpoint: dict[str, Any] = {}
    model.on_save_checkpoint(checkpoint)
    record = dict(checkpoint["geotrainr"])
    record.update({k: v for k, v in (provenance or {}).items() if k in ("metrics", "data") and v})
    hparams = {k: v for k, v in dict(model.hparams).items() if not k.startswith("_")}
    return {**record, "library_name": "geotrainr", "geotrainr_version": __version__,
            "hyper_parameters": json.loads(json.dumps(hparams, default=str))}


class ExportedModel(ModelHubMixin, library_name="geotrainr", tags=["geotrainr", "geolocation", "image-classification"],
                    repo_url="https://pypi.org/project/geotrainr/"):
    """A task model with ``save_pretrained``/``from_pretrained``/``push_to_hub`` (Hugging Face's ModelHubMixin)."""

    def __init__(self, model: torch.nn.Module, provenance: dict | None = None, onnx: bool = False):
        self.model = model
        self.provenance = provenance or {}
        self.onnx = onnx  # model.onnx is written beside the weights (the card then says how to use it)

    def _save_pretrained(self, save_directory: Path) -> None:
        config = export_config(self.model, self.provenance)
        state = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        save_file(state, str(save_directory / WEIGHTS_NAME), metadata={"format": "pt", "library": "geotrainr"})
        (save_directory / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True), encoding="utf-8")
        build_model_card(config, self.onnx).save(save_directory / "README.md")

    @classmethod
    def _from_pretrained(cls, *, model_id: str, revision: str | None, cache_dir, force_download: bool,
                         local_files_only: bool, token, **model_kwargs) -> ExportedModel:
        """Through the one loader (huggingface_hub's own reading of config.json is never used)."""
        return cls(load_model(model_id, revision=revision, cache_dir=cache_dir, force_download=force_download,
                              local_files_only=local_files_only, token=token))

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs) -> ExportedModel:
        """A local exported folder or a Hub repository id, read by :func:`geotrainr.loading.load_model`."""
        hub = {k: v for k, v in kwargs.items() if k in ("revision", "cache_dir", "force_download", "local_files_only", "token")}
        return cls(load_model(pretrained_model_name_or_path, **hub))


#: The model card's body (Jinja, rendered by huggingface_hub); its YAML front matter is the ModelCardData.
MODEL_CARD_TEMPLATE = """---
{{ card_data }}
---

# geotrainr {{ what }} model

Single-image geolocation: {{ what }} over {{ countries | length }} countries with a `{{ backbone }}` backbone, trained with [geotrainr](https://pypi.org/project/geotrainr/) {{ version }}.

## Use

```python
import geotrainr
locator = geotrainr.load("THIS_FOLDER_OR_REPO_ID")
for guess in locator.locate(["photo.jpg"]):
    print(guess.country, guess.probability, guess.lat, guess.lon, guess.nearest_place)
```

or `geotrainr locate THIS_FOLDER_OR_REPO_ID photo.jpg`. Input: {{ preprocessing.image_size }} px centre crop, mean {{ preprocessing.mean }}, std {{ preprocessing.std }} (applied by geotrainr).

## Evaluation

{% if metrics -%}
Validation metrics of the exported checkpoint, as logged at its last validation:

| metric | value | meaning |
| --- | ---: | --- |
{% for name, value, meaning in metrics -%}
| `{{ name }}` | {{ value }} | {{ meaning }} |
{% endfor %}
{%- else -%}
No validation metrics were recorded in the checkpoint; run `geotrainr report` on your data.
{% endif %}
## Training data

{% if data -%}
- index: `{{ data.get("index", "?") }}`
{% if data.get("images") -%}
- images per split: {{ images_per_split }}
{% endif -%}
{% for source in data.get("sources") or [] -%}
- source: {{ source }}
{% endfor -%}
{% for licence in licences -%}
- licence: {{ licence }}
{% endfor -%}
{% for credit in data.get("attribution") or [] -%}
- attribution: {{ credit }}
{% endfor -%}
{% else -%}
Not recorded in the checkpoint.
{% endif -%}
{% if demo_data %}
Trained on geotrainr's offline demo data: aerial patches, not street imagery. Its figures say nothing about how it does on street photos.
{% endif %}
## Classes

{{ countries | join(", ") }}
{% if onnx %}
## ONNX

`model.onnx` holds the same network (backbone and heads, dynamic batch axis) for onnxruntime; its metadata repeats the classes and preprocessing of `config.json`. geotrainr decodes its outputs as for the torch weights: `geotrainr locate THIS_FOLDER photo.jpg --runtime onnx` or `geotrainr.load("THIS_FOLDER", runtime="onnx")`.
{% endif %}"""

TASK_NAMES = {"country": "country classification", "coords": "coordinate prediction", "distance": "distance prediction"}


def model_card(config: dict, onnx: bool = False) -> str:
    """The text of an exported model's README.md (see :func:`build_model_card`)."""
    return str(build_model_card(config, onnx))


def build_model_card(config: dict, onnx: bool = False) -> ModelCard:
    """README.md of an exported model: Hub metadata (licence, tags, validation metrics), use, data, classes.

    ``onnx``: the folder holds ``model.onnx`` too, and the card says how to run it.
    """
    data = config.get("data") or {}
    licences = data.get("licences") or []
    what = TASK_NAMES.get(config["task"], config["task"])
    if config.get("head") == "geocells":
        what = "coordinate prediction by geocell classification"
    metrics = {k.split("/", 1)[1]: float(v) for k, v in (config.get("metrics") or {}).items() if k.startswith("val/")}
    metrics.pop("loss", None)
    index_name = Path(str(data.get("index") or "training index")).name
    card_data = ModelCardData(
        library_name="geotrainr",
        pipeline_tag="image-classification",
        tags=["geotrainr", "geolocation", config["task"]],
        license="cc-by-sa-4.0" if any("CC-BY-SA" in str(x) for x in licences) else "other",
        model_name=f"geotrainr {what} model",
        eval_results=[EvalResult(task_type="image-classification", dataset_type="geotrainr-index",
                                 dataset_name=index_name, dataset_split="val", metric_type=k, metric_value=v)
                      for k, v in metrics.items()] or None,
    )
    return ModelCard.from_template(
        card_data,
        template_str=MODEL_CARD_TEMPLATE,
        what=what,
        countries=list(config["countries"]),
        backbone=config["backbone"],
        version=config.get("geotrainr_version", ""),
        preprocessing=config["preprocessing"],
        metrics=metrics_table(metrics),
        data=data,
        licences=licences,
        images_per_split=", ".join(f"{k} {v:,}" for k, v in (data.get("images") or {}).items()),
        demo_data=any(s in ("bluemarble", "relief") for s in data.get("sources") or []),
        onnx=onnx,
    )


#: what ``geotrainr export --format`` writes: the safetensors folder, or that folder and model.onnx too
EXPORT_FORMATS = ("safetensors", "onnx")

def export_model(checkpoint: str | os.PathLike, out: str | os.PathLike, force: bool = False,
                 format: str = "safetensors") -> Path:
    """Write a model (a checkpoint, a run folder, an exported folder) as an exported folder, atomically:
    a half-written folder is never left at ``out``.

    ``format="onnx"`` adds ``model.onnx`` (:mod:`geotrainr.onnx_runtime`) beside the safetensors.
    """
    if format not in EXPORT_FORMATS:
        raise ExportError(f"unknown export format {format!r} ({' or '.join(EXPORT_FORMATS)})")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ExportError(f"{out}: folder exists and is not empty (use --force to replace it)")
    artifact = read_source(checkpoint)
    model = build_model(artifact)
    onnx = format == "onnx"
    with staged_folder(out) as tmp:
        ExportedModel(model, {k: artifact.record.get(k) for k in ("metrics", "data")}, onnx=onnx).save_pretrained(tmp)
        if onnx:
            export_onnx(model, tmp / ONNX_NAME, tmp / WEIGHTS_NAME)
    return out


__all__ = ["CONFIG_NAME", "EXPORT_FORMATS", "WEIGHTS_NAME", "ExportedModel", "ExportError", "build_model_card",
           "export_config", "export_model", "model_card"]

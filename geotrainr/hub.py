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
import shutil
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import ModelHubMixin

from geotrainr.version import __version__
from geotrainr.artifact import CONFIG_NAME, WEIGHTS_NAME, CheckpointError
from geotrainr.files import replace_folder
from geotrainr.loading import build_model, load_model, read_source

#: Licence and attribution of the data sources geotrainr knows by their index ``source`` value.
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

    def __init__(self, model: torch.nn.Module, provenance: dict | None = None):
        self.model = model
        self.provenance = provenance or {}

    def _save_pretrained(self, save_directory: Path) -> None:
        from safetensors.torch import save_file

        config = export_config(self.model, self.provenance)
        state = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        save_file(state, str(save_directory / WEIGHTS_NAME), metadata={"format": "pt", "library": "geotrainr"})
        (save_directory / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True), encoding="utf-8")
        (save_directory / "README.md").write_text(model_card(config), encoding="utf-8")

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


def model_card(config: dict) -> str:
    """README.md of an exported model: front matter for the Hub, what it does, how well, on what data."""
    from geotrainr.metrics import metrics_table

    data = config.get("data") or {}
    licences = data.get("licences") or []
    tasks = {"country": "country classification", "coords": "coordinate prediction", "distance": "distance prediction"}
    what = tasks.get(config["task"], config["task"])
    if config.get("head") == "geocells":
        what = "coordinate prediction by geocell classification"
    lines = [
        "---",
        "library_name: geotrainr",
        "pipeline_tag: image-classification",
        "tags:", "- geotrainr", "- geolocation", f"- {config['task']}",
        f"license: {'cc-by-sa-4.0' if any('CC-BY-SA' in str(x) for x in licences) else 'other'}",
        "---",
        "",
        f"# geotrainr {what} model",
        "",
        f"Single-image geolocation: {what} over {len(config['countries'])} countries with a `{config['backbone']}` "
        f"backbone, trained with [geotrainr](https://pypi.org/project/geotrainr/) {config.get('geotrainr_version', '')}.",
        "",
        "## Use",
        "",
        "```python",
        "import geotrainr",
        "locator = geotrainr.load(\"THIS_FOLDER_OR_REPO_ID\")",
        "for guess in locator.locate([\"photo.jpg\"]):",
        "    print(guess.country, guess.probability, guess.lat, guess.lon, guess.nearest_place)",
        "```",
        "",
        "or `geotrainr locate THIS_FOLDER_OR_REPO_ID photo.jpg`. Input: "
        f"{config['preprocessing']['image_size']} px centre crop, mean {config['preprocessing']['mean']}, "
        f"std {config['preprocessing']['std']} (applied by geotrainr).",
        "",
        "## Evaluation",
        "",
    ]
    metrics = {k.split("/", 1)[1]: float(v) for k, v in (config.get("metrics") or {}).items() if k.startswith("val/")}
    if metrics:
        lines += ["Validation metrics of the exported checkpoint, as logged at its last validation:", "",
                  "| metric | value | meaning |", "| --- | ---: | --- |"]
        lines += [f"| `{k}` | {v} | {m} |" for k, v, m in metrics_table(metrics) if k != "loss"]
    else:
        lines.append("No validation metrics were recorded in the checkpoint; run `geotrainr report` on your data.")
    lines += ["", "## Training data", ""]
    if data:
        lines.append(f"- index: `{data.get('index', '?')}`")
        if data.get("images"):
            lines.append("- images per split: " + ", ".join(f"{k} {v:,}" for k, v in data["images"].items()))
        for s in data.get("sources") or []:
            lines.append(f"- source: {s}")
        for lic in licences:
            lines.append(f"- licence: {lic}")
        for a in data.get("attribution") or []:
            lines.append(f"- attribution: {a}")
    else:
        lines.append("Not recorded in the checkpoint.")
    if any(s in ("bluemarble", "relief") for s in data.get("sources") or []):
        lines += ["", "Trained on geotrainr's offline demo data: aerial patches, not street imagery. "
                  "Its figures say nothing about how it does on street photos."]
    lines += ["", "## Classes", "", ", ".join(config["countries"]), ""]
    return "\n".join(lines)


#: what ``geotrainr export --format`` writes: the safetensors folder, or that folder and model.onnx too
EXPORT_FORMATS = ("safetensors", "onnx")

ONNX_CARD = """
## ONNX

`model.onnx` holds the same network (backbone and heads, dynamic batch axis) for onnxruntime; its
metadata repeats the classes and preprocessing of `config.json`. geotrainr decodes its outputs as for
the torch weights: `geotrainr locate THIS_FOLDER photo.jpg --runtime onnx` or
`geotrainr.load("THIS_FOLDER", runtime="onnx")`.
"""


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
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        ExportedModel(model, {k: artifact.record.get(k) for k in ("metrics", "data")}).save_pretrained(tmp)
        if format == "onnx":
            from geotrainr.onnx_runtime import ONNX_NAME, export_onnx

            export_onnx(model, tmp / ONNX_NAME, tmp / WEIGHTS_NAME)
            with open(tmp / "README.md", "a", encoding="utf-8") as card:
                card.write(ONNX_CARD)
        replace_folder(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


__all__ = ["CONFIG_NAME", "EXPORT_FORMATS", "WEIGHTS_NAME", "ExportedModel", "ExportError", "export_config",
           "export_model", "model_card"]

"""Fast CPU inference: a task model's network as ONNX, run by onnxruntime, decoded by the task's own code.

``geotrainr export CKPT --out DIR --format onnx`` writes ``model.onnx`` beside ``model.safetensors``:
the network only (backbone and heads: :meth:`~geotrainr.tasks.base.GeoTask.raw_outputs`), with a
dynamic batch axis. Everything after it (softmax, country centres, geocell decoding, distances to
anchors) stays the task's :meth:`~geotrainr.tasks.base.GeoTask.decode_outputs`, in torch, shared by
both runtimes, so the two answer alike. The task model itself is rebuilt from ``config.json`` and
``model.safetensors`` as for the torch runtime: the decoding needs its buffers (class centres, cells,
anchors).

``model.onnx`` is data from somewhere else, checked before use: a regular file under a size limit,
no external data files (nothing it names is opened), one ``images`` input of the configured size,
and metadata (task, classes, preprocessing, outputs, a hash of the safetensors it was exported
with) that must match ``config.json`` and ``model.safetensors``. Finally a blank image must give
the same raw outputs in onnxruntime as in torch.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from geotrainr.artifact import CONFIG_NAME, WEIGHTS_NAME, CheckpointError, read_exported
from geotrainr.files import read_limited
from geotrainr.loading import HUB_ID, build_model, hub_snapshot

ONNX_NAME = "model.onnx"
INPUT_NAME = "images"
#: protobuf's own limit for one ONNX file: larger models would need external data files, which are refused
MAX_ONNX_BYTES = 2 * 1024**3
#: metadata_props keys written by :func:`export_onnx`
META = {
    "format": "geotrainr.format", "task": "geotrainr.task", "countries": "geotrainr.countries",
    "preprocessing": "geotrainr.preprocessing", "outputs": "geotrainr.outputs", "weights": "geotrainr.weights_sha256",
}
ONNX_FORMAT = 1
#: agreement of torch and onnxruntime on the load-time check (float32, a different operator order)
CHECK_ATOL = 1e-3


class OnnxError(CheckpointError):
    """A model.onnx that is missing, unreadable or does not belong to its exported folder."""


def _import_ort():
    try:
        import onnxruntime as ort
    except ImportError:
        raise OnnxError("the onnx runtime needs onnxruntime: pip install 'geotrainr[onnx]'") from None
    return ort


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class _Network(nn.Module):
    """The task's raw outputs as a tuple, in a fixed order: what torch.onnx.export traces."""

    def __init__(self, task: nn.Module, names: list[str]):
        super().__init__()
        self.task, self.names = task, names

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        raw = self.task.raw_outputs(images)
        return tuple(raw[n] for n in self.names)


def export_onnx(task: nn.Module, path: str | os.PathLike, weights_file: str | os.PathLike) -> Path:
    """Write ``task``'s network to ``path`` as ONNX with the metadata :func:`load_onnx` checks.

    ``weights_file``: the model.safetensors written beside it (its hash binds the two files together).
    """
    try:
        import onnxscript  # noqa: F401 - torch.onnx.export(dynamo=True) translates through it
    except ImportError:
        raise OnnxError("exporting to ONNX needs onnx and onnxscript: pip install 'geotrainr[onnx]'") from None
    task = task.eval().cpu()
    size = task.preprocessing.image_size
    example = torch.zeros(2, 3, size, size)
    with torch.inference_mode():
        names = list(task.raw_outputs(example))
    network = _Network(task, names).eval()
    batch = torch.export.Dim("batch", min=1, max=4096)
    # dynamo=True (torch.export, opset 20 with torch 2.14): exact to float rounding on every task. The older
    # TorchScript exporter (dynamo=False) is faster but deprecated and slated for removal.
    program = torch.onnx.export(network, (example,), input_names=[INPUT_NAME], output_names=names, dynamo=True,
                                dynamic_shapes={"images": {0: batch}}, verbose=False)
    meta = {
        META["format"]: str(ONNX_FORMAT),
        META["task"]: task.task_kind,
        META["countries"]: json.dumps(list(task.countries)),
        META["preprocessing"]: json.dumps(task.preprocessing.to_dict(), sort_keys=True),
        META["outputs"]: json.dumps(names),
        META["weights"]: file_sha256(Path(weights_file)),
    }
    program.model.metadata_props.update(meta)
    program.save(str(path), external_data=False)
    return Path(path)


class OnnxModel:
    """A task model whose network runs in onnxruntime; decoding, metrics and descriptions stay the task's.

    Stands in for the task model wherever :class:`~geotrainr.locator.Locator` and ``report`` use one
    (``predict_latlon``, ``countries``, ``preprocessing``, ``decode_cells``, ``update_metrics``, ...).
    """

    runtime = "onnx"

    def __init__(self, task: nn.Module, session: Any, outputs: list[str]):
        self.task, self.session, self.outputs = task.eval(), session, outputs

    def raw_outputs(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        x = np.ascontiguousarray(images.detach().to("cpu", torch.float32).numpy())
        arrays = self.session.run(self.outputs, {INPUT_NAME: x})
        return {n: torch.from_numpy(a) for n, a in zip(self.outputs, arrays)}

    def predict_latlon(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.task.decode_outputs(self.raw_outputs(images))

    def eval(self) -> OnnxModel:
        return self

    def to(self, device: str | torch.device) -> OnnxModel:
        if torch.device(device).type != "cpu":
            raise OnnxError(f"the onnx runtime runs on the CPU here, not on {device} (use --device cpu or --runtime torch)")
        return self

    def __getattr__(self, name: str):
        if name == "task":  # not set yet (during unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.task, name)

    def __repr__(self) -> str:
        return f"OnnxModel({self.task.task_kind}, outputs {', '.join(self.outputs)})"


def session_options(threads: int | None = None):
    """Few-core settings: one intra-op thread per core torch would use, every graph optimisation, sequential,
    and threads that sleep between runs instead of spinning: on a few shared cores a spinning pool takes
    them from photo decoding (between batches, same process) and from other processes."""
    ort = _import_ort()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or torch.get_num_threads()
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3  # errors only: warnings about unused initialisers are noise to users
    return opts


def _metadata(proto, where: str) -> dict[str, Any]:
    props = {p.key: p.value for p in proto.metadata_props}
    missing = [k for k in META.values() if k not in props]
    if missing:
        raise OnnxError(f"{where}: not exported by geotrainr (no {', '.join(missing)} in its metadata); "
                        "write it with 'geotrainr export MODEL --out DIR --format onnx'")
    try:
        meta = {k: props[key] for k, key in META.items()}
        for k in ("countries", "preprocessing", "outputs"):
            meta[k] = json.loads(meta[k])
        meta["format"] = int(meta["format"])
    except (json.JSONDecodeError, ValueError) as e:
        raise OnnxError(f"{where}: unreadable geotrainr metadata ({e})") from None
    if meta["format"] > ONNX_FORMAT:
        raise OnnxError(f"{where}: written in ONNX format {meta['format']} by a newer geotrainr; upgrade geotrainr")
    if not isinstance(meta["outputs"], list) or not meta["outputs"] or not all(isinstance(n, str) for n in meta["outputs"]):
        raise OnnxError(f"{where}: bad output list in its metadata")
    return meta


def read_onnx(onnx_file: Path, task: nn.Module, weights_file: Path, threads: int | None = None) -> OnnxModel:
    """Check ``onnx_file`` against the task model built from the same folder, and open it in onnxruntime."""
    import onnx
    from google.protobuf.message import DecodeError
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    ort = _import_ort()
    where = str(onnx_file)
    data = read_limited(onnx_file, MAX_ONNX_BYTES, "ONNX model", error=OnnxError)  # a regular file, bounded
    try:
        proto = onnx.load_model_from_string(data)  # from bytes: external data is never loaded
    except (DecodeError, ValueError, RuntimeError) as e:
        raise OnnxError(f"{where}: not a readable ONNX model, truncated or corrupt ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    if any(uses_external_data(t) for t in _get_all_tensors(proto)):
        raise OnnxError(f"{where}: refers to external data files, which geotrainr never writes nor opens")
    meta = _metadata(proto, where)
    expected = {"task": task.task_kind, "countries": list(task.countries),
                "preprocessing": json.loads(json.dumps(task.preprocessing.to_dict()))}
    for key, value in expected.items():
        if meta[key] != value:
            raise OnnxError(f"{where}: its {key} ({_short(meta[key])}) differs from config.json's ({_short(value)}); "
                            "export the model again with --format onnx")
    if meta["weights"] != file_sha256(weights_file):
        raise OnnxError(f"{where}: exported from other weights than {weights_file.name}; export the model again with --format onnx")
    graph = proto.graph
    initialisers = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initialisers]
    side = task.preprocessing.image_size
    shape = [d.dim_value if d.HasField("dim_value") else None for d in inputs[0].type.tensor_type.shape.dim] if inputs else []
    if len(inputs) != 1 or inputs[0].name != INPUT_NAME or shape[1:] != [3, side, side]:
        raise OnnxError(f"{where}: its input is not one '{INPUT_NAME}' batch of 3 x {side} x {side} images, as config.json says")
    if [o.name for o in graph.output] != meta["outputs"]:
        raise OnnxError(f"{where}: its outputs {[o.name for o in graph.output]} are not those its metadata lists")
    try:
        session = ort.InferenceSession(data, session_options(threads), providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own classes for invalid graphs
        raise OnnxError(f"{where}: onnxruntime cannot run it ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    model = OnnxModel(task, session, meta["outputs"])
    _check_agreement(model, where)
    return model


def _check_agreement(model: OnnxModel, where: str) -> None:
    """A blank image through both runtimes: the same output names and values, or the files do not belong together."""
    side = model.task.preprocessing.image_size
    x = torch.zeros(1, 3, side, side)
    with torch.inference_mode():
        want = model.task.raw_outputs(x)
    try:
        got = model.raw_outputs(x)
    except Exception as e:  # noqa: BLE001 - a graph that loads but fails to run
        raise OnnxError(f"{where}: onnxruntime cannot run it ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    if sorted(want) != sorted(got):
        raise OnnxError(f"{where}: outputs {sorted(got)}, but the {model.task.task_kind} model has {sorted(want)}")
    for name, value in want.items():
        if got[name].shape != value.shape or not torch.allclose(got[name].float(), value.float(), atol=CHECK_ATOL, rtol=CHECK_ATOL):
            raise OnnxError(f"{where}: its output {name!r} differs from the weights in model.safetensors; "
                            "export the model again with --format onnx")


def _short(value: Any, width: int = 60) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= width else text[: width - 3] + "..."


def _needs_export(source: str, what: str) -> OnnxError:
    return OnnxError(f"{source}: {what}; --runtime onnx needs an exported folder with {ONNX_NAME}: run "
                     f"'geotrainr export MODEL --out DIR --format onnx' first")


def _folder_files(source: str, hub_kwargs: dict) -> tuple[Path, Path, Path]:
    """config.json, model.safetensors and model.onnx of an exported folder or a Hub repository."""
    path = Path(source)
    if path.is_file() or source.endswith(".ckpt"):
        raise _needs_export(source, "a checkpoint file")
    if path.is_dir():
        if (path / "checkpoints" / "best.ckpt").is_file() and not (path / CONFIG_NAME).is_file():
            raise _needs_export(source, "a run folder")
        if not (path / ONNX_NAME).exists():
            raise _needs_export(source, f"no {ONNX_NAME} in this folder")
        return path / CONFIG_NAME, path / WEIGHTS_NAME, path / ONNX_NAME
    if not HUB_ID.match(source):
        raise OnnxError(f"{source}: not an exported model folder or a Hub repository id (org/name)")
    folder = hub_snapshot(source, (CONFIG_NAME, WEIGHTS_NAME, ONNX_NAME), OnnxError, **hub_kwargs)
    return folder / CONFIG_NAME, folder / WEIGHTS_NAME, folder / ONNX_NAME


def load_onnx(source: str | os.PathLike, kind: str | None = None, threads: int | None = None, **hub_kwargs) -> OnnxModel:
    """An exported folder (or Hub repository id) holding model.onnx, ready for onnxruntime on the CPU.

    The task model (for decoding) comes from the folder through the one loader's reader and builder."""
    source = str(source)
    config_file, weights_file, onnx_file = _folder_files(source, hub_kwargs)
    task = build_model(read_exported(config_file.parent, where=source))
    if kind is not None and task.task_kind != kind:
        raise OnnxError(f"{source}: a {task.task_kind} model, but a {kind} model is needed")
    return read_onnx(onnx_file, task, weights_file, threads)


__all__ = ["ONNX_NAME", "OnnxError", "OnnxModel", "export_onnx", "load_onnx", "read_onnx", "session_options"]

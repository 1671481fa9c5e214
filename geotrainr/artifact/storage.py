"""A model's files read into one :class:`Artifact`: a checkpoint, or an exported folder.

Checkpoints are torch zip files: before ``torch.load`` the archive is checked (every member stored,
not compressed; the pickle at most :data:`~geotrainr.artifact.reading.PICKLE_LIMIT`; no member
larger than the file), then loaded with ``weights_only=True`` (tensors and plain containers only,
so a crafted pickle cannot run code). An exported folder's ``config.json`` is bounded JSON, and
its ``model.safetensors`` header is read and checked before any tensor is. In both, every weight
must be finite and every class list the files carry must agree.
"""

from __future__ import annotations

import json
import os
import pickle
import struct
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from geotrainr.artifact.reading import (
    CONFIG_LIMIT,
    PICKLE_LIMIT,
    SAFETENSORS_HEADER_LIMIT,
    WEIGHTS_LIMIT,
    check_size,
    open_limited,
    read_limited,
    regular_file,
)
from geotrainr.artifact.record import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    CheckpointError,
    check_class_path,
    check_countries,
    plain,
    validate_record,
)

#: safetensors dtype names -> torch dtypes (the ones a geotrainr model holds; others are refused)
_SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                       "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
                       "BOOL": torch.bool}


@dataclass
class Artifact:
    """A model's record, hyper-parameters and weights, read and checked, not yet a model.

    ``shapes`` is known before the weights are read (:meth:`state` reads them, once), so a model
    can be compared with the file before either is allocated.
    """

    record: dict
    hparams: dict
    shapes: dict[str, tuple[int, ...]]
    source: str
    #: the whole checkpoint dict (optimiser and loop states too) for Lightning's resume; None for exports
    checkpoint: dict | None = None
    _read_state: Callable[[], dict[str, torch.Tensor]] | None = field(default=None, repr=False)
    _state: dict[str, torch.Tensor] | None = field(default=None, repr=False)

    @property
    def task(self) -> str:
        return self.record["task"]

    @property
    def countries(self) -> list[str]:
        return self.record["countries"]

    def state(self) -> dict[str, torch.Tensor]:
        """The weights by name, every floating tensor checked finite."""
        if self._state is None:
            state = self._read_state() if self._read_state is not None else {}
            check_finite(state, self.source)
            self._state = state
        return self._state


def check_finite(state: dict[str, torch.Tensor], where: str) -> None:
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(f"{where}: {len(bad)} weight tensor(s) hold NaN or infinite values ({bad[0]}, ...); refused")


def _hparams(value: Any, record: dict, where: str) -> dict:
    """Saved hyper-parameters: plain data under string keys; a class list among them must be the record's."""
    if value is None:
        return {}
    if not isinstance(value, dict) or not plain(value):
        raise CheckpointError(f"{where}: its hyper-parameters are not a mapping of plain data")
    saved = value.get("countries")
    if saved is not None:
        if not isinstance(saved, list) or not all(isinstance(c, str) for c in saved):
            raise CheckpointError(f"{where}: the class list of its hyper-parameters is not a list of country codes")
        check_countries(record["countries"], saved, where, other_name="its hyper-parameters")
    check_class_path(value, record["task"], where)
    return dict(value)


def _one_line(e: BaseException) -> str:
    text = str(e)
    if "WeightsUnpickler error:" in text:  # the unpickler's reason, without torch's advice to load unsafely
        text = text.split("WeightsUnpickler error:", 1)[1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0][:160] if lines else type(e).__name__


def _check_zip(path: Path, size: int) -> None:
    """A torch checkpoint is a zip of stored members: refuse compressed members (an inflating bomb), a huge pickle,
    or members that claim more bytes than the file holds, before torch reads anything."""
    try:
        with zipfile.ZipFile(open_limited(path, WEIGHTS_LIMIT, "checkpoint file")) as zf:
            members = zf.infolist()
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure to read the directory means "not a checkpoint"
        raise CheckpointError(f"{path}: not a readable checkpoint, truncated or corrupt ({_one_line(e)})") from None
    pickles = [m for m in members if m.filename.endswith("data.pkl")]
    if not pickles:
        raise CheckpointError(f"{path}: not a readable checkpoint, truncated or corrupt (no data.pkl in the archive)")
    for m in members:
        if m.compress_type != zipfile.ZIP_STORED or m.file_size > size:
            raise CheckpointError(f"{path}: not a checkpoint as torch writes them (member {m.filename[:60]!r} is "
                                  "compressed or larger than the file); refused")
    check_size(path, max(m.file_size for m in pickles), PICKLE_LIMIT, "checkpoint's pickled record")


def _torch_load(path: Path, what: str) -> Any:
    """``torch.load(weights_only=True)`` of a bounded, stored-members torch zip; failures are one line."""
    st = regular_file(path, what, WEIGHTS_LIMIT)
    _check_zip(path, st.st_size)
    try:
        with open_limited(path, WEIGHTS_LIMIT, what) as f:
            return torch.load(f, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "global" in str(e).lower():  # torch's safe unpickler met a class or function it does not allow
            raise CheckpointError(
                f"{path}: refused: it holds Python objects beyond tensors and plain data, which could run code when "
                "loaded (geotrainr checkpoints never do)"
            ) from None
        raise CheckpointError(f"{path}: not a readable checkpoint, truncated or corrupt ({_one_line(e)})") from None
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001 - a damaged file can fail in any of torch's readers
        raise CheckpointError(f"{path}: not a readable checkpoint, truncated or corrupt ({_one_line(e)})") from None


def read_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A plain state dict (named, finite tensors), read as a checkpoint is: what Lightning's ``ddp_spawn`` hands back
    from its workers in a temporary file."""
    state = _torch_load(Path(path), "weights file")
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise CheckpointError(f"{path}: not a state dict of named tensors")
    check_finite(state, str(path))
    return state


def read_packaged_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Backbone weights that an installed package ships (torch's legacy format, not a zip: no member check),
    read bounded and with ``weights_only=True`` like every other model file."""
    path = Path(path)
    with open_limited(path, WEIGHTS_LIMIT, "backbone weights file") as f:
        state = torch.load(f, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise CheckpointError(f"{path}: not a state dict of named tensors")
    return state


def read_checkpoint(path: str | os.PathLike) -> Artifact:
    """A checkpoint file, loaded without executing anything, its record, hyper-parameters and weights checked."""
    path = Path(path)
    ckpt = _torch_load(path, "checkpoint file")
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path}: not a geotrainr checkpoint (a {type(ckpt).__name__}, not a dict)")
    if "geotrainr" not in ckpt:
        what = "a plain state dict" if ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()) else "a torch file"
        raise CheckpointError(f"{path}: {what}, not a geotrainr checkpoint (no task record); train one with 'geotrainr fit'")
    record = validate_record(ckpt["geotrainr"], path)
    ckpt["geotrainr"] = record
    state = ckpt.get("state_dict")
    if not isinstance(state, dict) or not state or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise CheckpointError(f"{path}: its state_dict is missing or holds something other than named tensors")
    hparams = _hparams(ckpt.get("hyper_parameters"), record, str(path))
    artifact = Artifact(record, hparams, {k: tuple(v.shape) for k, v in state.items()}, str(path), ckpt,
                        _read_state=lambda: state)
    artifact.state()  # finite, before anything uses the file
    return artifact


def safetensors_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor shapes from a safetensors header, checked against the file's size before any tensor is read."""
    st = regular_file(path, WEIGHTS_NAME, WEIGHTS_LIMIT)
    with open_limited(path, WEIGHTS_LIMIT, WEIGHTS_NAME) as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path}: {WEIGHTS_NAME} is not readable safetensors (shorter than its header)")
        (n,) = struct.unpack("<Q", head)
        if n > min(SAFETENSORS_HEADER_LIMIT, st.st_size - 8):
            raise CheckpointError(f"{path}: {WEIGHTS_NAME} is not readable safetensors (its header claims {n:,} bytes)")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{path}: {WEIGHTS_NAME} is not readable safetensors (header: {e})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: {WEIGHTS_NAME} is not readable safetensors (header is not a mapping)")
    data_size, shapes = st.st_size - 8 - n, {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        ok = (isinstance(entry, dict) and entry.get("dtype") in _SAFETENSORS_DTYPES and isinstance(entry.get("shape"), list)
              and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in entry["shape"])
              and isinstance(entry.get("data_offsets"), list) and len(entry["data_offsets"]) == 2
              and all(isinstance(o, int) and not isinstance(o, bool) for o in entry["data_offsets"]))
        if ok:
            start, end = entry["data_offsets"]
            count = 1
            for d in entry["shape"]:
                count *= d
            ok = 0 <= start <= end <= data_size and end - start == count * _SAFETENSORS_DTYPES[entry["dtype"]].itemsize
        if not ok:
            raise CheckpointError(f"{path}: {WEIGHTS_NAME} is not readable safetensors (entry {str(name)[:60]!r} is "
                                  "malformed or lies outside the file)")
        shapes[name] = tuple(entry["shape"])
    return shapes


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        return load(read_limited(path, WEIGHTS_LIMIT, WEIGHTS_NAME))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: {WEIGHTS_NAME} is not readable safetensors ({_one_line(e)})") from None


def read_exported(folder: str | os.PathLike, where: str | None = None) -> Artifact:
    """An exported folder's ``config.json`` and the header of its ``model.safetensors``, checked; weights on demand."""
    folder = Path(folder)
    where = where or str(folder)
    config_file, weights_file = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    for f in (config_file, weights_file):
        if not f.exists():
            raise CheckpointError(f"{where}: no {f.name}; an exported geotrainr model has {CONFIG_NAME} and {WEIGHTS_NAME}")
    try:
        config = json.loads(read_limited(config_file, CONFIG_LIMIT, CONFIG_NAME).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{where}: {CONFIG_NAME} is not JSON ({e})") from None
    if not isinstance(config, dict) or config.get("library_name") != "geotrainr":
        raise CheckpointError(f"{where}: {CONFIG_NAME} is not a geotrainr model's config (library_name is not geotrainr)")
    record = validate_record({k: v for k, v in config.items()
                              if k not in ("hyper_parameters", "library_name", "geotrainr_version")}, where)
    hparams = _hparams(config.get("hyper_parameters"), record, where)
    shapes = safetensors_shapes(weights_file)
    return Artifact(record, hparams, shapes, where, None, _read_state=lambda: _load_safetensors(weights_file))


def copy_backbone_weights(path: str | os.PathLike, backbone: torch.nn.Module) -> int:
    """Initialise ``backbone`` from a checkpoint's backbone (the study's task-aware pretraining).

    Returns the number of tensors copied; raises when the backbones do not match.
    """
    artifact = read_checkpoint(path)
    source = {k[len("backbone."):]: v for k, v in artifact.state().items() if k.startswith("backbone.")}
    target = backbone.state_dict()
    if set(source) != set(target) or any(source[k].shape != target[k].shape for k in target):
        raise CheckpointError(f"{path}: its backbone ({artifact.record['backbone']}) does not match this task's backbone")
    backbone.load_state_dict(source, strict=True)
    return len(source)


__all__ = ["Artifact", "check_finite", "copy_backbone_weights", "read_weights", "read_checkpoint", "read_exported", "safetensors_shapes"]

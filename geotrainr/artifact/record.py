"""The ``geotrainr`` record of a model artifact, and the schema it is checked against.

A checkpoint carries it as ``checkpoint["geotrainr"]``, an exported folder as the top level of
``config.json``. It is data from somewhere else: every field is checked for type, range and size
before a model is built from it (:func:`validate_record`), and the task it names is a kind, looked
up in geotrainr's own registry, never a class or module to import.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

from geotrainr.countries import country_table
from geotrainr.errors import GeotrainrError
from geotrainr.preprocess import Preprocessing, PreprocessingError

#: Layout version of the record. Files without the field are format 1 (the layout it was introduced
#: with); a newer format is refused, not guessed at.
FORMAT_VERSION = 1
#: The task kinds a record may name, with the class geotrainr.tasks registers for each: a class path saved
#: in a file's hyper-parameters (LightningCLI writes one) must be that one, or the file is refused.
TASK_CLASSES = {
    "country": "geotrainr.tasks.country.CountryClassifier",
    "coords": "geotrainr.tasks.coords.CoordinateRegressor",
    "distance": "geotrainr.tasks.distance.DistancePredictor",
    "multitask": "geotrainr.tasks.multitask.MultiTaskGeolocator",
}
TASK_KINDS = tuple(TASK_CLASSES)
#: What ``head`` may say (coordinate models); None for the others.
HEAD_KINDS = ("linear", "geocells")
#: An exported model's files (the Hugging Face layout).
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"

#: Sizes a record may not exceed: checked before anything is allocated from it.
MAX_CLASSES = 512
MAX_CELLS = 1_000_000
MAX_NAME = 256
MAX_ITEMS = 10_000  # entries of the free-form metrics and data card
MAX_DEPTH = 8


class CheckpointError(GeotrainrError, RuntimeError):
    """A file that is not a readable, trustworthy geotrainr model (or of the wrong kind)."""


def plain(value: Any, depth: int = 0) -> bool:
    """JSON-like data only (None, bool, int, finite or not float, str, lists and string-keyed dicts), not too deep."""
    if depth > MAX_DEPTH:
        return False
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(plain(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and plain(v, depth + 1) for k, v in value.items())
    return False


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _codes(value: Any, where: str, what: str) -> list[str]:
    """A list of distinct known ISO codes (upper case), at most :data:`MAX_CLASSES` of them."""
    if not isinstance(value, list) or not value or len(value) > MAX_CLASSES or not all(isinstance(c, str) for c in value):
        raise CheckpointError(f"{where}: its {what} is missing or not a list of country codes")
    table = country_table()
    unknown = [c for c in value if c.strip().upper() not in table]
    if unknown:
        raise CheckpointError(f"{where}: unknown country codes in its {what}: {', '.join(map(str, unknown[:5]))}")
    codes = [c.strip().upper() for c in value]
    if len(set(codes)) != len(codes):
        raise CheckpointError(f"{where}: its {what} names a country twice")
    return codes


def _name(record: dict, key: str, where: str, required: bool) -> None:
    value = record.get(key)
    if value is None and not required:
        return
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_NAME:
        raise CheckpointError(f"{where}: no backbone name" if key == "backbone" and not value
                              else f"{where}: bad {key} {str(value)[:80]!r}")


def _check_geocells(cells: Any, countries: Sequence[str], where: str) -> None:
    """Lengths, numbers and countries of a geocells record, checked before any array is built from it."""
    if not isinstance(cells, dict):
        raise CheckpointError(f"{where}: its geocells are not a mapping")
    keys = ("centroids", "countries", "counts", "bounds")
    lists = [cells.get(k) for k in keys]
    if not all(isinstance(v, list) for v in lists):
        raise CheckpointError(f"{where}: its geocells lack {', '.join(k for k, v in zip(keys, lists) if not isinstance(v, list))}")
    k = len(lists[0])
    if not 0 < k <= MAX_CELLS or any(len(v) != k for v in lists):
        raise CheckpointError(f"{where}: its geocells' fields differ in length, are empty or exceed {MAX_CELLS:,} cells")
    centroids, codes, counts, bounds = lists
    if not all(isinstance(c, list) and len(c) == 2 and all(map(_number, c)) for c in centroids):
        raise CheckpointError(f"{where}: its geocell centroids are not (lat, lon) pairs of finite numbers")
    if not all(isinstance(b, list) and len(b) == 4 and all(map(_number, b)) for b in bounds):
        raise CheckpointError(f"{where}: its geocell bounds are not four finite numbers each")
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in counts):
        raise CheckpointError(f"{where}: its geocell counts are not counts")
    if not all(isinstance(c, str) for c in codes) or set(c.upper() for c in codes) - set(countries):
        raise CheckpointError(f"{where}: its geocells lie in countries outside its class list")
    for key in ("min_per_cell", "max_per_cell"):
        n = cells.get(key)
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise CheckpointError(f"{where}: its geocells' {key} {n!r} is not a positive count")


def validate_record(record: Any, where: str | os.PathLike = "checkpoint") -> dict:
    """The record, checked field by field; country codes come back upper case."""
    where = str(where)
    if not isinstance(record, dict) or not plain(record):
        raise CheckpointError(f"{where}: its geotrainr record is not a mapping of plain data")
    fmt = record.get("format", 1)
    if not isinstance(fmt, int) or isinstance(fmt, bool) or fmt < 1:
        raise CheckpointError(f"{where}: bad format version {fmt!r}")
    if fmt > FORMAT_VERSION:
        raise CheckpointError(f"{where}: written in format {fmt} by a newer geotrainr (this one reads up to "
                              f"{FORMAT_VERSION}); upgrade geotrainr")
    task = record.get("task")
    if task not in TASK_KINDS:
        raise CheckpointError(f"{where}: unknown task kind {str(task)[:80]!r} (known: {', '.join(sorted(TASK_KINDS))})")
    record = dict(record, countries=_codes(record.get("countries"), where, "class list (countries)"))
    _name(record, "backbone", where, required=True)
    _name(record, "architecture", where, required=False)
    head = record.get("head")
    if head is not None and head not in HEAD_KINDS:
        raise CheckpointError(f"{where}: bad head {str(head)[:80]!r} (linear or geocells)")
    try:
        Preprocessing.from_dict(record.get("preprocessing"))
    except PreprocessingError as e:
        raise CheckpointError(f"{where}: {e}") from None
    for key in ("metrics", "data"):
        value = record.get(key)
        if value is not None and (not isinstance(value, dict) or len(value) > MAX_ITEMS):
            raise CheckpointError(f"{where}: its {key} is not a small mapping")
    metrics = record.get("metrics") or {}
    if not all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in metrics.values()):
        raise CheckpointError(f"{where}: its metrics are not numbers")
    if record.get("geocells") is not None:
        _check_geocells(record["geocells"], record["countries"], where)
    return record


def check_countries(saved: Sequence[str], other: Sequence[str], where: str | os.PathLike = "checkpoint",
                    other_name: str = "the data") -> None:
    """Refuse a class list that differs from the model's: the same codes in another order permute every label."""
    saved, other = [str(c).upper() for c in saved], [str(c).upper() for c in other]
    if saved == other:
        return
    if sorted(saved) == sorted(other):
        hint = "; pass the checkpoint's order as data.countries" if other_name == "the data" else "; refused"
        raise CheckpointError(f"{where}: the class list of {other_name} holds the model's {len(saved)} countries in "
                              f"another order, which would permute every label{hint}")
    missing, extra = sorted(set(saved) - set(other)), sorted(set(other) - set(saved))
    raise CheckpointError(f"{where}: the model's {len(saved)} classes differ from the {len(other)} of {other_name} "
                          f"(only in the checkpoint: {', '.join(missing) or '-'}; only in {other_name}: {', '.join(extra) or '-'})")


def check_class_path(hparams: dict, task: str, where: str) -> None:
    """A class path among saved hyper-parameters must be the registered class of the record's task kind."""
    named = hparams.get("_class_path")
    expected = TASK_CLASSES[task]
    short = "geotrainr.tasks." + expected.rsplit(".", 1)[1]
    if named is not None and named not in (expected, short):
        raise CheckpointError(f"{where}: its hyper-parameters name the class {str(named)[:120]!r}, not the {task} "
                              f"task's {expected}; refused")


__all__ = ["CONFIG_NAME", "FORMAT_VERSION", "HEAD_KINDS", "MAX_CELLS", "MAX_CLASSES", "TASK_CLASSES", "TASK_KINDS", "WEIGHTS_NAME",
           "CheckpointError", "check_class_path", "check_countries", "plain", "validate_record"]

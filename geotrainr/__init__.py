"""geotrainr: single-image geolocation of street-level photos (PyTorch Lightning + timm).

The user API, imported on first use so that ``import geotrainr`` stays light::

    import geotrainr
    locator = geotrainr.load("runs/country/.../best.ckpt")   # or an exported folder, or a Hub repo id
    guesses = geotrainr.locate(locator, ["photo.jpg"])

The tasks (``CountryClassifier``, ``CoordinateRegressor``, ``DistancePredictor``, ``MultiTaskGeolocator``),
``load_model`` (a task model from any model source), ``GeoDataModule``, ``Locator``, ``Guess`` and
``Preprocessor`` are here too, each once.
"""

from __future__ import annotations

import importlib

from geotrainr.version import __version__

#: public name -> module it lives in
_API = {
    "Locator": "geotrainr.locator",
    "Guess": "geotrainr.predictions",
    "Preprocessor": "geotrainr.preprocess",
    "Preprocessing": "geotrainr.preprocess",
    "GeoDataModule": "geotrainr.data.datamodule",
    "GeoTask": "geotrainr.tasks",
    "CountryClassifier": "geotrainr.tasks",
    "CoordinateRegressor": "geotrainr.tasks",
    "DistancePredictor": "geotrainr.tasks",
    "TASKS": "geotrainr.tasks",
    "GeotrainrError": "geotrainr.errors",
    "CheckpointError": "geotrainr.artifact",
    "load_model": "geotrainr.loading",
    "MultiTaskGeolocator": "geotrainr.tasks",
    "export_model": "geotrainr.hub",
}


def load(source, device=None, kind: str | None = None, runtime: str = "torch"):
    """A :class:`~geotrainr.locator.Locator` from a checkpoint file, an exported folder or a Hub repository id.

    ``runtime="onnx"``: onnxruntime on the CPU, from an exported folder with model.onnx (``geotrainr export --format onnx``).
    """
    from geotrainr.locator import Locator

    return Locator.load(source, device=device, kind=kind, runtime=runtime)


def locate(model, images, top_k: int = 5, **kwargs):
    """Guesses for photos (paths, bytes or PIL images) with a Locator or anything :func:`load` takes."""
    from geotrainr.locator import Locator

    locator = model if isinstance(model, Locator) else load(model)
    return locator.locate(images, top_k=top_k, **kwargs)


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'geotrainr' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])


__all__ = ["__version__", "load", "locate", *_API]

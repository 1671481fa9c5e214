"""The geolocation tasks, one LightningModule each, sharing :class:`GeoTask`.

Every module of this package is imported here, so a task class defined in a new module
(with its own ``task_kind``) registers itself in :data:`TASKS`: the registry that checkpoints
and exported models are loaded through.
"""

import importlib
import pkgutil

from geotrainr.tasks.base import TASKS, GeoTask
from geotrainr.tasks.coords import CoordinateRegressor
from geotrainr.tasks.country import CountryClassifier
from geotrainr.tasks.distance import DistancePredictor
from geotrainr.tasks.multitask import MultiTaskGeolocator

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["GeoTask", "CountryClassifier", "CoordinateRegressor", "DistancePredictor", "MultiTaskGeolocator", "TASKS"]

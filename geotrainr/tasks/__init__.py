"""The geolocation tasks, one LightningModule each, sharing :class:`GeoTask`."""

from geotrainr.tasks.base import GeoTask
from geotrainr.tasks.coords import CoordinateRegressor
from geotrainr.tasks.country import CountryClassifier
from geotrainr.tasks.distance import DistancePredictor

TASKS = {cls.task_kind: cls for cls in (CountryClassifier, CoordinateRegressor, DistancePredictor)}

__all__ = ["GeoTask", "CountryClassifier", "CoordinateRegressor", "DistancePredictor", "TASKS"]

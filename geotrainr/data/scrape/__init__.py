"""Collecting a street dataset: GeoNames places -> metadata -> images -> index.parquet.

``config`` holds a run's settings, ``places`` samples candidate locations,
``planning`` picks the places still to do and estimates the cost, ``client``
speaks the Street View Static API (signing), ``mapillary`` the Mapillary API
v4, both through the retries, rate limit and budget of ``limits``;
``scheduler`` runs the places on threads (stop, Ctrl-C), ``backends`` fetch
URLs (stdlib HTTP or headless Chromium), ``writer`` keeps the output folder
resumable, ``run`` ties them together. The command is ``geotrainr scrape``.
"""

from geotrainr.data.scrape.client import Credentials, ImageSpec, StreetViewClient, sign_url
from geotrainr.data.scrape.config import ScrapeConfig
from geotrainr.data.scrape.exceptions import (
    BackendError,
    RequestDeniedError,
    RetriesExhaustedError,
    ScrapeError,
    redact,
)
from geotrainr.data.scrape.limits import Budget, RetryPolicy
from geotrainr.data.scrape.mapillary import MapillaryClient, MapillaryToken
from geotrainr.data.scrape.places import Place, PlacesError, load_places, read_geonames, sample_places
from geotrainr.data.scrape.run import Scraper, scrape
from geotrainr.data.scrape.scheduler import Stats

__all__ = [
    "BackendError",
    "Budget",
    "Credentials",
    "ImageSpec",
    "MapillaryClient",
    "MapillaryToken",
    "Place",
    "PlacesError",
    "RequestDeniedError",
    "RetriesExhaustedError",
    "RetryPolicy",
    "ScrapeConfig",
    "ScrapeError",
    "Scraper",
    "Stats",
    "StreetViewClient",
    "load_places",
    "read_geonames",
    "redact",
    "sample_places",
    "scrape",
    "sign_url",
]

"""Collecting a street dataset: GeoNames places -> metadata -> images -> index.parquet.

``places`` samples candidate locations, ``client`` speaks the Street View
Static API (signing, retries, rate limit, budget), ``mapillary`` the
Mapillary API v4 through the same retries and budget, ``backends`` fetch URLs
(stdlib HTTP or headless Chromium), ``writer`` keeps the output folder
resumable, ``run`` ties them together. The command is ``geotrainr scrape``.
"""

from geotrainr.data.scrape.client import Budget, Credentials, ImageSpec, RetryPolicy, StreetViewClient, sign_url
from geotrainr.data.scrape.exceptions import (
    BackendError,
    RequestDeniedError,
    RetriesExhaustedError,
    ScrapeError,
    redact,
)
from geotrainr.data.scrape.mapillary import MapillaryClient, MapillaryToken
from geotrainr.data.scrape.places import Place, PlacesError, load_places, read_geonames, sample_places
from geotrainr.data.scrape.run import ScrapeConfig, Scraper, Stats, scrape

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

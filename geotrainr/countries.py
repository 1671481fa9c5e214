"""Country table: ISO 3166-1 alpha-2 code, English name, centre, driving side.

Derived from GeoNames (CC-BY 4.0) by ``scripts/build_countries.py``: names and
continents from countryInfo, centres as the median of each country's places
with population >= 500. Kosovo is ``XK`` as in GeoNames.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

from geotrainr.errors import GeotrainrError


class UnknownCountryError(GeotrainrError, ValueError):
    """A country code that is not in the table."""


@dataclass(frozen=True)
class Country:
    iso2: str
    name: str
    continent: str
    lat: float
    lon: float
    drives_left: bool


@lru_cache(maxsize=1)
def country_table() -> dict[str, Country]:
    """All countries, keyed by upper-case ISO alpha-2 code."""
    text = resources.files("geotrainr.data").joinpath("countries.csv").read_text(encoding="utf-8")
    table = {}
    for row in csv.DictReader(text.splitlines()):
        table[row["iso2"]] = Country(
            row["iso2"], row["name"], row["continent"], float(row["lat"]), float(row["lon"]), row["drives_left"] == "1"
        )
    return table


def get_country(code: str) -> Country:
    """Look up one country by ISO alpha-2 code (case-insensitive)."""
    try:
        return country_table()[code.strip().upper()]
    except KeyError:
        raise UnknownCountryError(f"unknown country code {code!r} (expected ISO 3166-1 alpha-2, e.g. DE)") from None


def is_country_code(code: object) -> bool:
    return isinstance(code, str) and code.upper() in country_table()


def european_codes() -> list[str]:
    """ISO codes of every country GeoNames places on the European continent."""
    return sorted(c.iso2 for c in country_table().values() if c.continent == "EU")


def resolve_countries(spec: str | list[str] | tuple[str, ...]) -> list[str]:
    """Parse ``"europe"``, ``"DE,FR"`` or a list of codes into validated codes."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out: list[str] = []
    for item in (i.strip() for i in items):
        if not item:
            continue
        if item.lower() == "europe":
            out.extend(european_codes())
        else:
            out.append(get_country(item).iso2)
    return sorted(dict.fromkeys(out))


def class_list(codes) -> list[str]:
    """A class list in class order: validated upper-case codes, each once (a repeat would give one
    country two classes and make every label ambiguous)."""
    out = [get_country(str(c)).iso2 for c in codes]
    repeated = sorted({c for c in out if out.count(c) > 1})
    if repeated:
        raise UnknownCountryError(f"the class list names {', '.join(repeated)} more than once; list each country once")
    return out


def centres(codes: list[str]) -> list[tuple[float, float]]:
    """(lat, lon) centre of each code, in the given order."""
    return [(get_country(c).lat, get_country(c).lon) for c in codes]

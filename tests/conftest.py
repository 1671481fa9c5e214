"""Shared fixtures: tiny real images and indexes in tmp folders, the demo data built once per session."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from geotrainr.data.splits import assign_splits
from geotrainr.data.index import write_index

# A few real places: (country, lat, lon).
PLACES = [
    ("DE", 52.52, 13.40), ("DE", 48.14, 11.58), ("FR", 48.86, 2.35), ("FR", 43.30, 5.37),
    ("ES", 40.42, -3.70), ("ES", 41.39, 2.17), ("IT", 41.90, 12.50), ("IT", 45.46, 9.19),
    ("PL", 52.23, 21.01), ("GB", 51.51, -0.13), ("SE", 59.33, 18.07), ("PT", 38.72, -9.14),
]


def make_image(path: Path, seed: int, size: int = 48, fmt: str | None = None) -> Path:
    """A small image whose colour depends on ``seed`` (so classes are learnable)."""
    rng = np.random.default_rng(seed)
    base = (np.array([seed * 37 % 255, seed * 91 % 255, seed * 53 % 255]) + rng.integers(0, 30, (size, size, 3))).clip(0, 255)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(base.astype(np.uint8)).save(path, format=fmt)
    return path


def single_country_index(folder: Path) -> Path:
    """40 Croatian frames, 25 % validation: a city- or country-level dataset with one class."""
    rows = []
    for i in range(40):
        rel = f"images/HR_{i:02d}.jpg"
        make_image(folder / rel, seed=i % 5)
        rows.append({"image_path": rel, "lat": 45.0 + 0.05 * (i % 8), "lon": 15.0 + 0.1 * (i // 8), "country": "HR"})
    return write_index(assign_splits(pd.DataFrame(rows), "random", val=0.25, seed=0), folder / "index.parquet")


#: Six countries, one place each.
SIX = [PLACES[j] for j in (0, 2, 4, 6, 8, 9)]


def build_tiny_index(folder: Path, n: int = 48, val: float = 0.25) -> Path:
    """``n`` real-image rows over six countries (colour by country) with a seeded train/val split."""
    rows = []
    for i in range(n):
        cc, lat, lon = SIX[i % 6]
        rel = f"images/{cc}_{i:03d}.jpg"
        make_image(folder / rel, seed=i % 6)
        rows.append({"image_path": rel, "lat": lat + 0.01 * i, "lon": lon, "country": cc})
    df = assign_splits(pd.DataFrame(rows), "random", val=val, seed=0)
    return write_index(df, folder / "index.parquet")


@pytest.fixture
def tiny_index(tmp_path: Path) -> Path:
    """48 rows over 6 countries with a train/val split, images as files."""
    return build_tiny_index(tmp_path)


@pytest.fixture(scope="session")
def demo_index(tmp_path_factory) -> Path:
    """The real demo data, built once into a session folder."""
    from geotrainr.data.demo import ensure_demo

    out = tmp_path_factory.mktemp("demo") / "demo"
    path = ensure_demo(out)
    os.environ["GEOTRAINR_DEMO_DIR"] = str(out)
    return path


DEPRECATION = re.compile(r"^geotrainr [\w-]+: warning: .+ is deprecated, use ")


def error_lines(err: str) -> list[str]:
    """What a command printed on stderr, less the one line each deprecated spelling adds (old spellings are doors too)."""
    return [line for line in err.strip().splitlines() if not DEPRECATION.match(line)]

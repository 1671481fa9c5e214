"""Train/val/test splits that keep one place in one split: grouped views, distance blocks, seeded fractions.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from geotrainr.data.schema import IndexValidationError
from geotrainr.geo import EARTH_RADIUS_KM, km_per_degree_lat


#: the default notion of one place: views sharing a key (GROUP_KEYS) or this close
PLACE_RADIUS_M = 10.0


def block_cells(lat: np.ndarray, lon: np.ndarray, block_km: float) -> np.ndarray:
    """Integer id of the roughly ``block_km`` x ``block_km`` cell each point falls in."""
    if block_km <= 0:
        raise IndexValidationError(f"--block-km must be positive, got {block_km}")
    dlat = block_km / km_per_degree_lat()
    row = np.floor((np.asarray(lat) + 90.0) / dlat).astype(np.int64)
    band_centre = np.clip(-90.0 + (row + 0.5) * dlat, -89.9, 89.9)
    dlon = dlat / np.cos(np.deg2rad(band_centre))
    col = np.floor((np.asarray(lon) + 180.0) / dlon).astype(np.int64)
    return row * 1_000_000 + col


#: Columns whose equal values mark views of one place (one panorama, one capture sequence, a user's group).
GROUP_KEYS = ("group", "pano_id", "sequence")


def location_groups(df: pd.DataFrame, radius_m: float = 10.0) -> np.ndarray:
    """Integer group id per row: rows sharing a ``group``, ``pano_id`` or ``sequence`` value, or lying
    within ``radius_m`` metres of each other (transitively), get the same id.

    Built as the connected components of a graph whose nodes are the rows plus one node per key value,
    with an edge from each row to its key values and between rows closer than ``radius_m``.
    """

    n = len(df)
    if n == 0:
        return np.zeros(0, np.int64)
    src, dst, nodes = [], [], n
    for col in GROUP_KEYS:
        if col not in df.columns:
            continue
        values = df[col]
        present = values.notna().to_numpy() & (values.astype(str).str.strip() != "").to_numpy()
        if not present.any():
            continue
        codes, uniques = pd.factorize(values[present].astype(str))
        src.append(np.flatnonzero(present))
        dst.append(nodes + codes)
        nodes += len(uniques)
    if radius_m > 0:
        lat, lon = np.deg2rad(df["lat"].to_numpy(float)), np.deg2rad(df["lon"].to_numpy(float))
        xyz = np.stack((np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)), axis=-1)
        pairs = cKDTree(xyz).query_pairs(radius_m / 1000.0 / EARTH_RADIUS_KM, output_type="ndarray")
        if len(pairs):
            src.append(pairs[:, 0])
            dst.append(pairs[:, 1])
    if not src:
        return np.arange(n, dtype=np.int64)
    s, d = np.concatenate(src), np.concatenate(dst)
    graph = coo_matrix((np.ones(len(s), np.int8), (s, d)), shape=(nodes, nodes))
    _, labels = connected_components(graph, directed=False)
    return labels[:n].astype(np.int64)


def straddling_groups(df: pd.DataFrame, radius_m: float = 10.0) -> int:
    """How many places (see :func:`location_groups`) have views in more than one split: leaked places."""
    if "split" not in df.columns or len(df) == 0:
        return 0
    groups = location_groups(df, radius_m)
    per = pd.Series(df["split"].to_numpy()).groupby(groups).nunique()
    return int((per > 1).sum())


def _fractions_by_unit(units: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Per row, the position in [0, 1) of its unit in a random order of units weighted by their size."""
    uniq, inverse, counts = np.unique(units, return_inverse=True, return_counts=True)
    perm = rng.permutation(len(uniq))
    cum = np.cumsum(counts[perm]) - counts[perm] / 2.0
    unit_frac = np.empty(len(uniq))
    unit_frac[perm] = cum / len(units)
    return unit_frac[inverse]


def check_split_settings(val: float, test: float, block_km: float = 50.0, radius_m: float = PLACE_RADIUS_M) -> None:
    """Refuse split settings that cannot work (checked before any data is read)."""
    if not (0 <= val < 1 and 0 <= test < 1 and val + test < 1):
        raise IndexValidationError(f"split fractions must satisfy 0 <= val, test and val + test < 1 (got {val}, {test})")
    if not block_km > 0:
        raise IndexValidationError(f"--block-km must be positive, got {block_km}")
    if not radius_m > 0:
        raise IndexValidationError(f"--radius-m must be positive, got {radius_m} (views this close are one place; "
                                   f"the default is {PLACE_RADIUS_M:g} m)")


def assign_splits(
    df: pd.DataFrame,
    method: str = "group",
    val: float = 0.2,
    test: float = 0.0,
    seed: int = 0,
    block_km: float = 50.0,
    radius_m: float = 10.0,
    keep_test: bool = False,
) -> pd.DataFrame:
    """Add a ``split`` column: ``group`` per place (default), ``random`` per row, or ``block`` per geographic cell.

    ``group`` keeps the views of one place (same ``group``, ``pano_id`` or ``sequence``, or within
    ``radius_m`` metres) in one split; ``block`` keeps whole cells of about ``block_km`` km together,
    so that near-duplicates never straddle train and val. With ``keep_test`` the rows the source marks
    ``test`` (a published test set) stay there and the others are split.
    """
    check_split_settings(val, test, block_km, radius_m)
    rng = np.random.default_rng(seed)
    fixed = (df["split"] == "test").to_numpy() if keep_test and "split" in df.columns else np.zeros(len(df), bool)
    rest = df[~fixed]
    n = len(rest)
    if method == "random":
        order = rng.permutation(n)
        rank = np.empty(n, np.int64)
        rank[order] = np.arange(n)
        frac = (rank + 0.5) / max(n, 1)
    elif method == "block":
        frac = _fractions_by_unit(block_cells(rest["lat"].to_numpy(float), rest["lon"].to_numpy(float), block_km), rng)
    elif method == "group":
        frac = _fractions_by_unit(location_groups(rest, radius_m), rng) if n else np.zeros(0)
    else:
        raise IndexValidationError(f"unknown split method {method!r} (use group, random or block)")
    out = df.copy()
    split = np.full(len(df), "test", dtype=object)
    split[~fixed] = np.where(frac < test, "test", np.where(frac < test + val, "val", "train"))
    out["split"] = split
    return out

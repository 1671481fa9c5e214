"""Geodesy: the one place for distances, coordinate frames and scores, with one Earth radius.

Every function is written once over the array API that NumPy and torch share: given torch
tensors it computes with torch (on their device, inside autograd), given NumPy arrays, lists
or floats it computes with NumPy. Any broadcastable batch shape works, always in float64, so
that errors of a few metres survive even when the model itself runs in bf16.
"""

from __future__ import annotations

import math

import numpy as np
import torch

#: Mean Earth radius in km. geopy's ``great_circle`` uses the same value, so our
#: haversine agrees with it to rounding; OSV-5M and GeoEstimation use 6371.0.
EARTH_RADIUS_KM = 6371.009

#: GeoGuessr world-map score scale (PIGEON, OSV-5M): 5000 * exp(-d / 1492.7 km).
GEOSCORE_SCALE_KM = 1492.7
GEOSCORE_MAX = 5000.0

#: Accuracy thresholds used throughout the literature (street, city, region,
#: country, continent).
ACCURACY_THRESHOLDS_KM = (1.0, 25.0, 200.0, 750.0, 2500.0)

#: The seed study's coordinate frame: lat/lon relative to 50 N, 10 E, divided by 10.
SEED_ORIGIN = (50.0, 10.0)
SEED_SCALE = 10.0


def _xp(*values):
    """The array library of the inputs: torch when any is a tensor (results stay on its device), else NumPy."""
    return torch if any(isinstance(v, torch.Tensor) for v in values) else np


def _f64(x, xp=None):
    xp = xp or _xp(x)
    return torch.as_tensor(x).to(torch.float64) if xp is torch else np.asarray(x, dtype=np.float64)


def _stack(xp, parts, axis: int = -1):
    return torch.stack(parts, dim=axis) if xp is torch else np.stack(parts, axis=axis)


def haversine_km(lat1, lon1, lat2, lon2):
    """Great-circle distance in km between points given in degrees."""
    xp = _xp(lat1, lon1, lat2, lon2)
    phi1, phi2 = xp.deg2rad(_f64(lat1, xp)), xp.deg2rad(_f64(lat2, xp))
    dphi = phi2 - phi1
    dlmb = xp.deg2rad(_f64(lon2, xp) - _f64(lon1, xp))
    a = xp.sin(dphi / 2) ** 2 + xp.cos(phi1) * xp.cos(phi2) * xp.sin(dlmb / 2) ** 2
    return 2 * EARTH_RADIUS_KM * xp.arcsin(xp.sqrt(xp.clip(a, 0.0, 1.0)))


def great_circle_error_km(pred_latlon, true_latlon):
    """Great-circle error in km between ``(..., 2)`` arrays of (lat, lon)."""
    xp = _xp(pred_latlon, true_latlon)
    p, t = _f64(pred_latlon, xp), _f64(true_latlon, xp)
    return haversine_km(p[..., 0], p[..., 1], t[..., 0], t[..., 1])


def chord_to_km(chord):
    """Great-circle km of a straight-line (chord) distance between points on the unit sphere."""
    xp = _xp(chord)
    return 2 * EARTH_RADIUS_KM * xp.arcsin(xp.clip(_f64(chord, xp) / 2, 0.0, 1.0))


def wrap_lon(lon):
    """Longitude wrapped into [-180, 180)."""
    xp = _xp(lon)
    return xp.remainder(_f64(lon, xp) + 180.0, 360.0) - 180.0


def degree_error(pred_latlon, true_latlon):
    """The seed study's error in degrees: Euclidean in (lat, lon), lon wrapped.

    A degree is not a distance (a degree of longitude shrinks with latitude);
    report km first and keep this only to compare with the study's figures.
    """
    xp = _xp(pred_latlon, true_latlon)
    p, t = _f64(pred_latlon, xp), _f64(true_latlon, xp)
    dlat = p[..., 0] - t[..., 0]
    dlon = wrap_lon(p[..., 1] - t[..., 1])
    return xp.sqrt(dlat**2 + dlon**2)


def geoscore(distance_km):
    """GeoGuessr world-map points for a guess ``distance_km`` away (0..5000)."""
    xp = _xp(distance_km)
    return GEOSCORE_MAX * xp.exp(-_f64(distance_km, xp) / GEOSCORE_SCALE_KM)


def _origin(x):
    return x.new_tensor(SEED_ORIGIN) if isinstance(x, torch.Tensor) else np.asarray(SEED_ORIGIN, dtype=np.float64)


def to_seed_frame(latlon):
    """(lat, lon) degrees to the seed's frame: (lat - 50, lon - 10) / 10."""
    x = _f64(latlon)
    return (x - _origin(x)) / SEED_SCALE


def from_seed_frame(frame):
    """Inverse of :func:`to_seed_frame`: head output times 10 plus the origin."""
    x = _f64(frame)
    return x * SEED_SCALE + _origin(x)


def latlon_to_xyz(latlon):
    """(lat, lon) degrees to points on the unit sphere, shape ``(..., 3)``."""
    xp = _xp(latlon)
    x = xp.deg2rad(_f64(latlon, xp))
    lat, lon = x[..., 0], x[..., 1]
    return _stack(xp, (xp.cos(lat) * xp.cos(lon), xp.cos(lat) * xp.sin(lon), xp.sin(lat)))


def xyz_to_latlon(xyz):
    """Points in R^3 (any norm but zero) back to (lat, lon) degrees."""
    xp = _xp(xyz)
    v = _f64(xyz, xp)
    x, y, z = v[..., 0], v[..., 1], v[..., 2]
    lat = xp.arctan2(z, xp.sqrt(x * x + y * y))
    lon = xp.arctan2(y, x)
    return xp.rad2deg(_stack(xp, (lat, lon)))


def spherical_mean(latlon, weights=None):
    """Mean position of points ``(N, 2)`` on the sphere (optionally weighted)."""
    xp = _xp(latlon, weights)
    xyz = latlon_to_xyz(_f64(latlon, xp))
    if weights is None:
        mean = xyz.mean(-2)
    else:
        w = _f64(weights, xp)[..., None]
        mean = (xyz * w).sum(-2) / w.sum(-2)
    return xyz_to_latlon(mean)


def offset_latlon(lat, lon, north_km, east_km):
    """The point ``north_km`` north and ``east_km`` east of (lat, lon), on the local tangent plane (small offsets).

    Latitude is clamped to [-90, 90]; longitude is not wrapped.
    """
    xp = _xp(lat, lon, north_km, east_km)
    lat = _f64(lat, xp)
    coslat = xp.clip(xp.cos(xp.deg2rad(lat)), 1e-6, None)
    new_lat = lat + xp.rad2deg(_f64(north_km, xp) / EARTH_RADIUS_KM)
    new_lon = _f64(lon, xp) + xp.rad2deg(_f64(east_km, xp) / (EARTH_RADIUS_KM * coslat))
    return xp.clip(new_lat, -90.0, 90.0), new_lon


def km_per_degree_lat() -> float:
    """Length of one degree of latitude in km on the sphere of radius EARTH_RADIUS_KM."""
    return math.pi * EARTH_RADIUS_KM / 180.0

"""Geodesy: the one place for distances, coordinate frames and scores.

Every function takes torch tensors (or anything ``torch.as_tensor`` accepts)
of any broadcastable batch shape and computes in float64, so that errors of a
few metres survive even when the model itself runs in bf16.
"""

from __future__ import annotations

import math

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


def _f64(x) -> torch.Tensor:
    return torch.as_tensor(x).to(torch.float64)


def haversine_km(lat1, lon1, lat2, lon2) -> torch.Tensor:
    """Great-circle distance in km between points given in degrees."""
    phi1, phi2 = torch.deg2rad(_f64(lat1)), torch.deg2rad(_f64(lat2))
    dphi = phi2 - phi1
    dlmb = torch.deg2rad(_f64(lon2) - _f64(lon1))
    a = torch.sin(dphi / 2) ** 2 + torch.cos(phi1) * torch.cos(phi2) * torch.sin(dlmb / 2) ** 2
    return 2 * EARTH_RADIUS_KM * torch.asin(torch.sqrt(a.clamp(0.0, 1.0)))


def great_circle_error_km(pred_latlon, true_latlon) -> torch.Tensor:
    """Great-circle error in km between ``(..., 2)`` tensors of (lat, lon)."""
    p, t = _f64(pred_latlon), _f64(true_latlon)
    return haversine_km(p[..., 0], p[..., 1], t[..., 0], t[..., 1])


def wrap_lon(lon) -> torch.Tensor:
    """Longitude wrapped into [-180, 180)."""
    return torch.remainder(_f64(lon) + 180.0, 360.0) - 180.0


def degree_error(pred_latlon, true_latlon) -> torch.Tensor:
    """The seed study's error in degrees: Euclidean in (lat, lon), lon wrapped.

    A degree is not a distance (a degree of longitude shrinks with latitude);
    report km first and keep this only to compare with the study's figures.
    """
    p, t = _f64(pred_latlon), _f64(true_latlon)
    dlat = p[..., 0] - t[..., 0]
    dlon = wrap_lon(p[..., 1] - t[..., 1])
    return torch.sqrt(dlat**2 + dlon**2)


def geoscore(distance_km) -> torch.Tensor:
    """GeoGuessr world-map points for a guess ``distance_km`` away (0..5000)."""
    return GEOSCORE_MAX * torch.exp(-_f64(distance_km) / GEOSCORE_SCALE_KM)


def to_seed_frame(latlon) -> torch.Tensor:
    """(lat, lon) degrees to the seed's frame: (lat - 50, lon - 10) / 10."""
    x = _f64(latlon)
    origin = torch.tensor(SEED_ORIGIN, dtype=torch.float64, device=x.device)
    return (x - origin) / SEED_SCALE


def from_seed_frame(frame) -> torch.Tensor:
    """Inverse of :func:`to_seed_frame`: head output times 10 plus the origin."""
    x = _f64(frame)
    origin = torch.tensor(SEED_ORIGIN, dtype=torch.float64, device=x.device)
    return x * SEED_SCALE + origin


def latlon_to_xyz(latlon) -> torch.Tensor:
    """(lat, lon) degrees to points on the unit sphere, shape ``(..., 3)``."""
    x = torch.deg2rad(_f64(latlon))
    lat, lon = x[..., 0], x[..., 1]
    return torch.stack((torch.cos(lat) * torch.cos(lon), torch.cos(lat) * torch.sin(lon), torch.sin(lat)), dim=-1)


def xyz_to_latlon(xyz) -> torch.Tensor:
    """Points in R^3 (any norm but zero) back to (lat, lon) degrees."""
    v = _f64(xyz)
    x, y, z = v[..., 0], v[..., 1], v[..., 2]
    lat = torch.atan2(z, torch.sqrt(x * x + y * y))
    lon = torch.atan2(y, x)
    return torch.rad2deg(torch.stack((lat, lon), dim=-1))


def spherical_mean(latlon, weights=None) -> torch.Tensor:
    """Mean position of points ``(N, 2)`` on the sphere (optionally weighted)."""
    xyz = latlon_to_xyz(latlon)
    if weights is None:
        mean = xyz.mean(dim=-2)
    else:
        w = _f64(weights).unsqueeze(-1)
        mean = (xyz * w).sum(dim=-2) / w.sum(dim=-2)
    return xyz_to_latlon(mean)


def km_per_degree_lat() -> float:
    """Length of one degree of latitude in km on the sphere of radius EARTH_RADIUS_KM."""
    return math.pi * EARTH_RADIUS_KM / 180.0

import math

import numpy as np
import pytest
import torch
from geopy.distance import geodesic, great_circle

from geotrainr import geo


def random_pairs(n=400, seed=0):
    rng = np.random.default_rng(seed)
    lat1, lat2 = rng.uniform(-90, 90, n), rng.uniform(-90, 90, n)
    lon1, lon2 = rng.uniform(-180, 180, n), rng.uniform(-180, 180, n)
    special = np.array([
        [0.0, 179.9, 0.0, -179.9],     # across the antimeridian
        [10.0, 180.0, 10.0, -180.0],   # the same meridian written twice
        [90.0, 0.0, 89.0, 120.0],      # the north pole
        [-90.0, 0.0, -90.0, 45.0],     # the south pole twice
        [48.85, 2.35, 48.85, 2.35],    # identical points
        [0.0, 0.0, 0.0, 179.0],        # nearly antipodal
        [52.52, 13.40, 48.86, 2.35],   # Berlin - Paris
    ])
    return (np.concatenate([lat1, special[:, 0]]), np.concatenate([lon1, special[:, 1]]),
            np.concatenate([lat2, special[:, 2]]), np.concatenate([lon2, special[:, 3]]))


def test_haversine_matches_geopy_great_circle_and_geodesic():
    lat1, lon1, lat2, lon2 = random_pairs()
    ours = geo.haversine_km(torch.tensor(lat1), torch.tensor(lon1), torch.tensor(lat2), torch.tensor(lon2)).numpy()
    gc = np.array([great_circle((a, b), (c, d)).km for a, b, c, d in zip(lat1, lon1, lat2, lon2)])
    np.testing.assert_allclose(ours, gc, rtol=1e-6, atol=1e-6)
    far = gc > 1.0  # relative error of the sphere against the ellipsoid
    gd = np.array([geodesic((a, b), (c, d)).km for a, b, c, d in zip(lat1[far], lon1[far], lat2[far], lon2[far])])
    rel = np.abs(ours[far] - gd) / gd
    # A sphere cannot match the ellipsoid everywhere: along a meridian near the equator the
    # meridional radius is 6335 km, so any R near 6371 km is off by up to 0.56 % there.
    assert np.mean(rel < 0.005) >= 0.99
    assert rel.max() < 0.0057


def test_haversine_any_batch_shape_and_float64():
    lat = torch.rand(3, 4, 5, dtype=torch.float32) * 10
    d = geo.haversine_km(lat, lat, lat + 1, lat)
    assert d.shape == (3, 4, 5) and d.dtype == torch.float64
    assert torch.all(d > 100) and torch.all(d < 115)  # one degree of latitude is about 111 km
    assert geo.haversine_km(0.0, 0.0, 0.0, 0.0).item() == 0.0


def test_great_circle_error_pairs_of_latlon():
    pred = torch.tensor([[52.52, 13.40], [0.0, 0.0]])
    true = torch.tensor([[48.86, 2.35], [0.0, 0.0]])
    err = geo.great_circle_error_km(pred, true)
    assert err[0].item() == pytest.approx(great_circle((52.52, 13.40), (48.86, 2.35)).km, rel=1e-6)
    assert err[1].item() == 0.0


def test_seed_frame_round_trip_and_values():
    latlon = torch.tensor([[50.0, 10.0], [60.0, -10.0], [35.123456789, 44.987654321]], dtype=torch.float64)
    frame = geo.to_seed_frame(latlon)
    assert frame[0].tolist() == [0.0, 0.0]
    assert frame[1].tolist() == [1.0, -2.0]
    torch.testing.assert_close(geo.from_seed_frame(frame), latlon, rtol=0, atol=1e-12)


def test_xyz_round_trip_and_unit_norm():
    rng = np.random.default_rng(1)
    latlon = torch.tensor(np.stack([rng.uniform(-89.9, 89.9, 100), rng.uniform(-179.9, 179.9, 100)], 1))
    xyz = geo.latlon_to_xyz(latlon)
    torch.testing.assert_close(xyz.norm(dim=-1), torch.ones(100, dtype=torch.float64))
    torch.testing.assert_close(geo.xyz_to_latlon(xyz), latlon, rtol=0, atol=1e-9)
    torch.testing.assert_close(geo.latlon_to_xyz(torch.tensor([90.0, 0.0])), torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64), atol=1e-12, rtol=0)


def test_geoscore_formula():
    assert geo.geoscore(0.0).item() == 5000.0
    assert geo.geoscore(1492.7).item() == pytest.approx(5000 / math.e)
    assert geo.geoscore(torch.tensor([100.0, 1000.0])).tolist() == pytest.approx([5000 * math.exp(-100 / 1492.7), 5000 * math.exp(-1000 / 1492.7)])


def test_degree_error_wraps_longitude():
    assert geo.degree_error(torch.tensor([0.0, 179.0]), torch.tensor([0.0, -179.0])).item() == pytest.approx(2.0)
    assert geo.degree_error(torch.tensor([3.0, 4.0]), torch.tensor([0.0, 0.0])).item() == pytest.approx(5.0)


def test_spherical_mean_across_antimeridian():
    m = geo.spherical_mean(torch.tensor([[0.0, 179.0], [0.0, -179.0]]))
    assert abs(m[0].item()) < 1e-9 and abs(abs(m[1].item()) - 180.0) < 1e-9


def test_numpy_and_torch_inputs_share_one_core():
    """Every function is written once: NumPy in, NumPy out; tensors in, tensors out; the same numbers."""
    rng = np.random.default_rng(1)
    a = np.stack([rng.uniform(-80, 80, 50), rng.uniform(-180, 180, 50)], 1)
    b = np.stack([rng.uniform(-80, 80, 50), rng.uniform(-180, 180, 50)], 1)
    for fn in (geo.great_circle_error_km, geo.degree_error):
        n, t = fn(a, b), fn(torch.from_numpy(a), torch.from_numpy(b))
        assert isinstance(n, np.ndarray) and isinstance(t, torch.Tensor)
        np.testing.assert_allclose(n, t.numpy(), rtol=1e-12, atol=1e-9)
    for fn in (geo.latlon_to_xyz, geo.to_seed_frame, geo.from_seed_frame):
        np.testing.assert_allclose(fn(a), fn(torch.from_numpy(a)).numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(geo.spherical_mean(a), geo.spherical_mean(torch.from_numpy(a)).numpy(), atol=1e-9)
    np.testing.assert_allclose(geo.geoscore(np.array([10.0])), geo.geoscore(torch.tensor([10.0])).numpy())
    chord = np.linalg.norm(geo.latlon_to_xyz(a) - geo.latlon_to_xyz(b), axis=-1)
    np.testing.assert_allclose(geo.chord_to_km(chord), geo.great_circle_error_km(a, b), rtol=1e-9, atol=1e-6)


def test_offset_latlon_moves_by_the_asked_distance():
    lat, lon = geo.offset_latlon(48.0, 11.0, 3.0, 4.0)
    assert geo.haversine_km(48.0, 11.0, lat, lon) == pytest.approx(5.0, rel=1e-3)
    assert geo.offset_latlon(89.99, 0.0, 10.0, 0.0)[0] == 90.0

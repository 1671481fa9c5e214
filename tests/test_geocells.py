"""Geocells, the geocell head end to end (fit, checkpoint, locate, views, explain, report) and the ablation runner."""

import json
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from geotrainr.cli import main
from geotrainr.data.datamodule import GeoDataModule
from geotrainr.geo import great_circle_error_km, spherical_mean
from geotrainr.geocells import GeocellError, Geocells, decode, haversine_smoothed_targets
from geotrainr.artifact import read_checkpoint
from geotrainr.loading import load_model
from geotrainr.locator import Locator
from geotrainr.multiview import group
from geotrainr.tasks import CoordinateRegressor
from geotrainr.tasks.base import TaskConfigError

ROOT = Path(__file__).resolve().parents[1]


def scattered_points(seed=0):
    """Uneven clouds of points in four countries (one of them tiny), shuffled."""
    rng = np.random.default_rng(seed)
    spec = {"FR": (46.5, 2.5, 260), "DE": (51.0, 10.0, 190), "LU": (49.7, 6.1, 4), "PT": (39.5, -8.0, 45)}
    pts, codes = [], []
    for code, (lat, lon, n) in spec.items():
        pts.append(np.column_stack([lat + rng.normal(0, 1.5, n), lon + rng.normal(0, 2.0, n)]))
        codes += [code] * n
    pts = np.vstack(pts)
    order = rng.permutation(len(pts))
    return pts[order], [codes[i] for i in order]


def members(cells: Geocells, pts: np.ndarray, codes: list[str]) -> list[np.ndarray]:
    """The training points of each cell: those inside its bounds, of its country (cells of a country do not share points)."""
    codes = np.asarray(codes)
    out = []
    for (lat0, lat1, lon0, lon1), code in zip(cells.bounds, cells.countries):
        inside = (codes == code) & (pts[:, 0] >= lat0) & (pts[:, 0] <= lat1) & (pts[:, 1] >= lon0) & (pts[:, 1] <= lon1)
        out.append(pts[inside])
    return out


def test_cells_stay_inside_countries_and_respect_the_limits():
    pts, codes = scattered_points()
    cells = Geocells.build(pts, codes, min_per_cell=10, max_per_cell=40)
    totals = {c: codes.count(c) for c in set(codes)}
    per_country = {}
    for code, n in zip(cells.countries, cells.counts):
        per_country[code] = per_country.get(code, 0) + int(n)
    assert per_country == totals  # every point in exactly one cell, and a cell's points all of its country
    for code, n in zip(cells.countries, cells.counts):
        assert n <= 40
        assert n >= 10 or (totals[code] < 10 and cells.countries.count(code) == 1)  # LU: 4 points, one cell
    assert cells.countries.count("FR") >= 260 // 40 and cells.countries.count("PT") >= 2
    # centroids are the spherical means of the cells' points, not box centres
    codes_arr = np.asarray(codes)
    for k in (0, len(cells) // 2, len(cells) - 1):
        lat0, lat1, lon0, lon1 = cells.bounds[k]
        assert lat0 <= cells.centroids[k, 0] <= lat1 and lon0 <= cells.centroids[k, 1] <= lon1
    fr = [k for k, c in enumerate(cells.countries) if c == "FR"]
    weighted = spherical_mean(torch.tensor(cells.centroids[fr]), weights=torch.tensor(cells.counts[fr], dtype=torch.float64))
    assert great_circle_error_km(weighted, spherical_mean(torch.tensor(pts[codes_arr == "FR"]))) < 1.0


def test_cells_are_deterministic_and_survive_files_and_checkpoints(tmp_path):
    pts, codes = scattered_points()
    a = Geocells.build(pts, codes, 10, 40)
    order = np.random.default_rng(1).permutation(len(pts))
    b = Geocells.build(pts[order], [codes[i] for i in order], 10, 40)
    assert a.countries == b.countries and np.array_equal(a.centroids, b.centroids) and np.array_equal(a.counts, b.counts)
    back = Geocells.load(a.save(tmp_path / "cells.json"))
    assert back.countries == a.countries and np.allclose(back.centroids, a.centroids, atol=1e-6)
    with pytest.raises(GeocellError, match="half of max_per_cell"):
        Geocells.build(pts, codes, 30, 40)
    with pytest.raises(GeocellError, match="no training points"):
        Geocells.build(np.zeros((0, 2)), [], 1, 10)
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(GeocellError, match="not a geocells"):
        Geocells.load(tmp_path / "bad.json")


def test_smoothed_targets_sum_to_one_and_peak_at_the_nearest_cell():
    pts, codes = scattered_points()
    cells = Geocells.build(pts, codes, 10, 40)
    true = torch.tensor([[48.85, 2.35], [52.5, 13.4], [38.7, -9.1]], dtype=torch.float64)
    d = cells.distances_km(true)
    for tau in (10.0, 75.0, 500.0):
        t = haversine_smoothed_targets(d, tau)
        torch.testing.assert_close(t.sum(1), torch.ones(3, dtype=torch.float64))
        assert torch.equal(t.argmax(1), d.argmin(1))
    sharp, flat = haversine_smoothed_targets(d, 10.0), haversine_smoothed_targets(d, 500.0)
    assert (sharp.max(1).values > flat.max(1).values).all()  # a larger tau spreads the mass
    k = int(d[0].argmin())
    ratio = haversine_smoothed_targets(d, 75.0)[0] / haversine_smoothed_targets(d, 75.0)[0, k]
    torch.testing.assert_close(ratio, torch.exp(-(d[0] - d[0, k]) / 75.0))  # exp(-(d_i - min d) / tau)
    with pytest.raises(GeocellError):
        haversine_smoothed_targets(d, 0.0)


def test_decoding_keeps_the_guess_inside_the_guessed_country():
    centroids = torch.tensor([[48.0, 2.0], [45.0, 5.0], [52.0, 10.0]], dtype=torch.float64)
    country = torch.tensor([0, 0, 1])
    # the single most probable cell is German, but France has more probability in all
    p = torch.tensor([[0.35, 0.25, 0.40]])
    latlon, probs = decode(p, centroids, country, 2)
    torch.testing.assert_close(probs, torch.tensor([[0.60, 0.40]]))
    assert torch.equal(latlon[0], centroids[0])
    latlon2, _ = decode(p, centroids, country, 2, top_k=2)  # weighted mean of the two French cells
    assert 45.0 < float(latlon2[0, 0]) < 48.0 and 2.0 < float(latlon2[0, 1]) < 5.0


def fit_geocells(index, tmp_path, epochs=12):
    L.seed_everything(0)
    dm = GeoDataModule(str(index), batch_size=8, num_workers=0, augment=False)
    model = CoordinateRegressor(countries=dm.countries, backbone="test_efficientnet", weights=None, image_size=32,
                                head="geocells", freeze_backbone=False, min_per_cell=2, max_per_cell=4, lr=0.01)
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(model, dm)
    return trainer, model, dm


def test_tiny_fit_beats_the_mean_location_and_round_trips(tiny_index, tmp_path):
    trainer, model, dm = fit_geocells(tiny_index, tmp_path)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    train, val = dm.frames["train"], dm.frames["val"]
    centre = spherical_mean(torch.tensor(train[["lat", "lon"]].to_numpy()))
    baseline = great_circle_error_km(centre.expand(len(val), 2), torch.tensor(val[["lat", "lon"]].to_numpy())).median().item()
    assert metrics["val/err_km_median"] < 0.3 * baseline
    assert metrics["val/acc1"] > 0.8  # the country follows from the cell

    ckpt = tmp_path / "geo.ckpt"
    trainer.save_checkpoint(ckpt)
    meta = read_checkpoint(ckpt).checkpoint["geotrainr"]
    assert meta["head"] == "geocells" and len(meta["geocells"]["countries"]) == model.head.out_features
    loaded = load_model(ckpt)
    x = torch.randn(4, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        a, b = model.predict_latlon(x), loaded.predict_latlon(x)
    torch.testing.assert_close(a["latlon"], b["latlon"])
    torch.testing.assert_close(b["probs"].sum(1), torch.ones(4))
    assert Geocells.load(ckpt).countries == model.geocells.countries

    # locate: one guess per view, consistent country and coordinates; views combine by averaging cell probabilities
    images = [str(tiny_index.parent / p) for p in val["image_path"]]
    loc = Locator(loaded, device="cpu")
    guesses = loc.locate(images, top_k=3)
    assert all(g.ok and g.probability is not None and len(g.top_k) == 3 for g in guesses)
    right = sum(g.country == c for g, c in zip(guesses, val["country"]))
    assert right >= 0.8 * len(val)
    for g in guesses:
        cells_of_country = [k for k, c in enumerate(loaded.geocells.countries) if c == g.country]
        assert min(great_circle_error_km(torch.tensor([g.lat, g.lon], dtype=torch.float64), loaded.cell_centroids[cells_of_country])) < 0.01
    pair = group([guesses[0], guesses[1]], ["x", "x"])[0]
    mean_cells = (guesses[0].cell_probs + guesses[1].cell_probs) / 2
    expected, _ = loaded.decode_cells(torch.from_numpy(mean_cells)[None])
    assert pair.views == 2 and np.allclose([pair.lat, pair.lon], expected[0].numpy(), atol=1e-6)

    from geotrainr.explain import ExplainError, explain

    e = explain(loc, images[0])
    assert e.target == guesses[0].country and e.cam.max() == pytest.approx(1.0)
    with pytest.raises(ExplainError, match="geocell"):
        explain(loc, images[0], target="lat")

    from geotrainr.report import evaluate

    ev = evaluate(loc, index=tiny_index, split="val", num_workers=0)
    assert ev.description == "geocell classifier" and ev.metrics["acc1"] > 0.8 and "acc5" in ev.metrics

    # exported in the Hugging Face layout, the cells travel in config.json and the guesses stay the same
    from geotrainr.hub import export_model

    export_model(ckpt, tmp_path / "exported")
    again = Locator.from_pretrained(tmp_path / "exported", device="cpu").locate(images, top_k=3)
    assert [(g.lat, g.lon, g.country) for g in again] == [(g.lat, g.lon, g.country) for g in guesses]
    assert np.array_equal(again[0].cell_probs, guesses[0].cell_probs)


def test_geocell_model_without_cells_says_what_to_do(tiny_index, tmp_path):
    model = CoordinateRegressor(countries=["DE", "FR"], backbone="test_efficientnet", weights=None, head="geocells")
    with pytest.raises(TaskConfigError, match="no cells yet"):
        model(torch.randn(1, 3, 32, 32))
    with pytest.raises(TaskConfigError, match="unknown head"):
        CoordinateRegressor(countries=["DE"], backbone="test_efficientnet", weights=None, head="cells")
    pts, codes = scattered_points()
    cells = Geocells.build(pts, codes, 10, 40)
    with pytest.raises(GeocellError, match="outside the class list"):
        model.set_geocells(cells)  # cells in LU, PT... but the model knows DE and FR only


def test_geocells_config_and_command(tiny_index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = [
        "--config", str(ROOT / "configs" / "geocells.yaml"),
        f"--data.init_args.index={tiny_index}", "--data.init_args.num_workers=0", "--data.init_args.batch_size=8",
        "--model.init_args.backbone=test_efficientnet", "--model.init_args.weights=null", "--model.init_args.image_size=32",
        "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
        "--model.init_args.min_per_cell=2", "--model.init_args.max_per_cell=4",
    ]
    assert main(["fit", *args, "--trainer.max_epochs=1"]) == 0
    ckpt = tmp_path / "runs/geocells/version_0/checkpoints/last.ckpt"
    assert main(["validate", *args, f"--ckpt_path={ckpt}"]) == 0
    metrics = json.loads(next((tmp_path / "runs").rglob("metrics-validate.json")).read_text())
    assert {"val/acc1", "val/err_km_median", "val/geoscore"} <= set(metrics)
    # DDP: every rank has the same cells (from the checkpoint), the synced metrics equal one process's
    assert main(["validate", *args, f"--ckpt_path={ckpt}", "--trainer.accelerator=cpu", "--trainer.devices=2",
                 "--trainer.strategy=ddp_spawn", "--trainer.default_root_dir=ddp"]) == 0
    ddp = json.loads(next((tmp_path / "ddp").rglob("metrics-validate.json")).read_text())
    for k in metrics:
        if k != "val/loss":
            assert ddp[k] == pytest.approx(metrics[k], rel=1e-5, abs=1e-6), k
    # the cells drawn from an index and from the checkpoint, and saved for a later fit
    assert main(["geocells", "--index", str(tiny_index), "--min-per-cell", "2", "--max-per-cell", "4",
                 "--out", "cells.json", "--map", "cells.png"]) == 0
    assert (tmp_path / "cells.png").stat().st_size > 10_000
    assert Geocells.load(tmp_path / "cells.json").countries == Geocells.load(ckpt).countries
    assert main(["geocells", "--checkpoint", str(ckpt), "--map", "ckpt_cells.png"]) == 0
    assert main(["fit", *args, "--trainer.max_epochs=1", "--model.init_args.geocells=cells.json"]) == 0
    assert main(["geocells", "--index", str(tiny_index), "--min-per-cell", "3", "--max-per-cell", "4"]) == 2
    assert main(["geocells", "--checkpoint", str(tmp_path / "cells.png")]) == 2
    assert main(["geocells", "--index", str(tiny_index), "--map", "map.txt", "--out", "never.json"]) == 2
    assert not (tmp_path / "never.json").exists()  # a bad option is refused before anything is written


def test_ablation_runner_end_to_end(tiny_index, tmp_path):
    out = tmp_path / "results.md"
    code = main(["ablate", "--index", str(tiny_index), "--workdir", str(tmp_path / "runs"), "--out", str(out),
                 "--epochs", "1", "--image-size", "32", "--batch-size", "8", "--workers", "0",
                 "--backbones", "test_efficientnet:none,test_convnext:none", "--min-per-cell", "2", "--max-per-cell", "4"])
    assert code == 0
    text = out.read_text()
    for title in ("(a) Country", "(b) Coordinates", "(c) Distance", "(d) Coordinates", "## Goals", "machine:", "geotrainr ablate"):
        assert title in text, title
    assert "test_convnext (random init)" in text and "| geocell head, country-model init |" in text
    runs = json.loads(out.with_suffix(".json").read_text())
    assert [r["group"] for r in runs] == ["a", "a", "b", "b", "c", "c", "d", "d"]
    for r in runs:
        assert 0 <= r["metrics"]["err_km_median"] < 20_000 and r["checkpoint"].endswith("last.ckpt")
    assert runs[3]["country_init"] and "--seed_everything" not in " ".join(runs[3]["overrides"])
    assert main(["ablate", "--groups", "x"]) == 2

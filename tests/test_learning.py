"""Learning tests on the real demo data with the real Lite0 weights (slow: minutes on 2 cores)."""

import lightning as L
import pytest
import torch

from geotrainr.data import GeoDataModule
from geotrainr.geo import great_circle_error_km, spherical_mean
from geotrainr.tasks import CoordinateRegressor, CountryClassifier, DistancePredictor

pytestmark = pytest.mark.slow


def fit(model, dm, epochs=1, batches=30):
    trainer = L.Trainer(max_epochs=epochs, limit_train_batches=batches, accelerator="cpu", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, dm)
    return {k: float(v) for k, v in trainer.callback_metrics.items()}


def test_country_model_beats_chance_by_far(demo_index):
    L.seed_everything(0)
    dm = GeoDataModule("demo", batch_size=64, num_workers=2)
    model = CountryClassifier(countries=dm.countries, image_size=64, lr=2e-3, backbone_lr_mult=0.5)
    metrics = fit(model, dm, epochs=2)
    chance = 1 / dm.num_classes
    assert metrics["val/acc1"] > 8 * chance and metrics["val/acc5"] > metrics["val/acc1"]


def test_coordinate_model_beats_the_mean_location(demo_index):
    L.seed_everything(0)
    dm = GeoDataModule("demo", batch_size=64, num_workers=2, augment=False)
    model = CoordinateRegressor(countries=dm.countries, image_size=64, lr=3e-3)  # the study's frozen backbone
    metrics = fit(model, dm, epochs=5, batches=40)
    dm.setup()
    train, val = dm.frames["train"], dm.frames["val"]
    centre = spherical_mean(torch.tensor(train[["lat", "lon"]].to_numpy()))
    baseline = great_circle_error_km(centre.expand(len(val), 2), torch.tensor(val[["lat", "lon"]].to_numpy())).median().item()
    assert metrics["val/err_km_median"] < 0.8 * baseline


def test_distance_model_ranks_anchors_above_chance(demo_index):
    L.seed_everything(0)
    dm = GeoDataModule("demo", batch_size=64, num_workers=2)
    model = DistancePredictor(countries=dm.countries, image_size=64, lr=2e-3, backbone_lr_mult=0.5)
    before = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, limit_val_batches=4, inference_mode=False).validate(model, dm)[0]
    metrics = fit(model, dm, epochs=2)
    assert metrics["val/err_deg_mean"] < 0.5 * before["val/err_deg_mean"]
    assert metrics["val/anchor_acc5"] > 5 / dm.num_classes  # above chance

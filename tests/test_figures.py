"""Figures while training: the report's map, confusion matrix and a photo grid logged at validation."""

from __future__ import annotations

import io
from pathlib import Path

import lightning as L
import numpy as np
import pytest
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from geotrainr import maps, plots
from geotrainr.cli import main
from geotrainr.data import GeoDataModule
from geotrainr.figures import TAGS, FiguresConfigError, ValidationFigures
from geotrainr.tasks import CoordinateRegressor, CountryClassifier

ROOT = Path(__file__).resolve().parents[1]


def logged_images(log_dir: Path) -> dict[str, list]:
    """Every image event in a TensorBoard log folder: {tag: [event with .step and .encoded_image_string]}."""
    ea = EventAccumulator(str(log_dir), size_guidance={"images": 0})
    ea.Reload()
    return {tag: ea.Images(tag) for tag in ea.Tags()["images"]}


def check_png(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as im:
        assert im.format == "PNG"
        pixels = np.asarray(im.convert("L"))
    assert pixels.std() > 5  # not a blank canvas
    return im.size


def fit(model, dm, tmp_path: Path, logger, callback: ValidationFigures, epochs: int) -> L.Trainer:
    trainer = L.Trainer(max_epochs=epochs, limit_train_batches=2, logger=logger, callbacks=[callback], accelerator="cpu",
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=1, default_root_dir=tmp_path)
    trainer.fit(model, dm)
    return trainer


def country_model(dm: GeoDataModule) -> CountryClassifier:
    return CountryClassifier(countries=dm.countries, backbone="test_efficientnet", weights=None, image_size=32)


@pytest.fixture
def dm(tiny_index) -> GeoDataModule:
    return GeoDataModule(index=str(tiny_index), batch_size=8, num_workers=0)


def test_fit_logs_the_three_figures_every_n_epochs(dm, tmp_path):
    logger = TensorBoardLogger(tmp_path / "tb", name="", version=0)
    callback = ValidationFigures(every_n_epochs=2, samples=10, top_confused=4, photos=4)
    trainer = fit(country_model(dm), dm, tmp_path, logger, callback, epochs=2)
    images = logged_images(Path(logger.log_dir))
    assert set(images) == set(TAGS)
    steps_per_epoch = trainer.global_step // 2
    for tag, events in images.items():
        # the sanity check and epoch 0 draw nothing; epoch 1 (the 2nd) does, once
        assert [e.step for e in events] == [2 * steps_per_epoch], tag
        width, height = check_png(events[0].encoded_image_string)
        assert width >= 300 and height >= 250, (tag, width, height)


def test_zero_turns_it_off(dm, tmp_path):
    logger = TensorBoardLogger(tmp_path / "tb", name="", version=0)
    callback = ValidationFigures(every_n_epochs=0)
    fit(country_model(dm), dm, tmp_path, logger, callback, epochs=1)
    assert logged_images(Path(logger.log_dir)) == {}
    assert callback.seconds == 0.0  # nothing collected either


@pytest.mark.parametrize("logger", [False, "csv"])
def test_runs_without_a_picture_logger(dm, tmp_path, logger):
    logger = CSVLogger(tmp_path, name="csv") if logger == "csv" else False
    callback = ValidationFigures(every_n_epochs=1)
    trainer = fit(country_model(dm), dm, tmp_path, logger, callback, epochs=1)
    assert "val/acc1" in trainer.callback_metrics
    assert callback.seconds == 0.0  # no logger takes pictures: nothing collected, nothing drawn
    if logger:
        assert (Path(logger.log_dir) / "metrics.csv").is_file()


@pytest.mark.slow
def test_validate_a_coordinate_model_without_country_probabilities(dm, tmp_path):
    """A linear coordinate model guesses the country its coordinates fall in; ``validate`` draws once."""
    model = CoordinateRegressor(countries=dm.countries, backbone="test_efficientnet", weights=None, image_size=32)
    logger = TensorBoardLogger(tmp_path / "tb", name="", version=0)
    trainer = L.Trainer(logger=logger, callbacks=[ValidationFigures(samples=6, photos=3)], accelerator="cpu",
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.validate(model, dm)
    images = logged_images(Path(logger.log_dir))
    assert set(images) == set(TAGS)
    for events in images.values():
        assert len(events) == 1
        check_png(events[0].encoded_image_string)


def test_figures_are_the_reports_pictures(tmp_path):
    """The builders the callback logs are those ``report`` saves: the same pixels."""
    rng = np.random.default_rng(0)
    guess = np.c_[rng.uniform(40, 60, 12), rng.uniform(-5, 25, 12)]
    extent = (-10.0, 30.0, 35.0, 65.0)
    maps.plot_map(guess, tmp_path / "map.png", true_latlon=guess + 1, title="t", extent=extent, width_in=4)
    with Image.open(tmp_path / "map.png") as saved:
        assert np.array_equal(np.asarray(saved.convert("RGB")),
                              plots.figure_pixels(maps.map_figure(guess, guess + 1, title="t", extent=extent, width_in=4)))


def test_most_confused_and_the_cut_down_matrix():
    counts = np.array([[5, 0, 0, 0], [0, 1, 3, 0], [0, 2, 4, 0], [0, 0, 0, 0]])
    # B and C are confused with each other (5 wrong guesses each; C has more images); A never; D has no images
    assert plots.most_confused(counts, 2) == [2, 1]
    assert plots.most_confused(counts, 10) == [2, 1, 0]
    fig = plots.confusion_figure(counts[np.ix_([1, 2], [1, 2])], ["B", "C"], row_totals=[4, 6])
    shown = [t.get_text() for t in fig.axes[0].texts]
    assert shown == ["0.25", "0.75", "0.33", "0.67"]  # fractions of all of a row's images


def test_photo_grid_captions():
    images = [np.full((32, 32, 3), 40 * i, np.uint8) for i in range(5)]
    fig = plots.photo_grid_figure(images, ["DE", "FR", None, "IT", "ES"], ["DE", "IT", "PL", "IT", "FR"],
                                  names=[f"p{i}.jpg" for i in range(5)], title="grid")
    texts = [t for t in fig.axes[0].texts if t.get_text().startswith("true")]
    assert [t.get_text() for t in texts][:3] == ["true DE  guess DE", "true FR  guess IT", "true ?  guess PL"]
    colours = [t.get_color() for t in texts]
    assert colours[0] == colours[3] != colours[1] == colours[4] != colours[2]  # right, wrong, unknown
    h, w, _ = plots.figure_pixels(fig).shape
    assert w > 300 and h > 200


def test_bad_settings_are_refused():
    with pytest.raises(FiguresConfigError, match="every_n_epochs"):
        ValidationFigures(every_n_epochs=-1)


def test_cli_switches(tiny_index, tmp_path, capsys, monkeypatch):
    """The shipped country config has the callback; ``callbacks+=`` adds it to another; a bad value is one line."""
    monkeypatch.chdir(tmp_path)
    assert main(["fit", "--config", "country", "--print_config"]) == 0
    assert "geotrainr.figures.ValidationFigures" in capsys.readouterr().out
    assert main(["fit", "--config", str(ROOT / "configs" / "coords.yaml"), "--trainer.callbacks+=geotrainr.figures.ValidationFigures",
                 "--trainer.callbacks.init_args.every_n_epochs=3", "--print_config"]) == 0
    out = capsys.readouterr().out
    assert "geotrainr.figures.ValidationFigures" in out and "every_n_epochs: 3" in out
    code = main(["fit", "--config", "country", f"--data.init_args.index={tiny_index}", "--data.init_args.num_workers=0",
                 "--model.init_args.backbone=test_efficientnet", "--model.init_args.weights=null",
                 "--trainer.callbacks.init_args.every_n_epochs=-1"])
    err = capsys.readouterr().err
    assert code == 2 and "every_n_epochs must be 0 or more" in err and "Traceback" not in err, err


@pytest.mark.slow
def test_ddp_ranks_sum_their_shares_and_rank_zero_logs(tiny_index, tmp_path, monkeypatch):
    """ddp_spawn on CPU with the shipped country config: no hang, and the map holds the sample from both ranks."""
    monkeypatch.chdir(tmp_path)
    assert main(["fit", "--config", "country", f"--data.init_args.index={tiny_index}", "--data.init_args.num_workers=0",
                 "--data.init_args.batch_size=4", "--model.init_args.backbone=test_efficientnet",
                 "--model.init_args.weights=null", "--model.init_args.image_size=32", "--trainer.max_epochs=1",
                 "--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=ddp_spawn",
                 "--trainer.default_root_dir=ddp", "--trainer.enable_progress_bar=false"]) == 0
    images = logged_images(tmp_path / "ddp" / "version_0")
    assert set(images) == set(TAGS) and all(len(v) == 1 for v in images.values())
    for events in images.values():
        check_png(events[0].encoded_image_string)


@pytest.mark.slow
def test_wandb_logger_gets_the_picture(tmp_path, monkeypatch):
    """W&B offline: the picture lands in the run folder's media (W&B's service process makes this slow)."""
    pytest.importorskip("wandb")
    from lightning.pytorch.loggers import WandbLogger

    from geotrainr.figures import log_picture

    monkeypatch.setenv("WANDB_MODE", "offline")
    logger = WandbLogger(save_dir=str(tmp_path), project="figures-test")
    pixels = np.zeros((40, 60, 3), np.uint8)
    pixels[10:30, 20:40] = (200, 30, 30)
    log_picture(logger, "val/map", pixels, step=7)
    logger.experiment.finish()
    saved = list(tmp_path.rglob("media/images/val/map_*.png"))
    assert len(saved) == 1
    with Image.open(saved[0]) as im:
        assert np.array_equal(np.asarray(im.convert("RGB")), pixels)

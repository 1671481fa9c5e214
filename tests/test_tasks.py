"""The three tasks through the CLI entry, checkpoints, DDP, precision, loggers, sweeps."""

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from geopy.distance import great_circle

from geotrainr.cli import main
from geotrainr.artifact import CheckpointError, read_checkpoint
from geotrainr.loading import load_model
from geotrainr.metrics import GeolocationError
from geotrainr.tasks import CoordinateRegressor, CountryClassifier, DistancePredictor

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {k: str(ROOT / "configs" / f"{k}.yaml") for k in ("country", "coords", "distance", "geocells")}


def tiny_args(index, task="country", backbone="test_efficientnet"):
    """Overrides that make a config run in seconds on the tiny index (runs land in ./runs/<task>)."""
    return [
        "--config", CONFIGS[task],
        f"--data.init_args.index={index}", "--data.init_args.num_workers=0", "--data.init_args.batch_size=8",
        f"--model.init_args.backbone={backbone}", "--model.init_args.weights=null", "--model.init_args.image_size=32",
        "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
    ]


def newest(folder: Path, name: str) -> Path:
    return max(folder.rglob(name), key=lambda p: p.stat().st_mtime_ns)


@pytest.mark.parametrize("task", ["country", "coords", "distance"])
def test_every_config_runs_as_is_on_demo_data(task, demo_index, tmp_path, monkeypatch):
    """fast_dev_run of each shipped config: real Lite0 weights, real demo data."""
    monkeypatch.chdir(tmp_path)
    assert main(["fit", "--config", CONFIGS[task], "--trainer.fast_dev_run=true", "--data.init_args.num_workers=0"]) == 0


def test_fit_validate_test_predict_and_checkpoint_contents(tiny_index, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = tiny_args(tiny_index)
    assert main(["fit", *args, "--trainer.max_epochs=2"]) == 0
    ckpt = tmp_path / "runs/country/version_0/checkpoints/best.ckpt"
    assert ckpt.is_file() and (tmp_path / "runs/country/version_0/checkpoints/last.ckpt").is_file()
    meta = read_checkpoint(ckpt).checkpoint["geotrainr"]
    assert meta["task"] == "country" and meta["backbone"] == "test_efficientnet"
    assert meta["countries"] == ["DE", "ES", "FR", "GB", "IT", "PL"]
    assert meta["preprocessing"]["image_size"] == 32
    assert "validation after the last epoch" in capsys.readouterr().out

    assert main(["validate", *args, f"--ckpt_path={ckpt}"]) == 0
    metrics = json.loads(newest(tmp_path / "runs", "metrics-validate.json").read_text())
    for key in ("val/acc1", "val/acc5", "val/acc_macro", "val/err_km_median", "val/geoscore"):
        assert key in metrics
    assert 0.0 <= metrics["val/acc1"] <= metrics["val/acc5"] <= 1.0
    assert main(["test", *args, f"--ckpt_path={ckpt}"]) == 0
    assert json.loads(newest(tmp_path / "runs", "metrics-test.json").read_text())["test/acc1"] >= 0

    out = tmp_path / "preds.json"
    assert main(["predict", *args, f"--ckpt_path={ckpt}", f"--predictions={out}"]) == 0
    rows = json.loads(out.read_text())
    assert len(rows) == 12 and {"image", "country", "probability", "top_k", "lat", "lon", "true_country", "error_km",
                                "nearest_place", "correct", "error"} <= set(rows[0])
    val = pd.read_parquet(tiny_index).query("split == 'val'")
    assert [r["image"] for r in rows] == [os.path.abspath(tiny_index.parent / p) for p in val["image_path"]]
    csv_out = tmp_path / "preds.csv"
    assert main(["predict", *args, f"--ckpt_path={ckpt}", f"--predictions={csv_out}"]) == 0
    assert len(csv_out.read_text().strip().splitlines()) == 13

    # the checkpoint alone predicts: no datamodule, no weights download
    model = load_model(ckpt)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        out = model.predict_latlon(x)
    assert out["probs"].shape == (3, model.num_classes) and torch.allclose(out["probs"].sum(1), torch.ones(3))
    with pytest.raises(CheckpointError, match="coords checkpoint is needed"):
        load_model(ckpt, kind="coords")


def test_resume_from_last_checkpoint(tiny_index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # the strong policy this test was written with: the metric improves in the resumed epoch, so Lightning
    # saves last.ckpt after validation (epoch 1), not at the end of training (counted as epoch 2)
    args = [*tiny_args(tiny_index), "--data.init_args.augment=strong"]
    assert main(["fit", *args, "--trainer.max_epochs=1"]) == 0
    last = tmp_path / "runs/country/version_0/checkpoints/last.ckpt"
    first = torch.load(last, weights_only=False)
    assert first["epoch"] == 0
    assert main(["fit", *args, "--trainer.max_epochs=2", "--ckpt_path=last"]) == 0
    second = torch.load(last, weights_only=False)
    assert second["epoch"] == 1 and second["global_step"] == 2 * first["global_step"]


def test_init_from_copies_backbone_weights(tiny_index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["fit", *tiny_args(tiny_index), "--trainer.max_epochs=1"]) == 0
    ckpt = tmp_path / "runs/country/version_0/checkpoints/best.ckpt"
    source = {k[9:]: v for k, v in read_checkpoint(ckpt).checkpoint["state_dict"].items() if k.startswith("backbone.")}
    reg = CoordinateRegressor(countries=["DE", "FR"], backbone="test_efficientnet", weights=None, init_from=str(ckpt))
    for k, v in reg.backbone.state_dict().items():
        assert torch.equal(v, source[k]), k
    fresh = CoordinateRegressor(countries=["DE", "FR"], backbone="test_efficientnet", weights=None)
    assert any(not torch.equal(v, source[k]) for k, v in fresh.backbone.state_dict().items())
    with pytest.raises(CheckpointError, match="does not match"):
        CoordinateRegressor(countries=["DE"], backbone="test_convnext", weights=None, init_from=str(ckpt))
    # and through the CLI, as the study's second table does
    args = tiny_args(tiny_index, task="coords")
    assert main(["fit", *args, "--trainer.max_epochs=1", f"--model.init_args.init_from={ckpt}"]) == 0


def test_ddp_spawn_metrics_equal_single_process(tiny_index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = tiny_args(tiny_index)
    assert main(["fit", *args, "--trainer.max_epochs=1"]) == 0
    ckpt = tmp_path / "runs/country/version_0/checkpoints/best.ckpt"
    assert main(["validate", *args, f"--ckpt_path={ckpt}", "--data.init_args.batch_size=3"]) == 0
    a = json.loads(newest(tmp_path / "runs", "metrics-validate.json").read_text())
    assert main([
        "validate", *args, f"--ckpt_path={ckpt}", "--data.init_args.batch_size=3",
        "--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=ddp_spawn",
    ]) == 0
    b = json.loads(newest(tmp_path / "runs", "metrics-validate.json").read_text())
    assert a.keys() == b.keys() and "val/err_km_median" in a
    for k in a:
        if k != "val/loss":  # the loss is a mean of per-batch means; the metrics are exact
            assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-6), k
    # predict under DDP: every rank's rows reach the file, each once, as in one process
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    assert main(["predict", *args, f"--ckpt_path={ckpt}", "--data.init_args.batch_size=5", f"--predictions={one}"]) == 0
    assert main(["predict", *args, f"--ckpt_path={ckpt}", "--data.init_args.batch_size=5", f"--predictions={two}",
                 "--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=ddp_spawn"]) == 0
    single, ddp = json.loads(one.read_text()), json.loads(two.read_text())
    assert len(single) == 12 and [r["image"] for r in ddp] == [r["image"] for r in single]
    for r, q in zip(single, ddp):
        assert r["country"] == q["country"] and r["probability"] == pytest.approx(q["probability"], abs=1e-4)


def test_bf16_mixed_on_cpu(tiny_index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for task in ("country", "coords", "distance"):
        assert main(["fit", *tiny_args(tiny_index, task), "--trainer.precision=bf16-mixed", "--trainer.fast_dev_run=true"]) == 0


def test_wandb_offline_run_folder_holds_metrics(tiny_index, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    args = tiny_args(tiny_index)
    assert main(["fit", *args, "--config", str(ROOT / "configs/logger/wandb.yaml"), "--trainer.max_epochs=1",
                 f"--trainer.logger.init_args.save_dir={tmp_path}"]) == 0
    runs = list(tmp_path.rglob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1, "no offline W&B run folder"
    records = runs[0].read_bytes()  # the run's records, synced later by `wandb sync`
    for key in (b"val/acc1", b"val/acc5", b"val/err_km_median", b"train/acc1", b"train/loss"):
        assert key in records, key


def test_sweep_parameters_parse_and_run(tiny_index, tmp_path, monkeypatch):
    """Pass each sweep parameter the way the W&B agent does: --name=value."""
    monkeypatch.chdir(tmp_path)
    sweep = yaml.safe_load((ROOT / "configs/sweeps/country.yaml").read_text())
    assert sweep["program"] == "geotrainr" and "${args}" in sweep["command"]
    agent_args = []
    for name, spec in sweep["parameters"].items():
        value = spec["values"][0] if "values" in spec else spec["min"]
        agent_args.append(f"--{name}={value}")
    assert "--model.init_args.lr=0.0002" in agent_args
    assert main(["fit", *tiny_args(tiny_index), *agent_args, "--trainer.fast_dev_run=true"]) == 0
    assert main(["fit", "--config", CONFIGS["country"], "--print_config"]) == 0


def test_bad_inputs_are_one_line_errors(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["fit", "--config", CONFIGS["country"], f"--data.init_args.index={tmp_path}/missing.parquet"]) == 2
    err = capsys.readouterr().err
    assert "missing.parquet" in err and "Traceback" not in err
    (tmp_path / "bad.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_model(tmp_path / "bad.ckpt")


def test_geolocation_metric_formulas_against_geopy():
    rng = np.random.default_rng(0)
    true = np.stack([rng.uniform(35, 70, 200), rng.uniform(-10, 40, 200)], 1)
    pred = true + rng.normal(0, 3, true.shape)
    m = GeolocationError()
    m.update(torch.tensor(pred[:120]), torch.tensor(true[:120]))
    m.update(torch.tensor(pred[120:]), torch.tensor(true[120:]))
    out = {k: float(v) for k, v in m.compute().items()}
    km = np.array([great_circle(p, t).km for p, t in zip(pred, true)])
    deg = np.sqrt(((pred - true) ** 2).sum(1))
    assert out["err_km_mean"] == pytest.approx(km.mean(), rel=1e-5)
    assert out["err_km_median"] == pytest.approx(np.median(km), rel=1e-5)
    for t in (1, 25, 200, 750, 2500):
        assert out[f"acc_{t}km"] == pytest.approx((km <= t).mean())
    assert out["geoscore"] == pytest.approx((5000 * np.exp(-km / 1492.7)).mean(), rel=1e-5)
    assert out["err_deg_mean"] == pytest.approx(deg.mean(), rel=1e-5)
    assert out["within_5deg"] == pytest.approx((deg <= 5).mean())


def test_country_topk_metrics_are_micro():
    model = CountryClassifier(countries=["DE", "FR", "IT", "ES", "PL", "AT"], backbone="test_efficientnet", weights=None)
    m = model.val_metrics["cls"]
    logits = torch.tensor([[5.0, 4, 3, 2, 1, 0], [0, 1, 2, 3, 4, 5], [2, 5, 4, 3, 1, 0]])
    m.update(logits, torch.tensor([0, 0, 0]))  # right; last of six; fourth (in the top 5)
    out = {k: float(v) for k, v in m.compute().items()}
    assert out["acc1"] == pytest.approx(1 / 3) and out["acc5"] == pytest.approx(2 / 3)


def test_distance_anchor_accuracy_and_outputs():
    model = DistancePredictor(countries=["DE", "FR", "IT", "ES", "PL", "PT"], backbone="test_efficientnet", weights=None, image_size=32)
    batch = {"image": torch.randn(4, 3, 32, 32), "latlon": torch.tensor([[52.5, 13.4], [48.9, 2.3], [41.9, 12.5], [40.4, -3.7]]),
             "country": torch.tensor([0, 1, 2, 3])}
    loss = model.shared_step(batch, "val")
    assert loss.ndim == 0 and torch.isfinite(loss)
    out = {k: (float(v) if not isinstance(v, dict) else v) for k, v in model.val_metrics["anchor"].compute().items()}
    assert set(out) == {"anchor_acc1", "anchor_acc5"}
    assert "err_deg_mean" not in model.val_metrics["geo"].compute()  # the task's own err_deg_mean is the distance MAE
    assert 0 <= float(model.val_metrics["err_deg_mean"].compute()) <= 10
    d = model.predict_latlon(batch["image"])["anchor_distance_deg"]
    assert d.shape == (4, 6) and torch.all((d >= 0) & (d <= 10))  # sigmoid x 10
    euclid = DistancePredictor(countries=["DE", "FR"], backbone="test_efficientnet", weights=None, head="euclidean", image_size=32)
    e = euclid(batch["image"])
    assert torch.allclose(euclid.pair_distance(e, e), torch.zeros(4), atol=1e-3)


def test_a_single_country_index_trains_coordinates_and_geocells(tmp_path, monkeypatch, capsys):
    """A city- or country-level dataset: the coordinate tasks train, country accuracy is left out, not faked."""
    from conftest import single_country_index

    monkeypatch.chdir(tmp_path)
    index = single_country_index(tmp_path / "data")
    for task, extra in (("coords", []), ("geocells", ["--model.init_args.min_per_cell=2", "--model.init_args.max_per_cell=5"])):
        args = [a for a in tiny_args(index, task) if not a.startswith("--data.init_args.batch_size")]
        assert main(["fit", *args, *extra, "--trainer.max_epochs=1", "--data.init_args.batch_size=10",
                     f"--trainer.default_root_dir={tmp_path / task}"]) == 0, task
    ckpt = max((p for p in tmp_path.rglob("*.ckpt") if "geocells" in str(p)), key=lambda p: p.stat().st_mtime_ns)
    assert main(["report", str(ckpt), "--index", str(index), "--out", str(tmp_path / "report"), "--workers", "0"]) == 0
    metrics = json.loads((tmp_path / "report/metrics.json").read_text())["metrics"]
    assert "err_km_median" in metrics and "acc1" not in metrics and "acc5" not in metrics
    capsys.readouterr()
    assert main(["fit", *tiny_args(index, "country"), "--trainer.fast_dev_run=true"]) == 2
    err = capsys.readouterr().err
    assert "needs at least two countries" in err and "Traceback" not in err


def test_head_warmup_keeps_the_backbone_still_then_trains_it(tiny_index):
    """head_warmup_epochs: heads alone first (backbone weights and BatchNorm statistics untouched), then all."""
    import lightning as L

    from geotrainr.data import GeoDataModule

    dm = GeoDataModule(str(tiny_index), batch_size=8, num_workers=0, augment=False)
    model = CountryClassifier(countries=dm.countries, backbone="test_efficientnet", weights=None, image_size=32,
                              lr=0.01, head_warmup_epochs=1.0, scheduler="none")
    start = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    head_start = model.head[1].weight.detach().clone()
    seen = {}

    class Snapshot(L.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            seen[trainer.current_epoch] = {k: v.clone() for k, v in pl_module.backbone.state_dict().items()}

    trainer = L.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, callbacks=[Snapshot()])
    trainer.fit(model, datamodule=dm)
    assert model._head_warmup_steps == trainer.global_step // 2 > 0
    assert all(torch.equal(start[k], seen[0][k]) for k in start)  # weights and running statistics alike
    assert any(not torch.equal(start[k], seen[1][k]) for k in start if "running" not in k)
    assert not torch.equal(head_start, model.head[1].weight)
    with pytest.raises(Exception, match="head_warmup_epochs"):
        CountryClassifier(countries=["DE", "FR"], backbone="test_efficientnet", weights=None, head_warmup_epochs=-1)


def test_a_validation_split_without_class_list_countries_still_checkpoints(tmp_path, monkeypatch, capsys):
    """Nothing to score the monitored Acc@1 on: it is logged as NaN with a warning, and the run still saves."""
    from conftest import PLACES, make_image

    monkeypatch.chdir(tmp_path)
    rows = []
    for i, (cc, lat, lon) in enumerate(PLACES * 3):
        rel = f"images/{i:03d}.jpg"
        make_image(tmp_path / "data" / rel, seed=i % 5)
        rows.append({"image_path": rel, "lat": lat, "lon": lon, "country": cc, "split": "val" if cc == "ES" else "train"})
    from geotrainr.data.index import write_index

    index = write_index(pd.DataFrame(rows), tmp_path / "data" / "index.parquet")
    with pytest.warns(UserWarning, match="nothing to compute val/acc1"):
        code = main(["fit", *tiny_args(index, "country"), "--data.init_args.countries=[DE,FR]", "--trainer.max_epochs=1"])
    assert code == 0
    assert (tmp_path / "runs/country/version_0/checkpoints/best.ckpt").is_file()

"""DDP and precision: skipped batches, metrics that only some ranks updated, float64 coordinate tables."""

import json
from pathlib import Path

import lightning as L
import pandas as pd
import pytest
import torch

from geotrainr.cli import main
from geotrainr.countries import centres
from geotrainr.data import GeoDataModule
from geotrainr.data.index import write_index
from geotrainr.tasks import CoordinateRegressor, CountryClassifier

from conftest import make_image

ROOT = Path(__file__).resolve().parents[1]
DE, FR, NL = ("DE", 51.0, 10.0), ("FR", 47.0, 2.0), ("NL", 52.2, 5.3)


def split_index(folder: Path, broken_train: bool) -> Path:
    """Train: DE and FR (unreadable images when ``broken_train``); val, in this order: DE, NL, DE, NL.

    NL is outside the class list, so its rows update the coordinate metrics but not Acc@k: with two
    ranks taking every other validation row, rank 1 never updates its classification metrics.
    """
    rows = []
    for i in range(8):
        cc, lat, lon = (DE, FR)[i % 2]
        rel = f"train/{cc}_{i}.jpg"
        if broken_train:
            (folder / "train").mkdir(parents=True, exist_ok=True)
            (folder / rel).write_bytes(b"not a jpeg")
        else:
            make_image(folder / rel, seed=i % 2)
        rows.append({"image_path": rel, "lat": lat + 0.01 * i, "lon": lon, "country": cc, "split": "train"})
    for i, (cc, lat, lon) in enumerate((DE, NL, DE, NL)):
        rel = f"val/{cc}_{i}.jpg"
        make_image(folder / rel, seed=3 + i)
        rows.append({"image_path": rel, "lat": lat + 0.01 * i, "lon": lon, "country": cc, "split": "val"})
    return write_index(pd.DataFrame(rows), folder / "index.parquet")


def cli_args(index: Path) -> list[str]:
    return [
        "--config", str(ROOT / "configs" / "country.yaml"),
        f"--data.init_args.index={index}", "--data.init_args.num_workers=0", "--data.init_args.batch_size=2",
        "--model.init_args.backbone=test_efficientnet", "--model.init_args.weights=null", "--model.init_args.image_size=32",
        "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
    ]


DDP = ["--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=ddp_spawn"]


def test_skipped_batch_gives_a_zero_loss_through_every_trainable_parameter():
    model = CountryClassifier(countries=["DE", "FR"], backbone="test_efficientnet", weights=None, image_size=32,
                              freeze_backbone=True)
    loss = model.training_step({"skipped": 2}, 0)
    assert isinstance(loss, torch.Tensor) and float(loss) == 0.0 and loss.requires_grad
    loss.backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(p.grad is not None and not p.grad.any() for _, p in trainable)
    assert all(p.grad is None for p in model.backbone.parameters())  # frozen: untouched
    assert model.validation_step({"skipped": 2}, 0) is None  # no backward outside training


def test_ddp_fit_with_unreadable_batches_and_a_rank_without_classification_updates(tmp_path, monkeypatch):
    """ddp_spawn on CPU: every training batch is unreadable (a None loss is refused under DDP), and rank 1 sees
    only validation rows outside the class list (a rank-local 'was it updated' skipped a collective compute)."""
    monkeypatch.chdir(tmp_path)
    index = split_index(tmp_path / "data", broken_train=True)
    args = cli_args(index)
    # max_unreadable=1: this run is about the DDP mechanics; by default such hopeless data stops the run
    assert main(["fit", *args, *DDP, "--trainer.max_epochs=1", "--trainer.default_root_dir=ddp",
                 "--data.init_args.max_unreadable=1.0"]) == 0
    ckpt = next((tmp_path / "ddp").rglob("last.ckpt"))
    state = torch.load(ckpt, weights_only=False)
    assert state["global_step"] == 2  # 8 rows / 2 ranks / batch 2: two (skipped) steps, each with an optimiser step

    good = split_index(tmp_path / "good", broken_train=False)
    args = cli_args(good)
    assert main(["fit", *args, "--trainer.max_epochs=1", "--trainer.default_root_dir=one"]) == 0
    ckpt = next((tmp_path / "one").rglob("last.ckpt"))
    assert main(["validate", *args, f"--ckpt_path={ckpt}", "--trainer.default_root_dir=v1"]) == 0
    assert main(["validate", *args, f"--ckpt_path={ckpt}", *DDP, "--trainer.default_root_dir=v2"]) == 0
    single = json.loads(next((tmp_path / "v1").rglob("metrics-validate.json")).read_text())
    ddp = json.loads(next((tmp_path / "v2").rglob("metrics-validate.json")).read_text())
    assert {"val/acc1", "val/err_km_median", "val/geoscore"} <= set(single)
    assert single.keys() == ddp.keys()
    for k in single:
        if k != "val/loss":
            assert ddp[k] == pytest.approx(single[k], rel=1e-5, abs=1e-6), k


def bf16_fit(model: L.LightningModule, index: Path) -> None:
    dm = GeoDataModule(index=str(index), batch_size=4, num_workers=0)
    trainer = L.Trainer(accelerator="cpu", precision="bf16-true", max_steps=1, limit_val_batches=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, datamodule=dm)


def test_bf16_true_keeps_the_coordinate_tables_float64(tiny_index):
    countries = ["DE", "ES", "FR", "GB", "IT", "PL"]
    model = CountryClassifier(countries=countries, backbone="test_efficientnet", weights=None, image_size=32)
    bf16_fit(model, tiny_index)
    assert next(model.head.parameters()).dtype == torch.bfloat16  # the cast did happen
    table = torch.tensor(centres(countries), dtype=torch.float64)
    assert model.class_centres.dtype == torch.float64 and torch.equal(model.class_centres, table)
    with torch.no_grad():
        guess = model.predict_latlon(torch.randn(2, 3, 32, 32, dtype=torch.bfloat16))
    assert guess["latlon"].dtype == torch.float64 and all(any(torch.equal(g, c) for c in table) for g in guess["latlon"])

    cells = CoordinateRegressor(countries=countries, backbone="test_efficientnet", weights=None, image_size=32,
                                head="geocells", min_per_cell=2, max_per_cell=4)
    bf16_fit(cells, tiny_index)
    assert next(cells.head.parameters()).dtype == torch.bfloat16
    assert cells.cell_centroids.dtype == torch.float64
    assert torch.equal(cells.cell_centroids, torch.from_numpy(cells.geocells.centroids))
    # moves still move them, casts leave them alone
    cells.to(torch.float16)
    assert cells.cell_centroids.dtype == torch.float64 and cells.class_centres.dtype == torch.float64

"""One evaluation: fit's validation, validate, test, report and ablate's scoring give the same numbers on one split.

The split holds classes absent from it (trained on, never true there) and guesses of those absent classes, the
case where torchmetrics' own macro average (which averages in guessed-but-never-true classes at 0) and the
documented ``acc_macro`` (averaged over the countries that occur in the truth) part.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import lightning as L
import pandas as pd
import pytest
import torch

from conftest import PLACES, make_image
from geotrainr import ablation, benchmarking, report
from geotrainr.data.datamodule import GeoDataModule
from geotrainr.data.index import write_index
from geotrainr.locator import Locator
from geotrainr.metrics import MacroAccuracy, classification_metrics, country_accuracy
from geotrainr.tasks import CountryClassifier


def uneven_index(folder: Path) -> Path:
    """8 countries trained on; the val split holds 4 of them, half its photos coloured like the 4 absent ones."""
    rows = []
    for i in range(64):
        cc, lat, lon = PLACES[i % 8]
        split = "val" if i % 8 < 4 and i % 3 == 0 else "train"
        look = (i * 5) % 8 if split == "val" and i % 2 else i % 8  # absent-class colours: guessed but never true
        rel = f"images/{cc}_{i:03d}.jpg"
        make_image(folder / rel, seed=look)
        rows.append({"image_path": rel, "lat": lat + 0.01 * i, "lon": lon, "country": cc, "split": split})
    return write_index(pd.DataFrame(rows), folder / "index.parquet")


def scalars(metrics: dict, prefix: str) -> dict[str, float]:
    return {k.removeprefix(prefix): float(v) for k, v in metrics.items() if k.startswith(prefix) and k != f"{prefix}loss"}


def test_macro_accuracy_averages_over_true_classes_only():
    target = torch.tensor([0, 0, 0, 1, 1, 2])
    pred = torch.tensor([0, 0, 3, 1, 4, 2])  # classes 3 and 4 guessed, never true; 5 neither
    m = MacroAccuracy(6)
    m.update(pred, target)
    assert float(m.compute()) == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    coll = classification_metrics(6)
    coll.update(torch.nn.functional.one_hot(pred, 6).float(), target)
    assert float(coll.compute()["acc_macro"]) == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    codes = country_accuracy(["DE", "DE", "DE", "FR", "FR", "IT", None], ["DE", "DE", "PL", "FR", "SE", "IT", "IT"])
    assert codes == pytest.approx({"acc1": 4 / 6, "acc_macro": (2 / 3 + 1 / 2 + 1) / 3})


def test_every_evaluation_finds_the_same_numbers(tmp_path):
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    index = uneven_index(tmp_path / "data")
    L.seed_everything(0)
    dm = GeoDataModule(index=str(index), batch_size=4, num_workers=0, augment=False)
    model = CountryClassifier(countries=dm.countries, backbone="test_efficientnet", weights=None, image_size=32,
                              lr=3e-3, scheduler="none")
    trainer = L.Trainer(max_epochs=8, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=2)
    trainer.fit(model, dm)
    fit = scalars(trainer.callback_metrics, "val/")  # what fit logged for its last validation
    validated = scalars(trainer.validate(model, dm, verbose=False)[0], "val/")
    tested = scalars(trainer.test(model, dm, verbose=False)[0], "test/")
    ckpt = tmp_path / "last.ckpt"
    trainer.save_checkpoint(ckpt)
    reported = report.evaluate(Locator(model, device="cpu"), index=index, split="val", num_workers=0)
    # ablate (each run's last checkpoint) and report --benchmark score through report's evaluation itself
    assert ablation.evaluate is report.evaluate and benchmarking.evaluate is report.evaluate
    ablated = ablation.evaluate(str(ckpt), index=index, split="val", num_workers=0, device="cpu").metrics

    frame = reported.frame
    truth, guessed = set(frame["true_country"]), set(frame["country"])
    assert set(dm.countries) - truth, "the split must leave some trained classes out"
    assert guessed - truth, "some guesses must name classes absent from the split"
    assert 0 < fit["acc_macro"] < 1 and fit["acc_macro"] != pytest.approx(fit["acc1"])

    assert set(fit) == set(validated) == set(tested) == set(reported.metrics) == set(ablated)
    for name, value in fit.items():
        for where, other in (("validate", validated), ("test", tested), ("report", reported.metrics),
                             ("ablate", ablated)):
            assert other[name] == pytest.approx(value, abs=1e-6), (name, where)
    # the written definition, from report's own predictions: accuracy per true country, averaged
    assert frame.groupby("true_country")["correct"].mean().mean() == pytest.approx(fit["acc_macro"], abs=1e-6)
    assert frame["correct"].mean() == pytest.approx(fit["acc1"], abs=1e-6)

"""fit/validate/test refuse a split whose images are mostly unreadable: one line, exit 2, no checkpoint presented."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from conftest import build_tiny_index
from test_tasks import tiny_args

from geotrainr.cli import main
from geotrainr.data import GeoDataModule
from geotrainr.data.index import read_index


def _break(index: Path, split: str, fraction: float) -> int:
    """Empty (0 bytes) the first ``fraction`` of ``split``'s images; returns how many."""
    df = read_index(index)
    rows = df[df["split"] == split]
    n = round(len(rows) * fraction)
    for rel in rows["image_path"].iloc[:n]:
        (index.parent / rel).write_bytes(b"")
    return n


def test_max_unreadable_is_a_fraction(tiny_index):
    with pytest.raises(Exception, match="max_unreadable"):
        GeoDataModule(str(tiny_index), max_unreadable=1.5)


def test_fit_on_unreadable_images_stops_without_a_checkpoint(tmp_path, monkeypatch, capsys):
    index = build_tiny_index(tmp_path / "data")
    _break(index, "train", 1.0)
    _break(index, "val", 1.0)
    monkeypatch.chdir(tmp_path)
    rc = main(["fit", *tiny_args(index), "--trainer.max_epochs=1"])
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = [line for line in err.splitlines() if line.startswith("geotrainr fit: error:")]
    assert len(lines) == 1 and "could not be read" in lines[0] and "max_unreadable" in lines[0]
    assert "Traceback" not in err
    assert not list(tmp_path.rglob("*.ckpt")), "no checkpoint of an untrained model"


def test_train_split_checked_before_the_checkpoint_of_the_epoch(tmp_path, monkeypatch, capsys):
    """Validation is fine, training mostly unreadable: stopped at the end of validation, before last.ckpt."""
    index = build_tiny_index(tmp_path / "data")
    _break(index, "train", 0.75)
    monkeypatch.chdir(tmp_path)
    args = [*tiny_args(index), "--data.init_args.batch_size=48"]  # one batch: no batch of a single image
    rc = main(["fit", *args, "--trainer.max_epochs=1"])
    err = capsys.readouterr().err
    assert rc == 2 and "train images" in err and "Traceback" not in err
    assert not list(tmp_path.rglob("*.ckpt"))
    # The limit is configurable: 75 % unreadable passes under 0.9, with a warning that counts them.
    with pytest.warns(Warning, match=r"train: skipped 27 unreadable image\(s\)"):
        rc = main(["fit", *args, "--trainer.max_epochs=1", "--data.init_args.max_unreadable=0.9"])
    assert rc == 0, capsys.readouterr().err
    assert len(list(tmp_path.glob("runs/country/version_*/checkpoints/last.ckpt"))) == 1


def test_some_unreadable_images_pass_then_validate_and_test_refuse(tmp_path, monkeypatch, capsys):
    index = build_tiny_index(tmp_path / "data")
    _break(index, "train", 0.25)  # under the default limit of 50 %
    monkeypatch.chdir(tmp_path)
    args = tiny_args(index)
    assert main(["fit", *args, "--trainer.max_epochs=1"]) == 0, capsys.readouterr().err
    (ckpt,) = tmp_path.glob("runs/country/version_*/checkpoints/last.ckpt")
    capsys.readouterr()
    _break(index, "val", 0.75)
    for verb in ("validate", "test"):  # test falls back to val without a test split
        rc = main([verb, *args, f"--ckpt_path={ckpt}"])
        err = capsys.readouterr().err
        assert rc == 2 and f"geotrainr {verb}: error:" in err and "could not be read" in err, err
        assert "Traceback" not in err
    assert not list(tmp_path.rglob("metrics-*.json")), "no metrics of a hopeless split are saved"
    assert isinstance(pd.read_parquet(index), pd.DataFrame)

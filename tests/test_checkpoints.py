"""The checkpoint module: nothing in a file runs, foreign and damaged files are one clear line."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest
import torch

from conftest import SIX, build_tiny_index, error_lines
from geotrainr.artifact import FORMAT_VERSION, CheckpointError, check_countries, read_checkpoint
from geotrainr.loading import load_model
from geotrainr.cli import main
from test_locate import photo, tiny_checkpoints

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def ckpts(tmp_path_factory):
    return tiny_checkpoints(tmp_path_factory)


class _RunsCode:
    """Unpickling this writes a marker file: what a malicious checkpoint would do instead."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _malicious_copy(ckpt: Path, out: Path, marker: Path) -> Path:
    """A real checkpoint with one extra entry that runs a shell command when unpickled unsafely."""
    data = torch.load(ckpt, map_location="cpu", weights_only=True)
    data["callbacks"] = {"payload": _RunsCode(marker)}
    torch.save(data, out)
    return out


def test_malicious_pickle_runs_nothing_anywhere(ckpts, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "pwned"
    evil = _malicious_copy(ckpts["country"], tmp_path / "evil.ckpt", marker)
    with pytest.raises(CheckpointError, match="refused"):
        load_model(evil)
    img = photo(tmp_path / "p.jpg", 1)
    index = build_tiny_index(tmp_path / "data", n=12)
    for argv in (
        ["locate", evil, img],
        ["explain", evil, img, "--out", tmp_path / "h.png"],
        ["report", evil, "--index", index, "--out", tmp_path / "r"],
        ["export", evil, "--out", tmp_path / "x"],
        ["geocells", evil],
        ["geocells", "--checkpoint", evil],  # the old spelling is a door too
        ["validate", "--config", ROOT / "configs/country.yaml", f"--data.init_args.index={index}", "--ckpt_path", evil],
        ["fit", "--config", ROOT / "configs/coords.yaml", f"--data.init_args.index={index}",
         f"--model.init_args.init_from={evil}", "--model.init_args.backbone=test_efficientnet",
         "--model.init_args.weights=null", "--trainer.fast_dev_run=true"],
    ):
        assert main([str(a) for a in argv]) == 2, argv[0]
        err = capsys.readouterr().err
        assert "refused" in err and "Traceback" not in err and len(error_lines(err)) == 1, (argv[0], err)
    assert not marker.exists()
    assert not (tmp_path / "x").exists() and not (tmp_path / "r").exists()


def test_damaged_and_foreign_files_are_one_line(ckpts, tmp_path):
    data = Path(ckpts["country"]).read_bytes()
    (tmp_path / "half.ckpt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        read_checkpoint(tmp_path / "half.ckpt")
    (tmp_path / "listing.csv").write_text("path,lat,lon\nphoto.jpg,45.8,15.9\n")  # a file given in the wrong place
    with pytest.raises(CheckpointError, match="truncated or corrupt") as e:
        read_checkpoint(tmp_path / "listing.csv")
    assert "weights_only" not in str(e.value)  # never the advice to load it unsafely
    (tmp_path / "empty.ckpt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        read_checkpoint(tmp_path / "empty.ckpt")
    model = load_model(ckpts["country"])
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    with pytest.raises(CheckpointError, match="a plain state dict, not a geotrainr checkpoint"):
        read_checkpoint(tmp_path / "weights.pt")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="not a geotrainr checkpoint"):
        read_checkpoint(tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="a country checkpoint, but a coords checkpoint is needed"):
        load_model(ckpts["country"], kind="coords")
    with pytest.raises(CheckpointError, match="not a regular file"):
        read_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        read_checkpoint(tmp_path / "missing.ckpt")
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "fifo.ckpt")
        with pytest.raises(CheckpointError, match="not a regular file"):
            read_checkpoint(tmp_path / "fifo.ckpt")


def _edited(ckpt: Path, out: Path, edit) -> Path:
    data = torch.load(ckpt, map_location="cpu", weights_only=True)
    edit(data)
    torch.save(data, out)
    return out


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["geotrainr"].update(format=FORMAT_VERSION + 1), "newer geotrainr"),
    (lambda d: d["geotrainr"].update(task="evil"), "unknown task kind 'evil'"),
    (lambda d: d["geotrainr"].update(countries=None), "class list"),
    (lambda d: d["geotrainr"].update(countries=["DE", "XX"]), "unknown country codes"),
    (lambda d: d["geotrainr"]["preprocessing"].update(image_size="big"), "image_size"),
    (lambda d: d["geotrainr"]["preprocessing"].update(std=[0, 1, 1]), "std"),
    (lambda d: d.pop("state_dict"), "state_dict"),
    (lambda d: d["state_dict"].pop(next(iter(d["state_dict"]))), "weights do not fit"),
    (lambda d: d.pop("geotrainr"), "not a geotrainr checkpoint"),
])
def test_bad_records_are_refused(ckpts, tmp_path, edit, message):
    bad = _edited(ckpts["country"], tmp_path / "bad.ckpt", edit)
    with pytest.raises(CheckpointError, match=message):
        load_model(bad)


def test_the_registry_decides_the_class_not_the_file(ckpts, tmp_path, capsys, monkeypatch):
    """A class path in the file is never imported: loading goes by task kind, and a foreign class named by the
    hyper-parameters is refused at every door alike."""
    monkeypatch.chdir(tmp_path)
    ignored = _edited(ckpts["country"], tmp_path / "record.ckpt", lambda d: d["geotrainr"].update(class_path="os.system"))
    assert type(load_model(ignored)).__name__ == "CountryClassifier"

    def foreign(d):
        d["geotrainr"]["class_path"] = "os.system"
        d["hyper_parameters"]["_class_path"] = "antigravity.Fly"

    bad = _edited(ckpts["country"], tmp_path / "foreign.ckpt", foreign)
    with pytest.raises(CheckpointError, match="antigravity.Fly"):
        load_model(bad)
    index = build_tiny_index(tmp_path / "data", n=12)
    img = photo(tmp_path / "p.jpg", 1)
    for argv in (["validate", "--config", str(ROOT / "configs/country.yaml"), f"--data.init_args.index={index}",
                  "--ckpt_path", str(bad)],
                 ["locate", str(bad), str(img)]):
        assert main(argv) == 2, argv[0]
        err = capsys.readouterr().err
        assert "antigravity.Fly" in err and "Traceback" not in err, (argv[0], err)
    assert "antigravity" not in sys.modules


def test_class_order_mismatch_is_refused(ckpts, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    saved = read_checkpoint(ckpts["country"]).checkpoint["geotrainr"]["countries"]
    check_countries(saved, [c.lower() for c in saved])
    with pytest.raises(CheckpointError, match="another order"):
        check_countries(saved, saved[::-1])
    with pytest.raises(CheckpointError, match="only in the data: US"):
        check_countries(saved, [*saved, "US"])
    index = build_tiny_index(tmp_path / "data", n=24)
    base = ["validate", "--config", str(ROOT / "configs/country.yaml"), f"--data.init_args.index={index}",
            "--data.init_args.num_workers=0", "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={tmp_path}",
            "--ckpt_path", str(ckpts["country"])]
    assert main([*base, f"--data.init_args.countries=[{','.join(saved[::-1])}]"]) == 2
    err = capsys.readouterr().err
    assert "another order" in err and "Traceback" not in err
    assert main([*base, f"--data.init_args.countries=[{','.join(saved)}]"]) == 0


def test_checkpoint_record_is_versioned_and_complete(ckpts):
    record = read_checkpoint(ckpts["coords"]).checkpoint["geotrainr"]
    assert record["format"] == FORMAT_VERSION and record["task"] == "coords" and record["head"] == "linear"
    assert record["countries"] == sorted({cc for cc, _, _ in SIX})
    assert {"image_size", "mean", "std", "interpolation", "crop_pct", "draft"} <= set(record["preprocessing"])
    assert isinstance(record["metrics"], dict) and isinstance(record["data"], dict)
    assert record["data"]["images"]["train"] > 0


def test_copy_of_a_checkpoint_elsewhere_still_loads(ckpts, tmp_path):
    """Nothing in a checkpoint points back to the run that wrote it."""
    moved = tmp_path / "elsewhere" / "model.ckpt"
    moved.parent.mkdir()
    shutil.copy(ckpts["distance"], moved)
    assert load_model(moved).task_kind == "distance"


def test_hub_backbones_rebuild_offline_and_preprocessing_is_the_recorded_one(ckpts, tmp_path, monkeypatch):
    """A model trained on an hf-hub: backbone loads from its file alone; its input is what the file says."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    record = read_checkpoint(ckpts["country"]).checkpoint["geotrainr"]
    assert record["architecture"] == "test_efficientnet"

    def from_hub(d):
        d["geotrainr"]["backbone"] = d["hyper_parameters"]["backbone"] = "hf-hub:acme/tiny-geo"
        d["geotrainr"]["preprocessing"]["mean"] = [0.25, 0.5, 0.75]

    model = load_model(_edited(ckpts["country"], tmp_path / "hub.ckpt", from_hub))
    assert model.preprocessing.mean == (0.25, 0.5, 0.75)
    assert torch.equal(model.state_dict()["head.1.weight"], load_model(ckpts["country"]).state_dict()["head.1.weight"])

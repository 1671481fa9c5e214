"""Shareable models: export to the Hugging Face layout, load from a folder or the hub cache, same answers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from huggingface_hub import ModelCard
from PIL import Image

import geotrainr
from geotrainr.artifact import CheckpointError
from geotrainr.cli import main
from geotrainr.loading import load_model as load_exported
from geotrainr.locator import Locator
from test_locate import photo, tiny_checkpoints

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def ckpts(tmp_path_factory):
    return tiny_checkpoints(tmp_path_factory)


@pytest.fixture
def pictures(tmp_path):
    return [photo(tmp_path / "in" / f"p{i}.jpg", i, size=(90 + 40 * i, 70)) for i in range(4)]


def _same(a, b):
    assert [g.image for g in a] == [g.image for g in b]
    for x, y in zip(a, b):
        assert (x.lat, x.lon, x.country) == (y.lat, y.lon, y.country)
        assert (x.probs is None and y.probs is None) or np.array_equal(x.probs, y.probs)


@pytest.mark.parametrize("kind", ["country", "coords", "distance"])
def test_export_round_trips_to_identical_predictions(ckpts, tmp_path, pictures, kind, capsys):
    out = tmp_path / f"{kind}-model"
    assert main(["export", str(ckpts[kind]), "--out", str(out)]) == 0
    assert f"to {out}" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((out / "config.json").read_text())
    assert config["library_name"] == "geotrainr" and config["task"] == kind and config["countries"]
    assert config["preprocessing"]["image_size"] == 64 and config["backbone"] == "test_efficientnet"
    card = ModelCard.load(out / "README.md")  # the Hub's own parser reads the card back
    assert card.data.library_name == "geotrainr" and card.data.pipeline_tag == "image-classification"
    assert card.data.license == "other" and kind in card.data.tags
    assert "## Evaluation" in card.text and "## Training data" in card.text and "## Classes" in card.text
    assert "| `err_km_median` |" in card.text  # the checkpoint's validation metrics, as a table and as metadata
    logged = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert "err_km_median" in logged and "loss" not in logged
    assert logged["err_km_median"] == pytest.approx(config["metrics"]["val/err_km_median"])
    _same(Locator.load(ckpts[kind], device="cpu").locate(pictures), Locator.from_pretrained(out, device="cpu").locate(pictures))
    # the verbs take the folder wherever they take a checkpoint
    assert main(["locate", str(out), *map(str, pictures), "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 4 and all(r["error"] is None for r in rows)


def test_export_is_atomic_and_refuses_to_clobber(ckpts, tmp_path, capsys):
    out = tmp_path / "model"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["export", str(ckpts["country"]), "--out", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err and (out / "notes.txt").read_text() == "mine"
    assert main(["export", str(ckpts["country"]), "--out", str(out), "--force"]) == 0
    assert not (out / "notes.txt").exists() and (out / "model.safetensors").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left behind


def test_damaged_exports_are_one_line(ckpts, tmp_path):
    out = tmp_path / "model"
    assert main(["export", str(ckpts["country"]), "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    for edit, message in [
        (lambda c: c.update(library_name="other"), "not a geotrainr model's config"),
        (lambda c: c.update(task="evil"), "unknown task kind"),
        (lambda c: c.update(countries=list(reversed(c["countries"])) + ["DE"]), "names a country twice"),
    ]:
        bad = json.loads(json.dumps(config))
        edit(bad)
        (out / "config.json").write_text(json.dumps(bad))
        with pytest.raises(CheckpointError, match=message):
            load_exported(out)
    (out / "config.json").write_text(json.dumps(config))
    (out / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="safetensors"):
        load_exported(out)
    (out / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        load_exported(out)
    with pytest.raises(CheckpointError, match="not a checkpoint file, an exported model folder or a Hub repository id"):
        geotrainr.load(tmp_path / "nothing-here")


def _hub_cache(folder: Path, repo: str, export: Path) -> Path:
    """The huggingface_hub cache layout of a downloaded model repository."""
    org, name = repo.split("/")
    base = folder / f"models--{org}--{name}"
    rev = "0123456789abcdef0123456789abcdef01234567"
    snap = base / "snapshots" / rev
    snap.mkdir(parents=True)
    for f in export.iterdir():
        (snap / f.name).write_bytes(f.read_bytes())
    (base / "refs").mkdir()
    (base / "refs" / "main").write_text(rev)
    return folder


def test_load_from_the_hub_cache_offline(ckpts, tmp_path, pictures):
    export = tmp_path / "export"
    assert main(["export", str(ckpts["coords"]), "--out", str(export)]) == 0
    cache = _hub_cache(tmp_path / "hf-cache", "someone/geo-model", export)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_HOME": str(tmp_path / "hf-home"),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    code = ("import json, sys, geotrainr\n"
            "loc = geotrainr.load('someone/geo-model', device='cpu')\n"
            "print(json.dumps([g.to_dict() for g in loc.locate(sys.argv[1:])]))\n")
    done = subprocess.run([sys.executable, "-c", code, *map(str, pictures)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    from_hub = json.loads(done.stdout)
    local = [g.to_dict() for g in Locator.load(export, device="cpu").locate(pictures)]
    assert from_hub == local
    missing = subprocess.run([sys.executable, "-m", "geotrainr", "locate", "someone/other-model", str(pictures[0])], env=env,
                             capture_output=True, text=True, timeout=300)
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert "someone/other-model" in missing.stderr and len(missing.stderr.strip().splitlines()) == 1


def test_user_api_at_the_top_level(ckpts, pictures):
    assert {"load", "locate", "Locator", "CountryClassifier", "CoordinateRegressor", "DistancePredictor",
            "GeoDataModule", "Guess", "Preprocessor"} <= set(dir(geotrainr))
    loc = geotrainr.load(ckpts["country"], device="cpu")
    a = geotrainr.locate(loc, pictures)
    b = geotrainr.locate(ckpts["country"], [Image.open(p) for p in pictures])
    c = loc.locate([Path(p).read_bytes() for p in pictures])
    for x, y, z in zip(a, b, c):
        assert np.array_equal(x.probs, y.probs) and np.array_equal(x.probs, z.probs)


def test_a_run_folder_loads_its_best_checkpoint(ckpts, tmp_path, pictures):
    import shutil

    run = tmp_path / "runs" / "coords" / "version_0"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(ckpts["coords"], run / "checkpoints" / "best.ckpt")
    _same(Locator.load(ckpts["coords"], device="cpu").locate(pictures), geotrainr.load(run, device="cpu").locate(pictures))
    with pytest.raises(CheckpointError):  # a folder that is neither a run nor an export says so
        geotrainr.load(tmp_path / "runs" / "coords", device="cpu")

"""Every verb speaks one vocabulary (MODEL, --index, -o/--out, --split, --workers, --device, --force, --config),
read from the verbs' own parsers; old spellings keep working with one warning line."""

from __future__ import annotations

import argparse
import json
import importlib
from pathlib import Path

import pytest

from geotrainr.cli import COMMANDS, LIGHTNING_FLAGS, LIGHTNING_MODEL_VERBS, LIGHTNING_VERBS, lightning_args, main
from conftest import make_image
from geotrainr.commands import is_old_spelling

#: verb -> what the vocabulary says of it: uses a model, reads an index, writes, runs a model, split to read
VOCABULARY = {
    "locate": dict(model=True, writes=True, device=True),
    "explain": dict(model=True, writes=True, device=True),
    "report": dict(model=True, index=True, writes=True, device=True, split=True, config=True),
    "export": dict(model=True, writes=True),
    "serve": dict(model=True, device=True),
    "predict": dict(model=True, writes=True, device=True),
    "geocells": dict(model=True, index=True, writes=True, split=True),
    "ablate": dict(index=True, writes=True, device=True, split=True),
    "pack": dict(index=True, writes=True),
    "export-dataset": dict(index=True, writes=True),
    "index": dict(writes=True),
    "demo-data": dict(writes=True),
    "scrape": dict(writes=True, config=True),
}
OLD_SPELLINGS = ("--checkpoint", "--predictions", "--rebuild", "--force-settings", "--ckpt_path", "--csv")


def _parser(verb: str) -> argparse.ArgumentParser:
    module = "predict" if verb == "predict" else COMMANDS[verb][0]
    return importlib.import_module(f"geotrainr.commands.{module}").build_parser(f"geotrainr {verb}")


def _option(parser: argparse.ArgumentParser, flag: str) -> argparse.Action | None:
    return next((a for a in parser._actions if flag in a.option_strings), None)


def test_the_table_names_every_verb():
    assert set(VOCABULARY) == set(COMMANDS) | {"predict"}


@pytest.mark.parametrize("verb", list(VOCABULARY))
def test_every_verb_follows_the_vocabulary(verb):
    rules, parser = VOCABULARY[verb], _parser(verb)
    positionals = [a for a in parser._actions if not a.option_strings and not is_old_spelling(a)]
    if rules.get("model"):
        assert positionals and positionals[0].metavar == "MODEL", f"{verb}: MODEL is not the first positional"
    for action in parser._actions:
        old = set(action.option_strings) & set(OLD_SPELLINGS)
        positional_index = not action.option_strings and "INDEX" in str(action.metavar or action.dest).upper()
        if old or positional_index:
            assert is_old_spelling(action), f"{verb}: {action.option_strings or action.metavar} accepted " \
                "without a deprecation note"
    if rules.get("index"):
        index = _option(parser, "--index")
        assert index is not None and not is_old_spelling(index), f"{verb}: no --index"
    out = _option(parser, "--out")
    if rules.get("writes"):
        assert out is not None and "-o" in out.option_strings, f"{verb}: -o is not --out"
        force = _option(parser, "--force")
        assert force is not None and force.nargs == 0 and not is_old_spelling(force), f"{verb}: no --force"
    elif out is not None:
        assert "-o" in out.option_strings
    if rules.get("device"):
        assert _option(parser, "--device") is not None, f"{verb}: no --device"
    split = _option(parser, "--split")
    if split is not None and not is_old_spelling(split):
        assert not set(split.choices or ()) & {"group", "random", "block", "keep"}, f"{verb}: --split is a method"
    if rules.get("split"):
        assert split is not None and not is_old_spelling(split), f"{verb}: no --split"
    workers = _option(parser, "--workers")
    if workers is not None and verb == "serve":
        assert is_old_spelling(workers), "serve's model processes are --workers-per-device"
    if rules.get("config"):
        assert _option(parser, "--config") is not None, f"{verb}: no --config"


def test_the_lightning_verbs_speak_it_too():
    """validate/test/predict: MODEL first is the checkpoint; --device, --index, --workers, --split, -o map to
    LightningCLI's settings."""
    for verb in LIGHTNING_MODEL_VERBS:
        assert lightning_args(verb, ["m.ckpt", "--device", "cuda:1"]) == [
            "--ckpt_path=m.ckpt", "--trainer.accelerator=gpu", "--trainer.devices=[1]"]
        assert lightning_args(verb, ["--device=cpu"]) == ["--trainer.accelerator=cpu", "--trainer.devices=1"]
        assert lightning_args(verb, ["--index", "i.parquet", "--workers=0"]) == [
            "--data.init_args.index=i.parquet", "--data.init_args.num_workers=0"]
    assert lightning_args("predict", ["m.ckpt", "--split", "test", "-o", "p.csv"]) == [
        "--ckpt_path=m.ckpt", "--data.init_args.predict_split=test", "--predictions=p.csv"]
    assert {"--index", "--workers", "--split", "--out", "-o"} <= set(LIGHTNING_FLAGS)


def test_lightning_parser_takes_the_checkpoint_and_a_config(capsys):
    """The LightningCLI parser itself (built by the code) has --ckpt_path and --config on validate/test/predict."""
    for verb in LIGHTNING_MODEL_VERBS:
        assert main([verb, "--help"]) == 0
        text = capsys.readouterr().out
        assert "--ckpt_path" in text and "--config" in text


def test_a_deprecated_spelling_works_and_warns_once(tmp_path, capsys):
    cache = tmp_path / "demo"
    assert main(["demo-data", "--out", str(cache), "--per-country", "2", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["demo-data", "--out", str(cache), "--per-country", "2", "--quiet", "--rebuild"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["geotrainr demo-data: warning: --rebuild is deprecated, use --force"]
    assert main(["demo-data", "--out", str(cache), "--per-country", "3", "--quiet"]) == 2  # another set there
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--force" in err[0]
    assert main(["demo-data", "--out", str(cache), "--per-country", "2", "--quiet"]) == 0  # the same set: reused


def test_a_deprecated_positional_warns_once_and_means_the_new_flag(tiny_index, tmp_path, capsys):
    out = tmp_path / "hf"
    assert main(["export-dataset", str(tiny_index), "--out", str(out)]) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert err == ["geotrainr export-dataset: warning: the positional INDEX is deprecated, use --index INDEX"]
    assert (out / "README.md").is_file()
    assert main(["export-dataset", str(tiny_index), "--index", str(tiny_index), "--out", str(tmp_path / "x")]) == 0
    assert main(["export-dataset", str(tiny_index), "--index", "other.parquet", "--out", str(tmp_path / "y")]) == 2


def _photo_folder(folder: Path) -> Path:
    """Twelve photos named CC_lat,lon.png, the folder layout of the index verb."""
    for i, (cc, lat, lon) in enumerate([("DE", 52.5, 13.4), ("FR", 48.9, 2.35), ("ES", 40.4, -3.7)] * 4):
        make_image(folder / f"{cc}_{lat + 0.1 * i:.2f},{lon}.png", seed=i)
    return folder


def test_index_split_method_is_split_by(tmp_path, capsys):
    folder = _photo_folder(tmp_path / "photos")
    out = tmp_path / "i.parquet"
    assert main(["index", str(folder), "--out", str(out), "--split", "random", "--no-check"]) == 0
    assert "geotrainr index: warning: --split is deprecated, use --split-by" in capsys.readouterr().err
    assert main(["index", str(folder), "--out", str(out), "--split-by", "random", "--no-check", "--force"]) == 0
    assert "warning" not in capsys.readouterr().err


def test_a_writing_verb_refuses_to_replace_without_force(tmp_path, capsys):
    out = tmp_path / "index.parquet"
    folder = _photo_folder(tmp_path / "photos")
    assert main(["index", str(folder), "-o", str(out), "--no-check"]) == 0
    before = out.read_bytes()
    capsys.readouterr()
    assert main(["index", str(folder), "-o", str(out), "--no-check", "--split-by", "random"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--force" in err[0] and err[0].startswith("geotrainr index: error: ")
    assert out.read_bytes() == before
    assert main(["index", str(folder), "-o", str(out), "--no-check", "--val", "0.5", "--force"]) == 0
    assert out.read_bytes() != before


def test_geocells_refuses_and_replaces_its_json(tiny_index, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ["geocells", "--index", str(tiny_index), "--min-per-cell", "2", "--max-per-cell", "4", "--map", "none"]
    Path("cells.json").write_text("mine")
    assert main([*argv, "-o", "cells.json"]) == 2
    assert "--force" in capsys.readouterr().err and Path("cells.json").read_text() == "mine"
    assert main([*argv, "-o", "cells.json", "--force"]) == 0
    assert Path("cells.json").read_text().startswith("{")
    capsys.readouterr()
    assert main(["geocells", "--checkpoint", "cells.json", "--map", "none"]) == 0  # the old spelling of MODEL
    assert capsys.readouterr().err.strip() == "geotrainr geocells: warning: --checkpoint is deprecated, use MODEL"
    assert main(["geocells", "cells.json", "--map", "none"]) == 0
    assert capsys.readouterr().err == ""


@pytest.fixture(scope="module")
def country_ckpt(tmp_path_factory) -> Path:
    from test_locate import tiny_checkpoints

    return tiny_checkpoints(tmp_path_factory)["country"]


def test_predict_takes_model_first_and_keeps_its_output_without_force(country_ckpt, tmp_path, capsys):
    from test_locate import photo

    photos = [photo(tmp_path / f"p{i}.jpg", i) for i in range(3)]
    new, old = tmp_path / "new.csv", tmp_path / "old.csv"
    assert main(["predict", str(country_ckpt), *map(str, photos), "-o", str(new), "--device", "cpu"]) == 0
    capsys.readouterr()
    assert main(["predict", "--ckpt_path", str(country_ckpt), *map(str, photos), "--predictions", str(old)]) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert err == ["geotrainr predict: warning: --ckpt_path is deprecated, use MODEL",
                   "geotrainr predict: warning: --predictions is deprecated, use --out"]
    assert new.read_text() == old.read_text()
    assert main(["predict", str(country_ckpt), str(photos[0]), "-o", str(new)]) == 2
    assert "--force" in capsys.readouterr().err and new.read_text() == old.read_text()
    assert main(["predict", str(country_ckpt), str(photos[0]), "-o", str(new), "--force"]) == 0
    assert len(new.read_text().splitlines()) == 2  # header and the one photo


def test_validate_takes_model_first_with_index_device_and_workers(country_ckpt, tiny_index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = [str(country_ckpt), "--config", "country", "--index", str(tiny_index), "--device", "cpu", "--workers", "0",
            "--trainer.default_root_dir=v", "--trainer.enable_progress_bar=false"]
    assert main(["validate", *argv]) == 0
    metrics = json.loads(next((tmp_path / "v").rglob("metrics-validate.json")).read_text())
    assert "val/acc1" in metrics

"""One prediction record: predict (with or without a config), locate and report write the same schema."""

from __future__ import annotations

import csv
import json

import pytest

from geotrainr.cli import main
from geotrainr.predictions import RECORD_FIELDS
from test_locate import photo, tiny_checkpoints


@pytest.fixture(scope="session")
def ckpts(tmp_path_factory):
    return tiny_checkpoints(tmp_path_factory)


@pytest.fixture
def folder(tmp_path):
    d = tmp_path / "photos"
    for i in range(7):
        photo(d / f"p{i}.jpg", i, size=(60 + 10 * i, 50))
    (d / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    return d


def test_predict_photos_without_config_matches_locate(ckpts, folder, tmp_path, capsys):
    out = tmp_path / "pred.json"
    assert main(["predict", "--ckpt_path", str(ckpts["country"]), str(folder), "--predictions", str(out),
                 "--batch-size", "3"]) == 0
    assert "8 predictions written" in capsys.readouterr().out
    predicted = json.loads(out.read_text())
    assert main(["locate", str(ckpts["country"]), str(folder), "--format", "json"]) == 1  # the broken file: exit 1
    located = json.loads(capsys.readouterr().out)
    assert [r["image"] for r in predicted] == [r["image"] for r in located]
    for p, q in zip(predicted, located):
        assert list(p) == list(q)  # one schema, one column order
        if q["error"] is None:
            assert p == q  # one input, one answer
        else:
            assert p["error"] and "broken.jpg" in p["error"] and p["country"] is None


def test_predict_photos_under_ddp_writes_every_rank(ckpts, folder, tmp_path):
    one, two = tmp_path / "one.csv", tmp_path / "two.csv"
    base = ["predict", "--ckpt_path", str(ckpts["coords"]), str(folder), "--batch-size", "2", "--accelerator", "cpu"]
    assert main([*base, "--predictions", str(one)]) == 0
    assert main([*base, "--predictions", str(two), "--devices", "2", "--strategy", "ddp_spawn"]) == 0
    a, b = (list(csv.DictReader(p.open())) for p in (one, two))
    assert len(a) == len(b) == 8 and [r["image"] for r in a] == [r["image"] for r in b]
    for r, q in zip(a, b):
        assert r["lat"] == pytest.approx(q["lat"]) if r["lat"] else r["lat"] == q["lat"]
    header = next(csv.reader(one.open()))
    assert header == [f for f in RECORD_FIELDS if f in header]


def test_predict_bad_inputs_are_one_line(ckpts, folder, tmp_path, capsys):
    for argv, message in [
        (["--ckpt_path", str(ckpts["country"]), str(folder), "--predictions", str(tmp_path / "p.txt")], ".csv, .json or .jsonl"),
        (["--ckpt_path", str(tmp_path / "none.ckpt"), str(folder)], "none.ckpt"),
        (["--ckpt_path", str(ckpts["country"]), str(tmp_path / "empty")], "no image files"),
    ]:
        (tmp_path / "empty").mkdir(exist_ok=True)
        assert main(["predict", *argv]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
    assert not (tmp_path / "p.txt").exists()

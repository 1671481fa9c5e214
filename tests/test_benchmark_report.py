"""`geotrainr report --benchmark`: the published layouts read in place, the standard table, clear errors."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from geotrainr.benchmarking import PUBLISHED, STANDARD_COLUMNS
from geotrainr.cli import main
from geotrainr.geo import geoscore, great_circle_error_km
from geotrainr.predictions import RECORD_FIELDS
from test_locate import tiny_checkpoints
from test_sources import REAL, benchmark_folder, build_osv5m, needs_real, real_photos


@pytest.fixture(scope="session")
def ckpts(tmp_path_factory):
    return tiny_checkpoints(tmp_path_factory)


def test_im2gps3k_layout_standard_table(ckpts, tmp_path, capsys):
    folder, truth = benchmark_folder(tmp_path, "im2gps3k", "IMG_ID,AUTHOR,LAT,LON,S3_Label,S16_Label,S365_Label", n=9)
    out = tmp_path / "report"
    assert main(["report", str(ckpts["country"]), "--benchmark", "im2gps3k", "--data", str(folder), "--out", str(out),
                 "--workers", "0"]) == 0
    stdout = capsys.readouterr().out
    table = (out / "benchmark.md").read_text()
    assert "| method | " + " | ".join(STANDARD_COLUMNS.values()) + " |" in table
    assert table.split("\n\n", 1)[1].strip() in stdout  # printed as written
    assert "| **best.ckpt** |" in table
    # published rows follow, each with its source; a figure not reported is a dash, never a zero
    assert "| GeoCLIP | 14.1 | 34.5 | 50.6 | 69.7 | 83.8 | — | — | — |" in table
    assert "| StreetCLIP (zero-shot) | — | 22.4 |" in table
    assert all(f"- {p.method}: " in table for p in PUBLISHED["im2gps3k"])
    preds = pd.read_csv(out / "predictions.csv")
    assert len(preds) == 8 and list(preds.columns) == [c for c in RECORD_FIELDS if c in preds.columns]
    m = json.loads((out / "metrics.json").read_text())["metrics"]
    d = great_circle_error_km(preds[["lat", "lon"]].to_numpy(), preds[["true_lat", "true_lon"]].to_numpy())
    assert m["err_km_median"] == pytest.approx(float(pd.Series(d).median()), rel=1e-3)
    assert m["geoscore"] == pytest.approx(float(geoscore(d).mean()), rel=1e-3)
    for km in (1, 25, 200, 750, 2500):
        assert m[f"acc_{km}km"] == pytest.approx(float((d <= km).mean()), abs=1e-6)
    assert "1 item(s) of im2gps3k left out" in stdout


@needs_real
def test_osv5m_test_split_from_zips(ckpts, tmp_path, capsys):
    truth = build_osv5m(tmp_path / "osv5m")
    out = tmp_path / "report"
    assert main(["report", str(ckpts["coords"]), "--benchmark", "osv5m-test", "--data", str(tmp_path / "osv5m"),
                 "--out", str(out), "--workers", "0"]) == 0
    preds = pd.read_csv(out / "predictions.csv")
    test = truth[truth["split"] == "test"]
    assert len(preds) == len(test) > 0  # the test split only, every image read from the zip archives
    assert all(":" in p and ".zip" in p for p in preds["image"])
    assert not math.isnan(json.loads((out / "metrics.json").read_text())["metrics"]["geoscore"])


@needs_real
def test_real_photos_as_im2gps3k(ckpts, tmp_path, capsys):
    src = real_photos()
    csv = tmp_path / "im2gps3k_places365.csv"
    pd.DataFrame({"IMG_ID": src["path"].str.split("/").str[-1], "AUTHOR": "mapillary", "LAT": src["lat"],
                  "LON": src["lon"]}).to_csv(csv, index=False)
    assert main(["report", str(ckpts["country"]), "--benchmark", "im2gps3k", "--data", str(csv), "--images",
                 str(REAL / "images"), "--out", str(tmp_path / "r"), "--workers", "0"]) == 0
    assert len(pd.read_csv(tmp_path / "r/predictions.csv")) == 71
    assert "whose country is in the model's class list" in capsys.readouterr().out


def test_benchmark_mistakes_are_one_line(ckpts, tmp_path, capsys):
    for argv, message in [
        (["--benchmark", "im2gps3k"], "needs --data"),
        (["--benchmark", "yfcc4k", "--data", str(tmp_path / "missing")], "missing"),
        (["--data", str(tmp_path)], "give --benchmark"),
    ]:
        assert main(["report", str(ckpts["country"]), *argv, "--out", str(tmp_path / "r")]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()

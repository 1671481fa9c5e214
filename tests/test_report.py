"""`geotrainr report` and geotrainr.report: metrics with the design's names, pictures written, report.md."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from geotrainr import maps, plots
from geotrainr.cli import main
from geotrainr.report import evaluate, write_report
from test_locate import SIX, photo, tiny_checkpoints

PICTURES = ("error_cdf.png", "map.png", "confusion.png", "per_country.png")
GEO_METRICS = ("err_km_mean", "err_km_median", "acc_1km", "acc_25km", "acc_200km", "acc_750km", "acc_2500km",
               "geoscore", "err_deg_mean", "within_5deg")


@pytest.fixture(scope="session")
def ckpts(tmp_path_factory):
    return tiny_checkpoints(tmp_path_factory)


@pytest.fixture(scope="session")
def index(ckpts) -> Path:
    return ckpts["country"].parents[4] / "data" / "index.parquet"  # base/runs/country/version_0/checkpoints/best.ckpt


def check_pictures(folder: Path) -> None:
    for name in PICTURES:
        with Image.open(folder / name) as im:
            assert im.format == "PNG" and im.width >= 400 and im.height >= 250, (name, im.size)
            assert np.asarray(im.convert("L")).std() > 5, name  # not a blank canvas


def test_report_country_via_index(ckpts, index, tmp_path, capsys):
    out = tmp_path / "rep"
    assert main(["report", str(ckpts["country"]), "--index", str(index), "--split", "val", "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert "acc1" in stdout and "err_km_median" in stdout and f"{out / 'report.md'}" in stdout
    check_pictures(out)
    page = (out / "report.md").read_text()
    for name in PICTURES + ("predictions.csv", "metrics.json"):
        assert f"({name})" in page
    for name in ("acc1", "acc5", "acc_macro", *GEO_METRICS):
        assert f"| `{name}` |" in page
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["kind"] == "country" and saved["images"] == len(pd.read_csv(out / "predictions.csv"))
    m = saved["metrics"]
    assert 0 <= m["acc1"] <= m["acc5"] <= 1 and m["acc_1km"] <= m["acc_25km"] <= m["acc_2500km"] <= 1
    preds = pd.read_csv(out / "predictions.csv")
    assert {"image", "true_country", "country", "probability", "error_km"} <= set(preds.columns)
    assert m["err_km_median"] == pytest.approx(preds["error_km"].median(), rel=1e-4)
    assert m["acc1"] == pytest.approx((preds["country"] == preds["true_country"]).mean(), abs=1e-6)


def test_report_via_config_and_every_kind(ckpts, index, tmp_path, capsys):
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump({"data": {"class_path": "geotrainr.data.GeoDataModule", "init_args": {"index": str(index)}}}))
    for kind in ("coords", "distance"):
        out = tmp_path / kind
        assert main(["report", str(ckpts[kind]), "--config", str(config), "--out", str(out)]) == 0, kind
        check_pictures(out)
        m = json.loads((out / "metrics.json").read_text())["metrics"]
        assert "acc1" in m and "err_deg_mean" in m
        if kind == "distance":  # err_deg_mean is the distance task's own (image-to-anchor distances), as in training
            assert "anchor_acc1" in m and "anchor_acc5" in m and "within_5deg" not in m
            assert set(GEO_METRICS) - {"within_5deg"} <= set(m)
        else:
            assert set(GEO_METRICS) <= set(m)
    assert "coords model" in capsys.readouterr().out


def test_report_from_a_csv_listing(ckpts, tmp_path, capsys):
    rows = []
    for i in range(8):
        cc, lat, lon = SIX[i % 6]
        photo(tmp_path / "imgs" / f"{i}.jpg", i % 6)
        rows.append({"path": f"imgs/{i}.jpg", "lat": lat, "lon": lon, "country": cc})
    rows.append({"path": "imgs/far.jpg", "lat": 35.68, "lon": 139.69, "country": "JP"})  # outside the class list
    photo(tmp_path / "imgs" / "far.jpg", 1)
    (tmp_path / "imgs" / "broken.jpg").write_bytes(b"not a jpeg")
    rows.append({"path": "imgs/broken.jpg", "lat": 50.0, "lon": 10.0, "country": "DE"})
    pd.DataFrame(rows).to_csv(tmp_path / "photos.csv", index=False)
    out = tmp_path / "rep"
    assert main(["report", str(ckpts["country"]), "--truth", str(tmp_path / "photos.csv"), "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert "9 images (1 unreadable, skipped)" in stdout and "JP" in stdout
    check_pictures(out)
    with Image.open(out / "map.png") as im:  # widened to Tokyo: much wider than tall
        assert im.width / im.height > 2.0
    assert "photos.csv" in (out / "report.md").read_text()
    # the same listing spelt otherwise, with the photos in another folder
    odd = pd.DataFrame(rows).rename(columns={"path": "file", "lat": "Latitude", "lon": "Longitude"})
    odd["file"] = odd["file"].str.replace("imgs/", "", regex=False)
    odd.to_csv(tmp_path / "odd.csv", index=False)
    assert main(["report", str(ckpts["country"]), "--truth", str(tmp_path / "odd.csv"), "--images", str(tmp_path / "imgs"),
                 "--columns", "path=file,lat=Latitude,lon=Longitude", "--out", str(tmp_path / "rep2")]) == 0
    assert "9 images (1 unreadable, skipped)" in capsys.readouterr().out
    assert json.loads((tmp_path / "rep2" / "metrics.json").read_text())["metrics"] == \
        json.loads((out / "metrics.json").read_text())["metrics"]


def test_report_errors_are_one_line(ckpts, index, tmp_path, capsys):
    corrupt = tmp_path / "bad.ckpt"
    corrupt.write_bytes(b"\x80\x04 not a pickle")
    cases = [
        ([str(corrupt), "--index", str(index)], "not a readable checkpoint"),
        ([str(ckpts["country"]), "--index", str(index), "--split", "nope"], "unknown split"),
        ([str(ckpts["country"]), "--index", str(tmp_path / "none.parquet")], "no such index"),
        ([str(ckpts["country"]), "--config", str(tmp_path / "none.yaml")], "no such config"),
    ]
    for args, message in cases:
        assert main(["report", *args, "--out", str(tmp_path / "o")]) == 2, args
        err = capsys.readouterr().err
        assert message in err and err.strip().count("\n") == 0 and "Traceback" not in err, err


def test_library_evaluate_and_plots(ckpts, index, tmp_path):
    ev = evaluate(ckpts["country"], index=index, split="train", device="cpu")
    assert ev.kind == "country" and ev.split == "train" and len(ev.frame) > 0
    per = ev.per_country()
    assert per["images"].sum() == len(ev.frame) and per["accuracy"].between(0, 1).all()
    page = write_report(ev, tmp_path / "r", checkpoint=ckpts["country"], title="tiny")
    assert page.read_text().startswith("# tiny")
    # pictures on their own, with sizes checked
    cdf = plots.plot_error_cdf([0.5, 10, 300, 900, 3000], tmp_path / "cdf.png")
    conf = plots.plot_confusion(["DE", "DE", "FR"], ["DE", "FR", "FR"], tmp_path / "conf.png")
    assert plots.confusion_matrix(["DE", "DE", "FR"], ["DE", "FR", "FR"], ["DE", "FR"]).tolist() == [[1, 1], [0, 1]]
    for p in (cdf, conf):
        with Image.open(p) as im:
            assert im.width >= 400 and im.height >= 300
    assert maps.map_extent([50.0], [10.0]) == maps.EUROPE_EXTENT
    assert maps.map_extent([-34.0], [151.0])[1] > 150 and maps.map_extent([-34.0], [151.0])[2] < -34

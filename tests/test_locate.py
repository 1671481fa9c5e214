"""`geotrainr locate` and the library API behind it (Locator, Guess, group, listings, maps)."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from conftest import SIX, build_tiny_index
from geotrainr.cli import main
from geotrainr.countries import get_country
from geotrainr.artifact import CheckpointError, read_checkpoint
from geotrainr.locator import Locator
from geotrainr.multiview import auto_group_key, group
from geotrainr.predictions import Guess
from geotrainr.preprocess import ImageReadError
from geotrainr.preprocess import decode

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("country", "coords", "distance")


# --- shared fixtures (imported by test_explain.py and test_report.py) ----------------------------------


def photo(path: Path, seed: int, size=(48, 48), mode: str = "RGB", fmt: str | None = None, **save) -> Path:
    """A small real image whose colours depend on ``seed`` (so classes are learnable)."""
    rng = np.random.default_rng(seed)
    w, h = size
    base = np.array([seed * 37 % 255, seed * 91 % 255, seed * 53 % 255])
    arr = (base + rng.integers(0, 40, (h, w, 3))).clip(0, 255).astype(np.uint8)
    im = Image.fromarray(arr).convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, format=fmt, **save)
    return path


def tiny_checkpoints(tmp_path_factory) -> dict[str, Path]:
    """One tiny checkpoint per task kind, trained once per test session (shared by several test files)."""
    base = tmp_path_factory.getbasetemp() / "tiny-checkpoints"
    ckpts = {k: base / f"runs/{k}/version_0/checkpoints/best.ckpt" for k in KINDS}
    if all(p.is_file() for p in ckpts.values()):
        return ckpts
    base.mkdir(exist_ok=True)
    index = build_tiny_index(base / "data", n=36, val=0.34)
    cwd = os.getcwd()
    os.chdir(base)
    try:
        for kind in KINDS:
            args = [
                "fit", "--config", str(ROOT / "configs" / f"{kind}.yaml"),
                f"--data.init_args.index={index}", "--data.init_args.num_workers=0", "--data.init_args.batch_size=8",
                "--model.init_args.backbone=test_efficientnet", "--model.init_args.weights=null",
                "--model.init_args.image_size=64", "--trainer.max_epochs=1", "--trainer.limit_train_batches=3",
                "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false", "--trainer.log_every_n_steps=1",
            ]
            assert main(args) == 0, kind
    finally:
        os.chdir(cwd)
    assert all(p.is_file() for p in ckpts.values())
    return ckpts


@pytest.fixture(scope="session")
def ckpts(tmp_path_factory) -> dict[str, Path]:
    return tiny_checkpoints(tmp_path_factory)


@pytest.fixture
def photos(tmp_path: Path) -> dict[str, Path]:
    """One photo per format and mode Pillow reads, plus an EXIF-rotated JPEG."""
    d = tmp_path / "photos"
    out = {
        "jpeg_big": photo(d / "big.jpg", 1, size=(1600, 900)),
        "png_rgba": photo(d / "rgba.png", 2, mode="RGBA"),
        "png_gray": photo(d / "gray.png", 3, mode="L"),
        "webp": photo(d / "pic.webp", 4, size=(120, 80), fmt="WEBP"),
        "tiny": photo(d / "one.png", 5, size=(1, 1)),
    }
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 deg clockwise to display
    out["jpeg_exif"] = photo(d / "rotated.jpg", 0, size=(80, 40), exif=exif.tobytes())
    return out


def run_cli(capsys, *args) -> tuple[int, str, str]:
    code = main(list(map(str, args)))
    cap = capsys.readouterr()
    return code, cap.out, cap.err


# --- the command -------------------------------------------------------------------------------------


def test_locate_every_format_json(ckpts, photos, capsys):
    code, out, err = run_cli(capsys, "locate", ckpts["country"], *photos.values(), "--format", "json", "-k", "3")
    assert code == 0, err
    rows = json.loads(out)
    assert [r["image"] for r in rows] == [str(p) for p in photos.values()]
    classes = read_checkpoint(ckpts["country"]).checkpoint["geotrainr"]["countries"]
    for r in rows:
        assert {"image", "country", "probability", "top_k", "lat", "lon", "nearest_place"} <= set(r)
        assert r["error"] is None and r["country"] in classes
        assert len(r["top_k"]) == 3 and r["top_k"][0] == {"country": r["country"], "probability": r["probability"]}
        assert r["top_k"][0]["probability"] >= r["top_k"][1]["probability"] >= r["top_k"][2]["probability"]
        c = get_country(r["country"])
        assert (r["lat"], r["lon"]) == pytest.approx((c.lat, c.lon), abs=1e-4)  # the guessed country's centre
        assert isinstance(r["nearest_place"], str) and r["nearest_place"].endswith(f", {r['coordinate_country']}")


def test_exif_orientation_is_applied(ckpts, tmp_path):
    loc = Locator.from_checkpoint(ckpts["country"], device="cpu")
    tagged = tmp_path / "tagged.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    photo(tagged, 0, size=(96, 48), exif=exif.tobytes(), quality=100)
    upright = Image.open(tagged).transpose(Image.Transpose.ROTATE_270)  # what a viewer shows
    assert upright.size == (48, 96)
    seen = decode(tagged, draft_size=128)
    assert seen.size == (48, 96)
    assert np.abs(np.asarray(seen, float) - np.asarray(upright.convert("RGB"), float)).mean() < 2.0  # JPEG decoder paths differ slightly
    a, b = loc.locate([tagged, upright], top_k=6)
    np.testing.assert_allclose(a.probs, b.probs, atol=2e-3)


def test_table_is_readable(ckpts, photos, capsys):
    code, out, err = run_cli(capsys, "locate", ckpts["country"], photos["jpeg_big"], photos["webp"])
    assert code == 0, err
    lines = out.splitlines()
    header = next(line for line in lines if line.startswith("image"))
    for word in ("guess", "p", "lat", "lon", "nearest place"):
        assert word in header
    assert "big.jpg" in out and "pic.webp" in out and "2 of 2 located" in out


def test_csv_output(ckpts, photos, capsys):
    code, out, _ = run_cli(capsys, "locate", ckpts["country"], photos["png_rgba"], photos["png_gray"], "--format", "csv")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == 2 and rows[0]["image"].endswith("rgba.png")
    assert len(rows[0]["top_k"].split()) == 5 and float(rows[0]["probability"]) > 0


def test_unreadable_file_among_good_ones_exit_1(ckpts, photos, tmp_path, capsys):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    missing = tmp_path / "missing.jpg"
    code, out, err = run_cli(capsys, "locate", ckpts["country"], photos["jpeg_big"], bad, missing, photos["webp"],
                             "--format", "json")
    assert code == 1
    rows = json.loads(out)
    assert [r["error"] is None for r in rows] == [True, False, False, True]
    err_lines = [line for line in err.splitlines() if "error" in line]
    assert len(err_lines) == 2 and "broken.jpg" in err_lines[0] and "missing.jpg: no such file" in err_lines[1]
    assert "Traceback" not in err


def test_folder_skips_non_images_with_a_note(ckpts, tmp_path, capsys):
    d = tmp_path / "folder"
    photo(d / "a.jpg", 1)
    photo(d / "sub" / "b.png", 2)
    (d / "notes.txt").write_text("not a photo")
    code, out, err = run_cli(capsys, "locate", ckpts["country"], d, "--format", "json")
    assert code == 0
    assert sorted(Path(r["image"]).name for r in json.loads(out)) == ["a.jpg", "b.png"]
    assert "skipped 1 file" in err
    code, out, err = run_cli(capsys, "locate", ckpts["country"], d, "--format", "json", "--no-recursive")
    assert [Path(r["image"]).name for r in json.loads(out)] == ["a.jpg"]


def test_empty_folder_one_line_error(ckpts, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, out, err = run_cli(capsys, "locate", ckpts["country"], tmp_path / "empty")
    assert code == 2 and out == ""
    assert err.strip().count("\n") == 0 and "no image files" in err


@pytest.mark.parametrize("content", [b"", b"garbage", None])
def test_bad_checkpoints_one_line_error(content, photos, tmp_path, capsys):
    ckpt = tmp_path / "model.ckpt"
    if content is None:
        torch.save({"state_dict": {}, "epoch": 0}, ckpt)  # a torch file, but not ours
    else:
        ckpt.write_bytes(content)
    code, out, err = run_cli(capsys, "locate", ckpt, photos["webp"])
    assert code == 2 and out == ""
    assert err.startswith("geotrainr locate: error:") and err.strip().count("\n") == 0 and "Traceback" not in err
    code, _, err = run_cli(capsys, "locate", tmp_path / "nope.ckpt", photos["webp"])
    assert code == 2 and "no such checkpoint" in err


def test_coordinate_model(ckpts, photos, capsys):
    code, out, err = run_cli(capsys, "locate", ckpts["coords"], photos["jpeg_big"], photos["png_gray"], "--format", "json")
    assert code == 0, err
    for r in json.loads(out):
        assert r["probability"] is None and r["top_k"] == []
        assert r["country"] == r["coordinate_country"] and -90 <= r["lat"] <= 90 and -180 <= r["lon"] <= 180
    code, out, _ = run_cli(capsys, "locate", ckpts["coords"], photos["jpeg_big"])
    assert "coordinate model" in out and "next guesses" not in out


def test_distance_model(ckpts, photos, capsys):
    code, out, err = run_cli(capsys, "locate", ckpts["distance"], photos["webp"], "--format", "json", "-k", "2")
    assert code == 0, err
    (r,) = json.loads(out)
    assert 0 < r["probability"] <= 1 and len(r["top_k"]) == 2
    c = get_country(r["country"])
    assert (r["lat"], r["lon"]) == pytest.approx((c.lat, c.lon), abs=1e-4)


def test_group_by_auto(ckpts, tmp_path, capsys):
    d = tmp_path / "panos"
    for h in (0, 90, 180, 270):
        photo(d / f"abc_{h}.jpg", h // 90)
    photo(d / "xyz-1.jpg", 4)
    photo(d / "xyz-2.jpg", 5)
    photo(d / "IMG_1234.jpg", 1)
    code, out, err = run_cli(capsys, "locate", ckpts["country"], d, "--group-by", "auto", "--format", "json")
    assert code == 0, err
    rows = {Path(r["image"]).name: r for r in json.loads(out)}
    assert set(rows) == {"abc", "xyz", "IMG_1234"}
    assert rows["abc"]["views"] == 4 and rows["xyz"]["views"] == 2 and rows["IMG_1234"]["views"] == 1
    assert "7 photos combined into 3 guesses" in err
    # the group's probabilities are the mean of its views'
    loc = Locator.from_checkpoint(ckpts["country"], device="cpu")
    views = loc.locate(sorted(d.glob("abc_*.jpg")))
    mean = np.mean([g.probs for g in views], axis=0)
    top = loc.countries[int(mean.argmax())]
    assert rows["abc"]["country"] == top and rows["abc"]["probability"] == pytest.approx(float(mean.max()), abs=1e-4)


def test_group_by_field_with_truth_and_map(ckpts, tmp_path, capsys):
    d = tmp_path / "set"
    rows = []
    for i in range(6):
        cc, lat, lon = SIX[i % 3]
        photo(d / "img" / f"p{i}.jpg", i % 3)
        rows.append({"path": f"img/p{i}.jpg", "lat": lat, "lon": lon, "country": cc, "place": f"site{i % 3}"})
    listing = d / "listing.csv"
    pd.DataFrame(rows).to_csv(listing, index=False)
    out_map = tmp_path / "map.png"
    code, out, err = run_cli(capsys, "locate", ckpts["coords"], "--truth", listing, "--group-by", "place",
                             "--format", "json", "--map", out_map)
    assert code == 0, err
    got = json.loads(out)
    assert [r["image"] for r in got] == ["site0", "site1", "site2"] and all(r["views"] == 2 for r in got)
    for r in got:
        cc, lat, lon = next(p for p in SIX if p[0] == r["true_country"])
        assert (r["true_lat"], r["true_lon"]) == pytest.approx((lat, lon), abs=1e-6)
        assert r["error_km"] >= 0
    with Image.open(out_map) as im:
        assert im.format == "PNG" and im.width > 600 and im.height > 300
    # the table shows truth and error
    code, out, _ = run_cli(capsys, "locate", ckpts["country"], "--truth", listing)
    assert code == 0 and "error km" in out and "median error" in out


def test_truth_in_another_spelling_with_columns(ckpts, tmp_path, capsys):
    # OSV-5M's own layout: an id without extension, latitude/longitude
    rows = []
    for i in range(3):
        cc, lat, lon = SIX[i]
        photo(tmp_path / "images" / f"{1000 + i}.jpg", i)
        rows.append({"id": str(1000 + i), "latitude": lat, "longitude": lon, "country": cc})
    listing = tmp_path / "test.csv"
    pd.DataFrame(rows).to_csv(listing, index=False)
    code, _, err = run_cli(capsys, "locate", ckpts["coords"], tmp_path / "images", "--truth", listing)
    assert code == 2 and "--columns" in err and len(err.strip().splitlines()) == 1
    code, out, err = run_cli(capsys, "locate", ckpts["coords"], tmp_path / "images", "--truth", listing,
                             "--columns", "path=id,lat=latitude,lon=longitude", "--format", "json")
    assert code == 0, err
    got = {Path(r["image"]).name: r for r in json.loads(out)}
    for row in rows:
        r = got[f"{row['id']}.jpg"]
        assert (r["true_lat"], r["true_lon"]) == pytest.approx((row["latitude"], row["longitude"]))
        assert r["true_country"] == row["country"] and r["error_km"] >= 0
    code, _, err = run_cli(capsys, "locate", ckpts["coords"], tmp_path / "images", "--columns", "lat=latitude")
    assert code == 2 and "--truth" in err


def test_map_of_worldwide_points_widens(ckpts, tmp_path, capsys):
    listing = tmp_path / "world.csv"
    photo(tmp_path / "a.jpg", 1)
    photo(tmp_path / "b.jpg", 2)
    pd.DataFrame([{"path": "a.jpg", "lat": -33.9, "lon": 151.2}, {"path": "b.jpg", "lat": 40.7, "lon": -74.0}]).to_csv(listing, index=False)
    europe, world = tmp_path / "europe.png", tmp_path / "world.png"
    assert main(["locate", str(ckpts["country"]), str(tmp_path / "a.jpg"), "--map", str(europe)]) == 0
    assert main(["locate", str(ckpts["country"]), "--truth", str(listing), "--map", str(world)]) == 0
    with Image.open(europe) as e, Image.open(world) as w:
        assert e.width > 600 and w.width > 600
        assert w.height / w.width < e.height / e.width  # the world is wider than Europe


def test_argument_errors(ckpts, photos, capsys):
    code, _, err = run_cli(capsys, "locate", ckpts["country"], photos["webp"], "--group-by", "city")
    assert code == 2 and "needs --truth" in err
    code, _, err = run_cli(capsys, "locate", ckpts["country"])
    assert code == 2 and "give image files" in err
    code, _, err = run_cli(capsys, "locate", ckpts["country"], photos["webp"], "--top-k", "0")
    assert code == 2


def test_output_file(ckpts, photos, tmp_path, capsys):
    out = tmp_path / "res" / "guesses.json"
    assert main(["locate", str(ckpts["country"]), str(photos["webp"]), "--format", "json", "-o", str(out)]) == 0
    assert json.loads(out.read_text())[0]["image"] == str(photos["webp"])
    assert capsys.readouterr().out == ""


# --- the library API ---------------------------------------------------------------------------------


def test_locator_api_with_pil_images(ckpts, photos):
    loc = Locator.from_checkpoint(ckpts["country"], device="cpu")
    assert loc.kind == "country" and loc.preprocessing.image_size == 64 and "country" in repr(loc)
    ims = [Image.open(photos["png_rgba"]), Image.open(photos["png_gray"]).convert("L")]
    guesses = loc.locate(ims + [photos["webp"]], top_k=2, batch_size=2)
    assert len(guesses) == 3 and all(isinstance(g, Guess) and g.ok for g in guesses)
    assert guesses[0].image.endswith("rgba.png") and guesses[2].image == str(photos["webp"])
    assert guesses[0].probs.sum() == pytest.approx(1.0, abs=1e-5)
    one = loc.locate_one(photos["webp"])
    assert one.country == guesses[2].country and one.to_dict()["country_name"] == get_country(one.country).name
    with pytest.raises(ImageReadError):
        loc.locate_one(photos["webp"].with_name("nothing.jpg"))
    with pytest.raises(CheckpointError, match="coords checkpoint is needed"):
        Locator.from_checkpoint(ckpts["country"], kind="coords")


def test_many_photos_with_workers_keep_order(ckpts, tmp_path):
    files = [photo(tmp_path / f"f{i:02d}.png", i % 6, size=(40, 30)) for i in range(20)]
    (tmp_path / "f05.png").write_bytes(b"broken")
    loc = Locator.from_checkpoint(ckpts["country"], device="cpu")
    a = loc.locate(files, batch_size=4, num_workers=2)
    b = loc.locate(files, batch_size=32, num_workers=0)
    assert [g.image for g in a] == [str(f) for f in files]
    assert not a[5].ok and "f05.png" in a[5].error
    for x, y in zip(a, b):
        assert x.country == y.country and (x.probability or 0) == pytest.approx(y.probability or 0, abs=1e-5)


def test_auto_group_key():
    assert auto_group_key("pano/abc_0.jpg") == auto_group_key("pano/abc_90.jpg") == "pano/abc"
    assert auto_group_key("abc-2.png") == "abc" and auto_group_key("abc_45.5.jpg") == "abc"
    assert auto_group_key("IMG_1234.jpg") == "IMG_1234"  # a camera counter, not a view
    assert auto_group_key("abc_400.jpg") == "abc_400"
    assert auto_group_key("a/x_0.jpg") != auto_group_key("b/x_0.jpg")
    assert auto_group_key("DE_52.52000,13.40000.png") == "DE_52.52000,13.40000"


def test_group_combines_coordinates_on_the_sphere():
    g1 = Guess("a_0", country="FJ", lat=0.0, lon=179.0, coordinate_country="FJ")
    g2 = Guess("a_1", country="FJ", lat=0.0, lon=-179.0, coordinate_country="FJ")
    bad = Guess("b_0", error="b_0: no such file")
    out = group([g1, g2, bad], ["a", "a", "b"])
    assert [g.image for g in out] == ["a", "b"]
    assert out[0].lat == pytest.approx(0.0, abs=1e-9) and abs(out[0].lon) == pytest.approx(180.0)  # not 0: the antimeridian
    assert out[0].views == 2 and not out[1].ok and "none of its 1 view" in out[1].error

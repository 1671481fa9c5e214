import math

import numpy as np
import pandas as pd
import pytest

from conftest import make_image
from geotrainr.cli import main
from geotrainr.data.schema import IndexValidationError
from geotrainr.data.splits import assign_splits, block_cells
from geotrainr.data.index import read_index, validate_index, write_index


def seed_folder(tmp_path, n=12):
    folder = tmp_path / "frames"
    places = [("DE", 52.52, 13.40), ("FR", 48.86, 2.35), ("IT", 41.90, 12.50)]
    for i in range(n):
        cc, lat, lon = places[i % 3]
        make_image(folder / f"{cc}_{lat + i * 0.01:.4f},{lon:.4f}.png", seed=i)
    return folder


def test_index_from_seed_folder(tmp_path, capsys):
    folder = seed_folder(tmp_path)
    out = tmp_path / "out" / "index.parquet"
    assert main(["index", str(folder), "--out", str(out), "--check-images"]) == 0
    df = read_index(out)
    assert len(df) == 12 and set(df["country"]) == {"DE", "FR", "IT"}
    assert set(df["split"]) <= {"train", "val"} and (df["split"] == "val").sum() == round(12 * 0.2)
    assert all((out.parent / p).is_file() for p in df["image_path"])  # relative to the index's folder
    text = capsys.readouterr().out
    assert "12 images, 3 countries" in text and "fewer than 10 rows" in text


def test_index_from_csv_fills_country_and_keeps_extra_columns(tmp_path):
    make_image(tmp_path / "a.jpg", 1)
    make_image(tmp_path / "sub" / "b.jpg", 2)
    make_image(tmp_path / "c.jpg", 3)
    csv = tmp_path / "photos.csv"
    csv.write_text("path,lat,lon,country,note\na.jpg,52.52,13.40,,berlin\nsub/b.jpg,48.2,16.37,,vienna\nc.jpg,40.0,-3.7,es,madrid\n")
    out = tmp_path / "idx" / "i.parquet"
    assert main(["index", "--csv", str(csv), "--out", str(out), "--split", "random", "--val", "0.34"]) == 0
    df = read_index(out).set_index("note")
    assert df.loc["berlin", "country"] == "DE" and df.loc["vienna", "country"] == "AT" and df.loc["madrid", "country"] == "ES"
    assert (out.parent / df.loc["vienna", "image_path"]).resolve() == (tmp_path / "sub" / "b.jpg").resolve()


@pytest.mark.parametrize(
    "content, message",
    [
        ("path,lat,lon,country\na.jpg,95,13.4,DE\n", "lat 95.0"),
        ("path,lat,lon,country\na.jpg,52,nan,DE\n", "lon"),
        ("path,lat,lon,country\na.jpg,52,13,QQ\n", "unknown country code 'QQ'"),
        ("path,lat,lon,country\na.jpg,52,13,DE\na.jpg,53,13,DE\n", "duplicate image_path"),
        ("path,lat,lon,country\n", "no rows"),
        ("path,lat\na.jpg,52\n", "missing column 'lon'"),
    ],
)
def test_bad_csv_rows_exit_2_one_line_nothing_written(tmp_path, capsys, content, message):
    make_image(tmp_path / "a.jpg", 1)
    csv = tmp_path / "in.csv"
    csv.write_text(content)
    out = tmp_path / "out.parquet"
    assert main(["index", str(csv), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not out.exists() and not list(tmp_path.glob(".out.parquet*"))


def test_unparseable_name_and_unreadable_image(tmp_path, capsys):
    folder = seed_folder(tmp_path, 3)
    (folder / "holiday.png").write_bytes(b"")
    out = tmp_path / "x.parquet"
    assert main(["index", str(folder), "--out", str(out)]) == 2
    assert "holiday.png" in capsys.readouterr().err
    (folder / "holiday.png").unlink()
    (folder / "DE_50.0,10.0.png").write_bytes(b"not an image at all")
    assert main(["index", str(folder), "--out", str(out), "--check-images"]) == 2
    err = capsys.readouterr().err
    assert "DE_50.0,10.0.png" in err and "unreadable image" in err
    assert not out.exists()


def test_empty_folder_is_an_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["index", str(tmp_path / "empty"), "--out", str(tmp_path / "o.parquet")]) == 2
    assert "no image files" in capsys.readouterr().err


def test_block_split_keeps_cells_whole():
    rng = np.random.default_rng(0)
    centres = rng.uniform([36, -9], [70, 40], size=(60, 2))
    pts = np.repeat(centres, 10, axis=0) + rng.normal(0, 0.01, (600, 2))  # near-duplicate clusters
    df = pd.DataFrame({"image_path": [f"{i}.jpg" for i in range(600)], "lat": pts[:, 0], "lon": pts[:, 1], "country": "DE"})
    out = assign_splits(df, "block", val=0.2, test=0.1, seed=3, block_km=25)
    cells = block_cells(out["lat"].to_numpy(), out["lon"].to_numpy(), 25)
    per_cell = pd.Series(out["split"].to_numpy()).groupby(cells).nunique()
    assert (per_cell == 1).all()
    frac = out["split"].value_counts(normalize=True)
    assert 0.1 < frac["val"] < 0.3 and 0.03 < frac["test"] < 0.2
    again = assign_splits(df, "block", val=0.2, test=0.1, seed=3, block_km=25)
    assert (again["split"] == out["split"]).all()


def test_random_split_fractions_and_seed():
    df = pd.DataFrame({"image_path": [f"{i}.jpg" for i in range(1000)], "lat": 50.0, "lon": 10.0, "country": "DE"})
    a = assign_splits(df, "random", val=0.2, test=0.1, seed=1)
    assert a["split"].value_counts().to_dict() == {"train": 700, "val": 200, "test": 100}
    assert (assign_splits(df, "random", val=0.2, test=0.1, seed=1)["split"] == a["split"]).all()
    assert (assign_splits(df, "random", val=0.2, test=0.1, seed=2)["split"] != a["split"]).any()


def test_writer_is_atomic_and_shards(tmp_path):
    df = pd.DataFrame({"image_path": [f"{i}.jpg" for i in range(25)], "lat": 50.0, "lon": 10.0, "country": "DE"})
    path = write_index(df, tmp_path / "shards.parquet", shard_rows=10)
    assert path.is_dir() and len(list(path.glob("*.parquet"))) == 3
    back = read_index(path)
    assert back["image_path"].tolist() == df["image_path"].tolist()
    write_index(df.iloc[:5], path, shard_rows=2)  # replaced whole
    assert len(read_index(path)) == 5
    assert [p.name for p in tmp_path.iterdir()] == ["shards.parquet"]  # no temp left behind


def test_embedded_bytes_rows_validate(tmp_path):
    img = make_image(tmp_path / "x.png", 4).read_bytes()
    df = pd.DataFrame({"image": [img], "lat": [45.0], "lon": [7.0], "country": ["it"]})
    out = validate_index(df, check_images=True)
    assert out["country"].tolist() == ["IT"]
    with pytest.raises(IndexValidationError, match="unreadable image"):
        validate_index(pd.DataFrame({"image": [b"junk"], "lat": [45.0], "lon": [7.0], "country": ["IT"]}), check_images=True)
    with pytest.raises(IndexValidationError, match="empty"):
        validate_index(df.iloc[:0])
    assert math.isclose(read_index(write_index(out, tmp_path / "b.parquet"))["lat"][0], 45.0)

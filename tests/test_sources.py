"""`geotrainr index --from FORMAT`: each public layout, built tiny in tmp_path, indexed with exact coordinates."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from conftest import error_lines, make_image
from geotrainr.cli import main
from geotrainr.data.index import read_index, validate_index

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "realphotos" / "osv5m"
OSV_COLUMNS = ("id,latitude,longitude,thumb_original_url,country,sequence,captured_at,lon_bin,lat_bin,cell,region,"
               "sub-region,city,land_cover,road_index,drive_side,climate,soil,dist_sea,quadtree_10_5000,"
               "quadtree_10_25000,quadtree_10_1000,quadtree_10_50000,quadtree_10_12500,quadtree_10_500,"
               "quadtree_10_2500,unique_region,unique_sub-region,unique_city,unique_country,creator_username,creator_id").split(",")

needs_real = pytest.mark.skipif(not (REAL / "index.csv").is_file(), reason="../shared/realphotos/osv5m is not beside the repository")


def real_photos() -> pd.DataFrame:
    return pd.read_csv(REAL / "index.csv", dtype={"mapillary_id": str}, keep_default_na=False)


def build_osv5m(folder: Path, zipped: bool = True, test_every: int = 4) -> pd.DataFrame:
    """The 71 real Mapillary frames in OSV-5M's published layout: train.csv/test.csv and images/{split}/NN.zip.

    Rows come in sequences of three; every ``test_every``-th sequence is test. Returns the truth (id, lat, lon, split).
    """
    src = real_photos()
    rows = []
    for k, r in src.iterrows():
        seq = k // 3
        split = "test" if seq % test_every == 0 else "train"
        row = dict.fromkeys(OSV_COLUMNS, "")
        row.update(id=r.mapillary_id, latitude=repr(float(r.lat)), longitude=repr(float(r.lon)), country=r.country,
                   sequence=f"seq{seq:03d}", captured_at="1600000000000", city=r.city, region=r.region,
                   creator_username=f"mapper{k % 7}", creator_id=str(100 + k % 7))
        if k == 5:
            row["country"] = ""  # OSV-5M leaves some countries empty: filled from the coordinates
        rows.append((split, row, REAL / r.path))
    for split in ("train", "test"):
        part = [row for s, row, _ in rows if s == split]
        (folder / "images" / split).mkdir(parents=True, exist_ok=True)
        pd.DataFrame(part, columns=OSV_COLUMNS).to_csv(folder / f"{split}.csv", index=False)
        files = [(row["id"], path) for s, row, path in rows if s == split]
        if zipped:
            for z in range(2):
                with zipfile.ZipFile(folder / "images" / split / f"{z:02d}.zip", "w") as zf:
                    for image_id, path in files[z::2]:
                        zf.write(path, f"{image_id}.jpg")
        else:
            for n, (image_id, path) in enumerate(files):
                sub = folder / "images" / split / f"{n % 2:02d}"
                sub.mkdir(parents=True, exist_ok=True)
                (sub / f"{image_id}.jpg").write_bytes(path.read_bytes())
    return pd.DataFrame([{"id": row["id"], "lat": float(row["latitude"]), "lon": float(row["longitude"]), "split": s,
                          "sequence": row["sequence"], "country": row["country"]} for s, row, _ in rows])


@needs_real
@pytest.mark.parametrize("zipped", [True, False])
def test_osv5m_layout_exact_rows_kept_test_split_grouped_val(tmp_path, capsys, zipped):
    truth = build_osv5m(tmp_path / "osv5m", zipped=zipped)
    out = tmp_path / "idx" / "index.parquet"
    assert main(["index", "--from", "osv5m", str(tmp_path / "osv5m"), "--out", str(out), "--val", "0.25"]) == 0
    df = read_index(out)
    assert len(df) == len(truth) == 71
    merged = df.merge(truth, on="id", suffixes=("", "_src"))
    assert len(merged) == 71
    assert (merged["lat"] == merged["lat_src"]).all() and (merged["lon"] == merged["lon_src"]).all()  # exact
    # OSV-5M's test split is kept; val is carved from train, whole sequences at a time
    assert ((merged["split_src"] == "test") == (merged["split"] == "test")).all()
    assert set(merged.loc[merged["split_src"] == "train", "split"]) == {"train", "val"}
    assert (df.groupby("sequence")["split"].nunique() == 1).all()
    assert set(df["licence"]) == {"CC-BY-SA 4.0"} and df["creator"].str.startswith("mapper").all()
    assert df.loc[merged.index[merged["country_src"] == ""][0], "country"] == real_photos()["country"][5]
    if zipped:
        assert "image_path" not in df.columns and df["archive"].str.endswith(".zip").all()
        with zipfile.ZipFile(out.parent / df["archive"][0]) as zf:
            assert df["member"][0] in zf.namelist()
    else:
        assert df["image_path"].map(lambda p: (out.parent / p).is_file()).all()
    text = capsys.readouterr().out
    assert "places with views in more than one split: 0" in text


@needs_real
def test_fit_reads_images_from_zip_archives_in_place(tmp_path, monkeypatch):
    from test_tasks import tiny_args

    build_osv5m(tmp_path / "osv5m", zipped=True, test_every=3)
    out = tmp_path / "index.parquet"
    assert main(["index", "--from", "osv5m", str(tmp_path / "osv5m"), "--out", str(out)]) == 0
    assert not list((tmp_path / "osv5m" / "images").rglob("*.jpg"))  # nothing was unpacked
    monkeypatch.chdir(tmp_path)
    assert main(["fit", *tiny_args(out), "--trainer.fast_dev_run=true", "--data.init_args.strict=true"]) == 0


@needs_real
def test_zip_members_decode_in_forked_workers(tmp_path):
    import torch

    from geotrainr.data import GeoDataModule
    from geotrainr.data.archives import read_member
    from geotrainr.preprocess import Preprocessing

    build_osv5m(tmp_path / "osv5m", zipped=True)
    out = tmp_path / "index.parquet"
    assert main(["index", "--from", "osv5m", str(tmp_path / "osv5m"), "--out", str(out), "--no-check"]) == 0
    df = read_index(out)
    read_member(out.parent / df["archive"][0], df["member"][0])  # the parent has the archives open before forking
    dm = GeoDataModule(str(out), batch_size=8, num_workers=2, augment=False, strict=True)
    dm.set_preprocessing(Preprocessing(image_size=32))
    dm.setup("fit")
    ds = dm.dataset("train")
    loader = torch.utils.data.DataLoader(ds, batch_size=8, num_workers=2, collate_fn=lambda b: b)
    got = {s["index"]: s["image"] for batch in loader for s in batch}
    assert len(got) == len(ds)
    for i in (0, len(ds) - 1):
        assert torch.equal(got[i], ds[i]["image"])


def gps_exif(lat: float, lon: float) -> bytes:
    import piexif

    def dms(x: float):
        x = abs(x)
        d = int(x)
        m = int((x - d) * 60)
        s = round(((x - d) * 60 - m) * 60 * 10000)
        return ((d, 1), (m, 1), (s, 10000))

    gps = {piexif.GPSIFD.GPSLatitudeRef: b"N" if lat >= 0 else b"S", piexif.GPSIFD.GPSLatitude: dms(lat),
           piexif.GPSIFD.GPSLongitudeRef: b"E" if lon >= 0 else b"W", piexif.GPSIFD.GPSLongitude: dms(lon)}
    return piexif.dump({"0th": {piexif.ImageIFD.Orientation: 1}, "Exif": {piexif.ExifIFD.DateTimeOriginal: b"2024:05:01 10:00:00"}, "GPS": gps})


def test_exif_folder_reads_gps_lists_photos_without(tmp_path, capsys):
    photos = tmp_path / "photos"
    (photos / "trip").mkdir(parents=True)
    places = [("a.jpg", 52.5163, 13.3777, "DE"), ("trip/b.jpeg", -33.8568, 151.2153, "AU"), ("trip/c.webp", 40.6892, -74.0445, "US")]
    for name, lat, lon, _ in places:
        Image.new("RGB", (40, 30), (120, 80, 40)).save(photos / name, exif=gps_exif(lat, lon))
    Image.new("RGB", (40, 30)).save(photos / "nogps.jpg")
    Image.new("RGB", (40, 30)).save(photos / "trip" / "nogps.png")
    out = tmp_path / "index.parquet"
    assert main(["index", "--from", "exif", str(photos), "--out", str(out)]) == 0
    df = read_index(out).set_index("image_path")
    assert len(df) == 3
    for name, lat, lon, cc in places:
        row = df.loc[f"photos/{name}"]
        assert row["lat"] == pytest.approx(lat, abs=1e-6) and row["lon"] == pytest.approx(lon, abs=1e-6) and row["country"] == cc
    assert df.loc["photos/a.jpg", "capture_date"] == "2024:05:01 10:00:00"
    err = capsys.readouterr().err
    assert "2 no GPS position in EXIF" in err and "nogps.jpg" in err
    listing = pd.read_csv(tmp_path / "index.skipped.csv")
    assert sorted(listing["item"]) == ["nogps.jpg", "trip/nogps.png"]


def test_heic_photo_with_gps(tmp_path):
    pillow_heif = pytest.importorskip("pillow_heif")
    pillow_heif.register_heif_opener()
    photos = tmp_path / "photos"
    photos.mkdir()
    try:
        Image.new("RGB", (64, 48), (10, 200, 30)).save(photos / "phone.heic", format="HEIF", exif=gps_exif(48.8584, 2.2945))
    except (KeyError, OSError, ValueError) as e:  # a pillow-heif build without an encoder
        pytest.skip(f"cannot write HEIF here: {e}")
    out = tmp_path / "index.parquet"
    assert main(["index", "--from", "exif", str(photos), "--out", str(out), "--val", "0"]) == 0
    df = read_index(out)
    assert df["country"].tolist() == ["FR"] and df["lat"][0] == pytest.approx(48.8584, abs=1e-6)


def test_exif_orientation_is_honoured_when_decoding(tmp_path):
    """A portrait photo stored landscape with Orientation 6 decodes upright in training."""
    import piexif

    from geotrainr.data.dataset import GeoDataset

    exif = piexif.load(gps_exif(45.0, 7.0))
    exif["0th"][piexif.ImageIFD.Orientation] = 6  # rotate 90 degrees clockwise to view
    stored = np.zeros((20, 40, 3), np.uint8)  # 40 wide, 20 high as stored
    stored[:, :20] = 255  # left half white
    Image.fromarray(stored).save(tmp_path / "p.jpg", exif=piexif.dump(exif), quality=95)
    df = pd.DataFrame({"image_path": ["p.jpg"], "lat": [45.0], "lon": [7.0], "country": ["IT"]})
    seen = []
    ds = GeoDataset(df, tmp_path, lambda im: seen.append(im.size) or np.asarray(im), ["IT"], strict=True)
    img = ds[0]["image"]
    assert seen == [(20, 40)]  # upright: 20 wide, 40 high
    assert img[:10].mean() > 200 and img[-10:].mean() < 50  # the stored left half is now the top


def benchmark_folder(tmp_path: Path, name: str, header: str, n: int = 6) -> tuple[Path, list]:
    folder = tmp_path / name
    rows, truth = [header], []
    for i in range(n):
        img_id = f"{1000 + i}_{i * 7}_o.jpg"
        lat, lon = 10.0 + i * 7.123456789, 20.0 - i * 13.98765
        if i < n - 1:  # the last id has no image
            make_image(folder / "images" / img_id, seed=i)
        fields = {"IMG_ID": img_id, "AUTHOR": f"{i}@N00", "LAT": repr(lat), "LON": repr(lon), "S3_Label": "1"}
        rows.append(",".join(fields.get(h, "0") for h in header.split(",")))
        truth.append((img_id, lat, lon))
    (folder / f"{name}_places365.csv").write_text("\n".join(rows) + "\n")
    return folder, truth


@pytest.mark.parametrize("name", ["im2gps3k", "yfcc4k"])
def test_benchmark_csvs_index_as_test_split(tmp_path, capsys, name):
    folder, truth = benchmark_folder(tmp_path, name, "IMG_ID,AUTHOR,LAT,LON,S3_Label,S16_Label,S365_Label")
    out = tmp_path / "bench.parquet"
    assert main(["index", "--from", name, str(folder), "--out", str(out)]) == 0
    df = read_index(out).set_index("id")
    assert len(df) == len(truth) - 1 and set(df["split"]) == {"test"} and set(df["source"]) == {name}
    for img_id, lat, lon in truth[:-1]:
        assert df.loc[img_id, "lat"] == lat and df.loc[img_id, "lon"] == lon
    assert "1 no image found" in capsys.readouterr().err


def test_benchmark_reader_is_callable_from_python(tmp_path):
    from geotrainr.data.sources import reader

    folder, truth = benchmark_folder(tmp_path, "im2gps3k", "IMG_ID,AUTHOR,LAT,LON")
    rows = reader("im2gps3k")(folder / "im2gps3k_places365.csv", tmp_path, images=folder / "images")
    assert len(rows.frame) == 5 and len(rows.skipped) == 1 and rows.skipped[0][0].endswith(truth[-1][0])
    validate_index(rows.frame)


def test_columns_map_any_csv(tmp_path, capsys):
    for i in range(3):
        make_image(tmp_path / "pics" / f"{i}.jpg", i)
    csv = tmp_path / "mine.csv"
    csv.write_text("file,Latitude,Longitude,cc\n0.jpg,52.52,13.4,de\n1.jpg,48.85,2.35,\n2.jpg,-22.9,-43.2,BR\n")
    out = tmp_path / "o.parquet"
    spec = "path=file,lat=Latitude,lon=Longitude,country=cc"
    assert main(["index", str(csv), "--columns", spec, "--images", str(tmp_path / "pics"), "--out", str(out)]) == 0
    df = read_index(out).sort_values("image_path")
    assert df["country"].tolist() == ["DE", "FR", "BR"] and df["lat"].tolist() == [52.52, 48.85, -22.9]
    assert main(["index", str(csv), "--columns", "lat=Breite", "--out", str(tmp_path / "o2.parquet")]) == 2
    assert "no column 'Breite'" in capsys.readouterr().err
    assert main(["index", str(csv), "--columns", "latitude", "--out", str(tmp_path / "o2.parquet")]) == 2
    assert "NAME=COLUMN" in capsys.readouterr().err


def hf_shard(path: Path, rows: list[tuple[bytes, str, float, float]]) -> None:
    image = pa.array([{"bytes": b, "path": p} for b, p, _, _ in rows], pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    table = pa.table({"image": image, "latitude": [r[2] for r in rows], "longitude": [r[3] for r in rows]})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


def test_hf_parquet_export_embeds_images_and_reads_split_from_names(tmp_path):
    def jpeg(seed):
        buf = io.BytesIO()
        Image.fromarray(np.full((24, 32, 3), seed * 40, np.uint8)).save(buf, format="JPEG")
        return buf.getvalue()

    hf_shard(tmp_path / "ds" / "data" / "train-00000-of-00001.parquet", [(jpeg(i), f"{i}.jpg", 41.9 + i, 12.5) for i in range(4)])
    hf_shard(tmp_path / "ds" / "data" / "validation-00000-of-00001.parquet", [(jpeg(5), "5.jpg", -1.29, 36.82)])
    out = tmp_path / "i.parquet"
    assert main(["index", "--from", "hf", str(tmp_path / "ds"), "--out", str(out)]) == 0
    df = read_index(out).sort_values("lat")
    assert df["split"].tolist() == ["val", "train", "train", "train", "train"]  # the shard names' split is kept
    assert df["country"].tolist()[0] == "KE" and df["lat"].tolist()[1:] == [41.9, 42.9, 43.9, 44.9]
    assert Image.open(io.BytesIO(df["image"].iloc[0])).size == (32, 24)


# --- the header check ----------------------------------------------------------


def test_header_check_drops_and_lists_empty_and_truncated_images(tmp_path, capsys):
    folder = tmp_path / "frames"
    for i in range(5):
        make_image(folder / f"DE_{50 + i}.0,10.0.jpg", seed=i, size=64, fmt="JPEG")
    (folder / "DE_60.0,10.0.jpg").write_bytes(b"")
    whole = (folder / "DE_50.0,10.0.jpg").read_bytes()
    (folder / "DE_61.0,10.0.jpg").write_bytes(whole[: len(whole) // 2])  # a cut download: the header is fine
    (folder / "DE_62.0,10.0.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    out = tmp_path / "index.parquet"
    assert main(["index", str(folder), "--out", str(out)]) == 0
    assert len(read_index(out)) == 5
    err = capsys.readouterr().err
    assert "skipped 3 item(s)" in err and "empty file" in err and "DE_61.0,10.0.jpg" in err and "Traceback" not in err
    listing = pd.read_csv(tmp_path / "index.skipped.csv")
    assert sorted(listing["item"].str.split("/").str[-1]) == ["DE_60.0,10.0.jpg", "DE_61.0,10.0.jpg", "DE_62.0,10.0.png"]
    assert main(["index", str(folder), "--out", str(out), "--no-check", "--force"]) == 0
    assert len(read_index(out)) == 8 and not (tmp_path / "index.skipped.csv").exists()


def test_header_check_reads_zip_members(tmp_path, capsys):
    good = make_image(tmp_path / "g.jpg", 1, size=64, fmt="JPEG").read_bytes()
    (tmp_path / "osv" / "images" / "train").mkdir(parents=True)
    with zipfile.ZipFile(tmp_path / "osv" / "images" / "train" / "00.zip", "w") as zf:
        for i in range(4):
            zf.writestr(f"{i}.jpg", good)
        zf.writestr("4.jpg", b"")
        zf.writestr("5.jpg", good[:200])
    lines = ["id,latitude,longitude,country,sequence"] + [f"{i},{45 + i},{7 + i},IT,s{i}" for i in range(6)]
    (tmp_path / "osv" / "train.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "index.parquet"
    assert main(["index", "--from", "osv5m", str(tmp_path / "osv"), "--out", str(out), "--val", "0.25"]) == 0
    assert sorted(read_index(out)["member"]) == ["0.jpg", "1.jpg", "2.jpg", "3.jpg"]
    err = capsys.readouterr().err
    assert "00.zip:4.jpg" in err and "00.zip:5.jpg" in err


# --- leak-free splits ------------------------------------------------------------


def four_views(n_places: int = 200, seed: int = 0) -> pd.DataFrame:
    """The seed's setup: four headings per location, same coordinates, no pano id."""
    rng = np.random.default_rng(seed)
    pts = rng.uniform([36, -9], [70, 40], size=(n_places, 2))
    rows = [{"image_path": f"{p}_{h}.jpg", "lat": pts[p, 0], "lon": pts[p, 1], "country": "DE", "heading": h}
            for p in range(n_places) for h in (0, 90, 180, 270)]
    return pd.DataFrame(rows)


def test_default_split_keeps_views_of_a_place_together():
    from geotrainr.data.splits import assign_splits, location_groups, straddling_groups

    df = four_views()
    random = assign_splits(df, "random", val=0.2, seed=0)
    assert straddling_groups(random) > 50  # the old default leaks most places
    grouped = assign_splits(df, val=0.2, test=0.1, seed=0)
    assert straddling_groups(grouped) == 0
    frac = grouped["split"].value_counts(normalize=True)
    assert 0.15 < frac["val"] < 0.25 and 0.06 < frac["test"] < 0.14
    # a few metres apart, a shared pano id, or a shared sequence: one place
    near = pd.DataFrame({"lat": [50.0, 50.00003, 50.1, 50.2, 51.0, 52.0], "lon": [10.0, 10.0, 10.1, 10.2, 11.0, 12.0],
                         "pano_id": [None, None, "p1", "p1", None, None], "sequence": [None, None, None, None, "s", "s"]})
    g = location_groups(near, radius_m=10)
    assert g[0] == g[1] and g[2] == g[3] and g[4] == g[5] and len(set(g)) == 3


def test_index_cli_default_split_is_grouped(tmp_path, capsys):
    df = four_views(40)
    for p in df["image_path"]:
        make_image(tmp_path / "src" / p, seed=len(p))
    df.to_csv(tmp_path / "src" / "views.csv", index=False)
    out = tmp_path / "index.parquet"
    assert main(["index", str(tmp_path / "src" / "views.csv"), "--out", str(out)]) == 0
    split = read_index(out)
    assert (split.groupby(["lat", "lon"])["split"].nunique() == 1).all()
    assert "places with views in more than one split: 0" in capsys.readouterr().out
    assert main(["index", str(tmp_path / "src" / "views.csv"), "--out", str(out), "--split-by", "random", "--force"]) == 0
    assert "use --split-by group or block" in capsys.readouterr().out


def test_test_stage_without_test_split_says_so(tiny_index, capsys):
    from geotrainr.data import GeoDataModule

    dm = GeoDataModule(str(tiny_index), num_workers=0)
    dm.setup("test")
    assert not dm.has_test_split
    dm.dataset("test")
    assert "has no test split: the test stage scores the val split" in capsys.readouterr().err
    dm.dataset("val")
    assert capsys.readouterr().err == ""


@needs_real
def test_real_photos_as_a_benchmark_fixture(tmp_path):
    """The 71 real frames as an Im2GPS3k-style CSV (IMG_ID,AUTHOR,LAT,LON) beside their image folder."""
    src = real_photos()
    csv = tmp_path / "im2gps3k_places365.csv"
    pd.DataFrame({"IMG_ID": src["path"].str.split("/").str[-1], "AUTHOR": "mapillary", "LAT": src["lat"], "LON": src["lon"]}).to_csv(csv, index=False)
    out = tmp_path / "bench.parquet"
    assert main(["index", "--from", "im2gps3k", str(csv), "--images", str(REAL / "images"), "--out", str(out)]) == 0
    df = read_index(out).set_index("id")
    assert len(df) == 71 and set(df["split"]) == {"test"}
    truth = src.assign(id=src["path"].str.split("/").str[-1]).set_index("id")
    assert (df["lat"] == truth.loc[df.index, "lat"]).all() and (df["lon"] == truth.loc[df.index, "lon"]).all()
    assert (df["country"] == truth.loc[df.index, "country"]).mean() > 0.9  # from the coordinates: right but near borders


@pytest.mark.parametrize("argv", [["--from", "osv5m"], ["--from", "osv5m", "--csv", "x.csv"], [], ["dir", "--csv", "x.csv"]])
def test_exactly_one_source(tmp_path, capsys, argv):
    assert main(["index", *argv, "--out", str(tmp_path / "o.parquet")]) == 2
    err = capsys.readouterr().err
    assert "exactly one source" in err and len(error_lines(err)) == 1

import json

import pytest

from geotrainr.cli import main
from geotrainr.data.demo import build_demo, ensure_demo
from geotrainr.data.index import read_index, validate_index


def test_demo_data_is_real_valid_and_block_split(demo_index):
    df = validate_index(read_index(demo_index), root=demo_index.parent, check_images=False)
    assert df["country"].nunique() >= 40 and len(df) > 2000
    assert df.groupby("country").size().max() <= 80
    assert set(df["split"]) == {"train", "val"}
    assert df["lat"].between(34, 72).all() and df["lon"].between(-25, 45).all()
    assert all((demo_index.parent / p).is_file() for p in df["image_path"].head(20))
    manifest = json.loads((demo_index.parent / "manifest.json").read_text())
    assert "not street imagery" in manifest["note"]


def test_demo_is_cached_and_deterministic(demo_index, tmp_path):
    mtime = demo_index.stat().st_mtime_ns
    assert ensure_demo(demo_index.parent) == demo_index and demo_index.stat().st_mtime_ns == mtime
    small = build_demo(tmp_path / "d1", per_country=5, seed=1)
    again = build_demo(tmp_path / "d2", per_country=5, seed=1)
    a, b = read_index(small), read_index(again)
    assert a[["image_path", "split"]].equals(b[["image_path", "split"]])
    assert (small.parent / a["image_path"][0]).read_bytes() == (again.parent / b["image_path"][0]).read_bytes()


def test_demo_data_command_prints_index_path(demo_index, capsys):
    assert main(["demo-data", "--out", str(demo_index.parent)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1] == str(demo_index) and any("aerial stand-in" in line for line in out)


def test_relief_set_is_another_source_with_its_own_places_and_blocks(tmp_path, monkeypatch, capsys):
    """The second evaluation set: another imagery file, another seed's places, a 200 km block split."""
    from geotrainr.data.demo import SOURCES, DemoDataError
    from geotrainr.data.demo import resolve_index

    monkeypatch.setenv("GEOTRAINR_DEMO_DIR", str(tmp_path / "demo"))
    assert main(["demo-data", "--source", "relief", "--per-country", "6", "--quiet"]) == 0
    path = capsys.readouterr().out.strip().splitlines()[-1]
    assert path == str(tmp_path / "demo-relief" / "index.parquet")
    relief = validate_index(read_index(path), root=tmp_path / "demo-relief", check_images=True)
    blue = read_index(build_demo(tmp_path / "blue", per_country=6))
    manifest = json.loads((tmp_path / "demo-relief" / "manifest.json").read_text())
    assert manifest["source"] == "relief" and manifest["block_km"] == 200.0 and manifest["patch_px"] == 64
    assert set(relief["source"]) == {"relief"} and set(blue["source"]) == {"bluemarble"}
    assert set(relief["place_id"]) != set(blue["place_id"])  # another sample of places
    from PIL import Image

    with Image.open(tmp_path / "demo-relief" / relief["image_path"][0]) as im:
        assert im.size == (SOURCES["relief"].patch_px,) * 2
    # the index name builds (or reuses) it; an unknown source is one line
    assert resolve_index("demo-relief") == tmp_path / "demo-relief" / "index.parquet"
    assert main(["demo-data", "--source", "etopo"]) == 2
    with pytest.raises(DemoDataError, match="unknown imagery source"):
        ensure_demo(source="etopo")

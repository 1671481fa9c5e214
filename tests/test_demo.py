import json

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

"""Every data door holds: images only from inside the dataset, bounded reading, half-written sources refused,
outputs never read back, and every user mistake one line (exit 2) with nothing written."""

from __future__ import annotations

import io
import json
import os
import random
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import build_tiny_index, make_image
from PIL import Image

from geotrainr.cli import main
from geotrainr.data.schema import IMAGE_ROOT_KEY
from geotrainr.data.packed.manifest import PACK_MANIFEST, PACK_PARTIAL
from geotrainr.data.index import read_index, write_index
from geotrainr.data.trust import MAX_IMAGE_BYTES, outside_reason


def _jpeg(seed: int = 0, size: int = 16) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((size, size, 3), seed * 40 % 255, np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def _one_error(capsys, rc: int) -> str:
    captured = capsys.readouterr()
    assert rc == 2, captured
    lines = [line for line in captured.err.splitlines() if "error:" in line]
    assert len(lines) == 1 and "Traceback" not in captured.err + captured.out, captured.err
    return lines[0]


@pytest.fixture
def outside(tmp_path) -> Path:
    """A secret image outside every dataset of the test."""
    return make_image(tmp_path / "outside" / "secret.jpg", 7)


def _skipped(listing: Path) -> pd.DataFrame:
    return pd.read_csv(listing)


# --- containment: every reader ------------------------------------------------------------------


def test_outside_reason_refuses_absolute_dotdot_and_symlinks_out(tmp_path, outside):
    root = tmp_path / "ds"
    make_image(root / "a.jpg", 1)
    (root / "link.jpg").symlink_to(outside)
    assert outside_reason(root, "a.jpg") is None and outside_reason(root, "sub/../a.jpg") is None
    assert "absolute" in outside_reason(root, str(outside))
    assert ".." in outside_reason(root, "../outside/secret.jpg")
    assert "symlink" in outside_reason(root, "link.jpg")


def test_folder_reader_skips_and_lists_a_symlink_out(tmp_path, outside, capsys):
    folder = tmp_path / "frames"
    make_image(folder / "DE_52.5,13.4.jpg", 1)
    (folder / "FR_48.8,2.3.jpg").symlink_to(outside)
    out = tmp_path / "idx" / "index.parquet"
    assert main(["index", str(folder), "--out", str(out), "--no-check"]) == 0
    assert len(read_index(out)) == 1
    listing = _skipped(tmp_path / "idx" / "index.skipped.csv")
    assert listing["item"].tolist() == ["FR_48.8,2.3.jpg"] and "outside" in listing["reason"][0]
    assert "symlink leading outside" in capsys.readouterr().err


def test_csv_reader_skips_dotdot_absolute_and_symlinks_out_and_records_the_root(tmp_path, outside, capsys):
    photos = tmp_path / "photos"
    make_image(photos / "a.jpg", 1)
    make_image(photos / "b.jpg", 2)
    (photos / "c.jpg").symlink_to(outside)
    csv = photos / "photos.csv"
    csv.write_text("path,lat,lon\na.jpg,52.5,13.4\nb.jpg,48.8,2.3\n../outside/secret.jpg,41.9,12.5\n"
                   f"{outside},40.4,-3.7\nc.jpg,45.4,9.1\n")
    out = photos / "data" / "index.parquet"  # README: index --csv photos.csv --out data/index.parquet
    assert main(["index", "--csv", str(csv), "--out", str(out)]) == 0
    df = read_index(out)
    assert sorted(df["image_path"]) == ["../a.jpg", "../b.jpg"]
    assert pq.read_schema(out).metadata[IMAGE_ROOT_KEY] == b".."
    reasons = _skipped(photos / "data" / "index.skipped.csv")["reason"].tolist()
    assert len(reasons) == 3 and any("absolute" in r for r in reasons) and any("(..)" in r for r in reasons)
    assert any("symlink" in r for r in reasons)
    capsys.readouterr()
    assert main(["pack", str(out), "--out", str(tmp_path / "packed"), "--workers", "1"]) == 0  # the README flow packs
    assert len(read_index(tmp_path / "packed")) == 2


def test_exif_reader_skips_symlinks_out_and_fifos(tmp_path, outside):
    folder = tmp_path / "exif"
    folder.mkdir()
    (folder / "out.jpg").symlink_to(outside)
    os.mkfifo(folder / "pipe.jpg")
    out = tmp_path / "i.parquet"
    assert main(["index", "--from", "exif", str(folder), "--out", str(out)]) == 2  # none has GPS: nothing written
    assert not out.exists() and not (tmp_path / "i.skipped.csv").exists()


def _osv(tmp_path: Path, ids: list[str]) -> Path:
    src = tmp_path / "osv"
    (src / "images" / "train").mkdir(parents=True)
    with zipfile.ZipFile(src / "images" / "train" / "00.zip", "w") as z:
        z.writestr("1.jpg", _jpeg(1))
    rows = "".join(f"{i},{50 + k * 0.1},{10 + k * 0.1},DE,seq{k},alice,c{k}\n" for k, i in enumerate(ids))
    (src / "train.csv").write_text("id,latitude,longitude,country,sequence,creator_username,creator_id\n" + rows)
    return src


def test_osv5m_ids_leaving_images_are_skipped(tmp_path, outside):
    src = _osv(tmp_path, ["1", "../../outside/secret", str(outside.with_suffix(""))])
    out = tmp_path / "idx" / "i.parquet"
    assert main(["index", "--from", "osv5m", str(src), "--out", str(out)]) == 0
    assert read_index(out)["member"].tolist() == ["1.jpg"]
    reasons = _skipped(tmp_path / "idx" / "i.skipped.csv")["reason"].tolist()
    assert len(reasons) == 2 and all("outside" in r or "leaves" in r for r in reasons)


def test_benchmark_ids_leaving_the_image_folder_are_skipped(tmp_path, outside):
    (tmp_path / "bench" / "images").mkdir(parents=True)
    make_image(tmp_path / "bench" / "images" / "x1.jpg", 1)
    (tmp_path / "bench" / "im2gps3k_places365.csv").write_text(
        "IMG_ID,LAT,LON\nx1.jpg,52.5,13.4\n../../outside/secret.jpg,48.8,2.3\n")
    out = tmp_path / "idx" / "i.parquet"
    assert main(["index", "--from", "im2gps3k", str(tmp_path / "bench"), "--out", str(out)]) == 0
    assert len(read_index(out)) == 1
    assert "leaves the dataset" in _skipped(tmp_path / "idx" / "i.skipped.csv")["reason"][0]


def _hf_shard(folder: Path, paths: list[str | None], data: list[bytes | None]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    image = pa.StructArray.from_arrays([pa.array(data, pa.binary()), pa.array(paths, pa.string())], names=["bytes", "path"])
    n = len(paths)
    table = pa.table({"image": image, "lat": [50.0 + i for i in range(n)], "lon": [10.0] * n, "country": ["DE"] * n})
    pq.write_table(table, folder / "train-00000-of-00001.parquet")
    return folder


def test_hf_paths_outside_are_skipped_and_export_embeds_none_of_their_bytes(tmp_path, outside):
    src = tmp_path / "hf"
    make_image(src / "img" / "a.jpg", 1)
    _hf_shard(src, ["img/a.jpg", "../outside/secret.jpg", "/etc/hostname", None], [None, None, None, _jpeg(2)])
    out = tmp_path / "idx" / "i.parquet"
    assert main(["index", "--from", "hf", str(src), "--out", str(out)]) == 0
    assert len(read_index(out)) == 2
    assert len(_skipped(tmp_path / "idx" / "i.skipped.csv")) == 2
    assert main(["export-dataset", str(out), "--out", str(tmp_path / "export")]) == 0
    secret = outside.read_bytes()
    blobs = b"".join(p.read_bytes() for p in (tmp_path / "export").rglob("*.parquet"))
    assert secret not in blobs and b"hostname" not in blobs


# --- consumers: pack and export-dataset read only inside the recorded root -----------------------


def test_pack_and_export_refuse_an_index_whose_rows_leave_its_root(tmp_path, outside, capsys):
    make_image(tmp_path / "data" / "a.jpg", 1)
    df = pd.DataFrame({"image_path": ["a.jpg", "../outside/secret.jpg"], "lat": [50.0, 51.0], "lon": [10.0, 10.0],
                       "country": ["DE", "DE"], "split": ["train", "val"]})
    index = write_index(df, tmp_path / "data" / "index.parquet")  # root: its own folder
    line = _one_error(capsys, main(["pack", "--index", str(index), "--out", str(tmp_path / "p")]))
    assert "row 1 (../outside/secret.jpg)" in line and not (tmp_path / "p").exists()
    line = _one_error(capsys, main(["export-dataset", "--index", str(index), "--out", str(tmp_path / "e")]))
    assert "../outside/secret.jpg" in line and not (tmp_path / "e").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_an_index_without_the_metadata_has_its_own_folder_as_root(tmp_path, capsys):
    make_image(tmp_path / "imgs" / "a.jpg", 1)
    df = pd.DataFrame({"image_path": ["../imgs/a.jpg"], "lat": [50.0], "lon": [10.0], "country": ["DE"], "split": ["train"]})
    tmp = write_index(df, tmp_path / "idx" / "index.parquet")
    table = pq.read_table(tmp)
    pq.write_table(table.replace_schema_metadata({}), tmp)  # an index written before the root was recorded
    assert "not inside the index" in _one_error(capsys, main(["export-dataset", "--index", str(tmp), "--out", str(tmp_path / "e")]))
    write_index(df, tmp, image_root=tmp_path)  # recorded: the same rows pass
    assert main(["export-dataset", str(tmp), "--out", str(tmp_path / "e")]) == 0


# --- bounded reading ----------------------------------------------------------------------------


def _bomb_zip(path: Path) -> None:
    """A real image, and a member that is a small JPEG followed by MAX_IMAGE_BYTES + 1 MiB of zeros (~70 KB zipped)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        z.writestr("1.jpg", _jpeg(1))
        with z.open("2.jpg", "w", force_zip64=True) as f:
            f.write(_jpeg(2))
            zeros = bytes(2**22)
            for _ in range(MAX_IMAGE_BYTES // len(zeros) + 1):
                f.write(zeros)


def test_zip_bomb_member_is_skipped_by_index_and_never_read_by_pack(tmp_path, capsys):
    src = tmp_path / "osv"
    _bomb_zip(src / "images" / "train" / "00.zip")
    (src / "train.csv").write_text("id,latitude,longitude,country\n1,52.5,13.4,DE\n2,48.8,2.3,FR\n")
    out = tmp_path / "i.parquet"
    assert main(["index", "--from", "osv5m", str(src), "--out", str(out)]) == 0
    assert read_index(out)["member"].tolist() == ["1.jpg"]
    assert "more than an image may hold" in _skipped(tmp_path / "i.skipped.csv")["reason"][0]
    unchecked = tmp_path / "u.parquet"
    assert main(["index", "--from", "osv5m", str(src), "--out", str(unchecked), "--no-check"]) == 0
    capsys.readouterr()
    assert main(["pack", str(unchecked), "--out", str(tmp_path / "p"), "--workers", "1"]) == 0
    assert "1 image(s) could not be read or are not images" in capsys.readouterr().out
    packed = read_index(tmp_path / "p")
    assert sorted(len(b) for b in packed["image"]) == [0, len(_jpeg(1))]


def test_fifo_and_dev_zero_as_images_are_skipped_without_hanging(tmp_path):
    folder = tmp_path / "photos"
    make_image(folder / "a.jpg", 1)
    os.mkfifo(folder / "pipe.jpg")
    (folder / "zero.jpg").symlink_to("/dev/zero")
    (folder / "p.csv").write_text("path,lat,lon\na.jpg,52.5,13.4\npipe.jpg,48.8,2.3\nzero.jpg,41.9,12.5\n")
    out = tmp_path / "i.parquet"
    assert main(["index", "--csv", str(folder / "p.csv"), "--out", str(out)]) == 0
    reasons = " ".join(_skipped(tmp_path / "i.skipped.csv")["reason"])
    assert "not a regular file" in reasons and "symlink leading outside" in reasons
    assert len(read_index(out)) == 1


def test_pack_stores_non_images_empty_and_warns(tmp_path, capsys):
    index = build_tiny_index(tmp_path / "src", n=12)
    df = read_index(index)
    (index.parent / df["image_path"][0]).write_bytes(b"not an image at all, just text" * 10)
    assert main(["pack", str(index), "--out", str(tmp_path / "p"), "--workers", "1"]) == 0
    assert "1 image(s) could not be read or are not images" in capsys.readouterr().out
    packed = read_index(tmp_path / "p")
    assert (packed["image"].map(len) == 0).sum() == 1 and b"just text" not in b"".join(packed["image"])


# --- half-written sources, outputs read back ----------------------------------------------------


@pytest.fixture
def packed(tmp_path) -> Path:
    index = build_tiny_index(tmp_path / "src", n=24)
    assert main(["pack", str(index), "--out", str(tmp_path / "packed"), "--rows-per-group", "4",
                 "--groups-per-shard", "2", "--workers", "1"]) == 0
    return tmp_path / "packed"


def test_index_from_an_unfinished_pack_is_refused(packed, tmp_path, capsys):
    capsys.readouterr()
    os.replace(packed / PACK_MANIFEST, packed / PACK_PARTIAL)
    line = _one_error(capsys, main(["index", "--from", "hf", str(packed), "--out", str(tmp_path / "i.parquet")]))
    assert "unfinished pack" in line and not (tmp_path / "i.parquet").exists()


def test_a_pack_whose_shards_disagree_with_its_manifest_is_refused_everywhere(packed, tmp_path, monkeypatch, capsys):
    from test_tasks import tiny_args

    capsys.readouterr()
    shard = sorted(packed.glob("part-*.parquet"))[1]
    shard.write_bytes(shard.read_bytes()[:-200])  # one cut shard
    line = _one_error(capsys, main(["index", "--from", "hf", str(packed), "--out", str(tmp_path / "i.parquet")]))
    assert shard.name in line and not (tmp_path / "i.parquet").exists()
    monkeypatch.chdir(tmp_path)
    assert shard.name in _one_error(capsys, main(["fit", *tiny_args(packed), "--trainer.max_epochs=1"]))
    assert not (tmp_path / "runs").exists()  # refused before a run folder is made
    assert shard.name in _one_error(capsys, main(["export-dataset", "--index", str(packed), "--out", str(tmp_path / "e")]))
    shard.unlink()  # and one missing
    assert "missing" in _one_error(capsys, main(["export-dataset", "--index", str(packed), "--out", str(tmp_path / "e")]))


def test_index_written_into_the_source_folder_is_never_read_back(tmp_path):
    src = tmp_path / "hf"
    _hf_shard(src, [None] * 5, [_jpeg(i) for i in range(5)])
    for shard_rows in (None, "2"):
        for _ in range(2):
            extra = ["--shard-rows", shard_rows] if shard_rows else []
            assert main(["index", "--from", "hf", str(src), "--out", str(src / "x.parquet"), "--force", *extra]) == 0
            assert len(read_index(src / "x.parquet")) == 5
    assert main(["index", "--from", "hf", str(src), "--out", str(src / "y.parquet")]) == 0  # an old index is no source
    assert len(read_index(src / "y.parquet")) == 5


# --- user mistakes: one line, exit 2, before the work, nothing written ---------------------------


def test_osv5m_columns_naming_a_role_it_fills(tmp_path, capsys):
    src = _osv(tmp_path, ["1"])
    out = tmp_path / "i.parquet"
    assert main(["index", "--from", "osv5m", str(src), "--out", str(out), "--columns", "creator=creator_id"]) == 0
    assert read_index(out)["creator"].tolist() == ["c0"]
    line = _one_error(capsys, main(["index", "--from", "osv5m", str(src), "--out", str(tmp_path / "j.parquet"),
                                    "--columns", "lat=longitude,lon=longitude"]))
    assert "--columns" in line and not (tmp_path / "j.parquet").exists()


@pytest.mark.parametrize("case", ["pack-out-file", "index-out-folder", "radius-0", "all-unreadable"])
def test_user_mistakes_are_one_line_before_the_work(tmp_path, capsys, case):
    index = build_tiny_index(tmp_path / "src", n=12)
    if case == "pack-out-file":
        (tmp_path / "f").write_text("mine")
        line = _one_error(capsys, main(["pack", "--index", str(index), "--out", str(tmp_path / "f")]))
        assert "is a file" in line and (tmp_path / "f").read_text() == "mine"
    elif case == "index-out-folder":
        (tmp_path / "d").mkdir()
        line = _one_error(capsys, main(["index", "--csv", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "d")]))
        assert "is a folder" in line and not any((tmp_path / "d").iterdir())  # refused before reading the source
    elif case == "radius-0":
        line = _one_error(capsys, main(["index", str(tmp_path / "src" / "images"), "--out", str(tmp_path / "o" / "i.parquet"),
                                        "--radius-m", "0"]))
        assert "--radius-m" in line and not (tmp_path / "o").exists()
    else:
        folder = tmp_path / "broken"
        for k in range(3):
            (folder / f"DE_5{k}.0,10.0.jpg").parent.mkdir(exist_ok=True)
            (folder / f"DE_5{k}.0,10.0.jpg").write_bytes(b"")
        _one_error(capsys, main(["index", str(folder), "--out", str(tmp_path / "o" / "i.parquet")]))
        assert not (tmp_path / "o").exists()


def test_straddle_report_uses_the_default_notion_of_a_place(tmp_path, capsys):
    folder = tmp_path / "frames"
    for k in range(20):  # two views 3 m apart at each of 20 places
        for v in range(2):
            make_image(folder / f"DE_{50 + k * 0.01:.5f},{10 + v * 0.00004:.5f}.jpg", k)
    assert main(["index", str(folder), "--out", str(tmp_path / "i.parquet"), "--split", "random", "--val", "0.5"]) == 0
    line = [x for x in capsys.readouterr().out.splitlines() if x.startswith("places with views")][0]
    assert int(line.split(":")[1].split()[0]) > 0 and "10 m" in line


# --- a seeded property test over hostile inputs -----------------------------------------------


def _hostile_source(rng: random.Random, base: Path, outside: Path) -> list[str]:
    """A CSV or HF source of hostile rows; returns the `index` arguments that read it."""
    src = base / "src"
    make_image(src / "ok.jpg", 1)
    kinds = ["ok.jpg", "../outside/secret.jpg", str(outside), "link.jpg", "pipe.jpg", "zero.jpg", "text.jpg",
             "sub/../ok.jpg", "missing.jpg", ""]
    (src / "link.jpg").symlink_to(outside)
    os.mkfifo(src / "pipe.jpg")
    (src / "zero.jpg").symlink_to("/dev/zero")
    (src / "text.jpg").write_text("hello")
    paths = [rng.choice(kinds) for _ in range(rng.randint(1, 6))]
    if rng.random() < 0.5:
        lines = ["path,lat,lon"] + [f"{p},{rng.choice(['52.5', '95', 'x', '48.1'])},{rng.choice(['13.4', '2.3'])}" for p in paths]
        if rng.random() < 0.2:
            lines.append('"unclosed,1,2')
        (src / "p.csv").write_text("\n".join(lines) + "\n")
        return ["--csv", str(src / "p.csv")]
    _hf_shard(src / "hf", [f"../{p}" if p and not p.startswith("/") else p for p in paths], [None] * len(paths))
    if rng.random() < 0.3:
        shard = src / "hf" / "train-00000-of-00001.parquet"
        shard.write_bytes(shard.read_bytes()[: rng.randint(0, 200)])
    return ["--from", "hf", str(src / "hf")]


def test_hostile_inputs_never_end_in_a_traceback(tmp_path, outside, capsys):
    rng = random.Random(21)
    for trial in range(10):
        base = tmp_path / f"t{trial}"
        args = _hostile_source(rng, base, outside)
        out = base / "out" / "i.parquet"
        for argv in (["index", *args, "--out", str(out)],
                     ["pack", str(out), "--out", str(base / "packed"), "--workers", "1"],
                     ["export-dataset", str(out), "--out", str(base / "export")]):
            if argv[0] != "index" and not out.exists():
                continue
            rc = main(argv)
            captured = capsys.readouterr()
            assert rc in (0, 2) and "Traceback" not in captured.err + captured.out, (argv, captured.err)
            target = Path(argv[argv.index("--out") + 1])
            if rc == 2:
                assert not target.exists(), argv
                assert not (target.parent.exists() and any(p.name.startswith(".") for p in target.parent.iterdir()))
        if out.exists():
            secret = outside.read_bytes()
            for artifact in (base / "packed", base / "export"):
                if artifact.exists():
                    assert secret not in b"".join(p.read_bytes() for p in artifact.rglob("*.parquet"))
            assert json.dumps(read_index(out).drop(columns=["image"], errors="ignore").to_dict()).count("secret") == 0

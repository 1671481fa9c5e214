"""`geotrainr export-dataset`: an index -> a Hugging Face datasets folder that `datasets` loads offline."""

from __future__ import annotations

import io

import pandas as pd
import pyarrow.parquet as pq
import pytest
from huggingface_hub import DatasetCard
from PIL import Image

from conftest import make_image
from geotrainr.cli import main
from geotrainr.data.index import read_index, write_index


def mixed_index(tmp_path):
    """Rows by file and by embedded bytes, three splits, CC-BY-SA rows with creators."""
    rows = []
    for i in range(9):
        p = make_image(tmp_path / "imgs" / f"{i}.jpg", seed=i, size=40, fmt="JPEG")
        row = {"lat": 40.0 + i * 1.5, "lon": -3.0 + i, "country": "ES", "split": ["train", "val", "test"][i % 3],
               "creator": f"user{i % 2}", "licence": "CC-BY-SA 4.0", "heading": float(i * 90 % 360)}
        if i % 2:
            row["image"] = p.read_bytes()
        else:
            row["image_path"] = f"imgs/{i}.jpg"
        rows.append(row)
    return write_index(pd.DataFrame(rows), tmp_path / "index.parquet")


def test_export_layout_card_and_shards(tmp_path, capsys):
    index = mixed_index(tmp_path)
    out = tmp_path / "hf"
    assert main(["export-dataset", str(index), "--out", str(out), "--shard-mb", "0.0001"]) == 0
    files = sorted(p.name for p in (out / "data").iterdir())
    assert files[0] == "test-00000-of-00003.parquet" and "validation-00002-of-00003.parquet" in files and len(files) == 9
    card = DatasetCard.load(out / "README.md")  # the Hub's own parser reads the card back
    assert card.data.license == "cc-by-sa-4.0" and card.data.pretty_name == "hf"
    assert {"split": "validation", "path": "data/validation-*"} in card.data.configs[0]["data_files"]
    splits = {s["name"]: s["num_examples"] for s in card.data.dataset_info["splits"]}
    assert splits == {"train": 3, "validation": 3, "test": 3}
    assert {"name": "image", "dtype": "image"} in card.data.dataset_info["features"]
    assert "| validation | 3 | 1 |" in card.text and "- user0 (5)" in card.text and "9 images under CC-BY-SA 4.0" in card.text
    shard = pq.read_table(out / "data" / "train-00000-of-00003.parquet")
    assert b"huggingface" in shard.schema.metadata
    row = shard.to_pylist()[0]
    assert Image.open(io.BytesIO(row["image"]["bytes"])).size == (40, 40) and row["image"]["path"] == "0.jpg"
    assert row["lat"] == 40.0 and row["country"] == "ES" and row["split"] == "train"
    # round trip through the hf reader: same coordinates and splits
    back = tmp_path / "back.parquet"
    assert main(["index", "--from", "hf", str(out), "--out", str(back)]) == 0
    a = read_index(index).sort_values("lat")
    b = read_index(back).sort_values("lat")
    assert a["lat"].tolist() == b["lat"].tolist() and a["split"].tolist() == b["split"].tolist()


def test_export_refuses_a_folder_that_is_not_an_export(tmp_path, capsys):
    index = mixed_index(tmp_path)
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "notes.txt").write_text("keep me")
    assert main(["export-dataset", "--index", str(index), "--out", str(tmp_path / "precious"), "--force"]) == 2
    assert "is not a dataset export" in capsys.readouterr().err
    assert (tmp_path / "precious" / "notes.txt").read_text() == "keep me"
    assert main(["export-dataset", str(index), "--out", str(tmp_path / "hf")]) == 0
    assert main(["export-dataset", "--index", str(index), "--out", str(tmp_path / "hf")]) == 2  # refused without --force
    assert main(["export-dataset", "--index", str(index), "--out", str(tmp_path / "hf"), "--force"]) == 0  # replaced
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_datasets_loads_the_export_offline(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    index = mixed_index(tmp_path)
    out = tmp_path / "hf"
    assert main(["export-dataset", str(index), "--out", str(out)]) == 0
    for ds in (datasets.load_dataset("parquet", data_dir=str(out), cache_dir=str(tmp_path / "c1")),
               datasets.load_dataset(str(out), cache_dir=str(tmp_path / "c2"))):
        assert set(ds) == {"train", "validation", "test"} and ds["train"].num_rows == 3
        sample = ds["validation"][0]
        assert isinstance(sample["image"], Image.Image) and sample["image"].size == (40, 40)
        assert sample["country"] == "ES" and sample["creator"] in ("user0", "user1")

"""Packed sets: geotrainr pack (resumable, re-encoding, zip members, URLs) and the streamed train loader
(disjoint per rank and worker, every row once per epoch, reshuffled per epoch, resumed mid-epoch)."""

from __future__ import annotations

import io
import json
import warnings
import zipfile
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from geotrainr.cli import main
from geotrainr.data import GeoDataModule
from geotrainr.data.packed import manifest as pack_manifest, pack as packing
from geotrainr.data.schema import IndexValidationError
from geotrainr.data.index import read_index, write_index
from geotrainr.data.packed.location import PackError
from geotrainr.data.packed.pack import pack
from geotrainr.data.packed.reader import PackedSet
from geotrainr.data.packed.stream import ShardStream, batch_bounds, batches_per_rank
from geotrainr.tasks import CountryClassifier

from conftest import SIX, build_tiny_index, make_image

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def packed(tmp_path: Path) -> Path:
    """60 rows (45 train, 15 val) packed in row groups of 4, 3 groups per shard."""
    index = build_tiny_index(tmp_path / "src", n=60)
    pack(index, tmp_path / "packed", rows_per_group=4, groups_per_shard=3)
    return tmp_path / "packed"


def test_pack_keeps_every_row_and_image_and_is_an_index(tmp_path, packed):
    src = read_index(tmp_path / "src" / "index.parquet")
    out = read_index(packed)  # a plain shard folder with an image column
    assert len(out) == len(src) and set(out.columns) >= {"image", "lat", "lon", "country", "split", "origin"}
    by_origin = out.set_index("origin")
    for row in src.itertuples():
        got = by_origin.loc[row.image_path]
        assert got["image"] == (tmp_path / "src" / row.image_path).read_bytes()  # no re-encoding asked: the same bytes
        assert (got["lat"], got["lon"], got["country"], got["split"]) == (row.lat, row.lon, row.country, row.split)
    manifest = json.loads((packed / pack_manifest.PACK_MANIFEST).read_text())
    assert manifest["splits"] == {"train": 45, "val": 15, "test": 0}
    assert sum(sum(s["row_groups"]) for s in manifest["shards"]) == 60 and not (packed / pack_manifest.PACK_PARTIAL).exists()
    # rows are stored split by split
    assert list(out["split"]) == sorted(out["split"], key=["train", "val", "test"].index)


def test_pack_reencodes_to_max_side(tmp_path):
    rows = []
    for i in range(6):
        make_image(tmp_path / f"img/{i}.png", seed=i, size=80, fmt="PNG")
        cc, lat, lon = SIX[i]
        rows.append({"image_path": f"img/{i}.png", "lat": lat, "lon": lon, "country": cc, "split": "train"})
    index = write_index(pd.DataFrame(rows), tmp_path / "index.parquet")
    pack(index, tmp_path / "small", max_side=32, quality=80)
    for data in read_index(tmp_path / "small")["image"]:
        with Image.open(io.BytesIO(data)) as im:
            assert im.format == "JPEG" and max(im.size) == 32


def test_pack_reads_zip_members_and_embedded_bytes(tmp_path):
    with zipfile.ZipFile(tmp_path / "00.zip", "w") as zf:
        for i in range(4):
            buf = io.BytesIO()
            Image.fromarray(np.full((20, 20, 3), 40 * i, np.uint8)).save(buf, "JPEG")
            zf.writestr(f"{i}.jpg", buf.getvalue())
    zrows = [{"archive": "00.zip", "member": f"{i}.jpg", "lat": 50.0, "lon": 10.0 + i, "country": "DE", "split": "train"}
             for i in range(4)]
    index = write_index(pd.DataFrame(zrows), tmp_path / "zip.parquet")
    pack(index, tmp_path / "from-zip")
    out = read_index(tmp_path / "from-zip")
    assert sorted(out["origin"]) == [f"00.zip:{i}.jpg" for i in range(4)]
    with zipfile.ZipFile(tmp_path / "00.zip") as zf:
        assert sorted(out["image"]) == sorted(zf.read(f"{i}.jpg") for i in range(4))
    # a packed set packs again (embedded bytes), with no origin of its own
    pack(tmp_path / "from-zip", tmp_path / "again")
    assert sorted(read_index(tmp_path / "again")["image"]) == sorted(out["image"])


def test_interrupted_pack_is_refused_then_resumed(tmp_path, monkeypatch):
    index = build_tiny_index(tmp_path / "src", n=36)
    real, calls = packing._write_shard, []

    def dies_after_two(job):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(job[0])
        return real(job)

    monkeypatch.setattr(packing, "_write_shard", dies_after_two)
    with pytest.raises(KeyboardInterrupt):
        pack(index, tmp_path / "p", rows_per_group=4, groups_per_shard=2, workers=1)
    out = tmp_path / "p"
    assert (out / pack_manifest.PACK_PARTIAL).exists() and not (out / pack_manifest.PACK_MANIFEST).exists()
    assert not list(out.glob(".*tmp"))  # no half-written shard left behind
    with pytest.raises(IndexValidationError, match="unfinished pack"):
        read_index(out)
    with pytest.raises(PackError, match="unfinished pack"):
        GeoDataModule(str(out))
    with pytest.raises(PackError, match="other settings"):
        pack(index, out, rows_per_group=4, groups_per_shard=2, max_side=32)
    monkeypatch.setattr(packing, "_write_shard", real)
    result = pack(index, out, rows_per_group=4, groups_per_shard=2, workers=1)
    assert (result.reused, result.written, result.rows) == (2, result.shards - 2, 36)
    assert len(read_index(out)) == 36 and sorted(read_index(out)["origin"]) == sorted(read_index(index)["image_path"])


def test_pack_cli_and_one_line_errors(tmp_path, capsys):
    index = build_tiny_index(tmp_path / "src", n=24)
    out = tmp_path / "packed"
    assert main(["pack", "--index", str(index), "--out", str(out), "--rows-per-group", "4", "--workers", "2"]) == 0
    assert "wrote 24 images" in capsys.readouterr().out
    assert main(["pack", "--index", str(index), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "already holds a finished pack" in err and len(err.splitlines()) == 1
    assert main(["pack", "--index", str(index), "--out", str(out), "--rows-per-group", "6", "--force"]) == 0
    assert "wrote 24 images in" in capsys.readouterr().out  # packed anew, then swapped in whole
    assert json.loads((out / pack_manifest.PACK_MANIFEST).read_text())["shards"][0]["row_groups"][0] == 6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["packed", "src"]  # nothing staged is left beside it
    assert main(["pack", str(index), "--out", str(tmp_path / "q"), "--quality", "0"]) == 2
    assert main(["pack", str(tmp_path / "nope.parquet"), "--out", str(tmp_path / "r")]) == 2
    assert len(read_index(out)) == 24


def test_pack_to_a_url_and_read_it_back(tmp_path):
    index = build_tiny_index(tmp_path / "src", n=24)
    url = (tmp_path / "remote").as_uri()  # file:///...: a URL on disk (s3:// against a server: test_object_storage.py)
    pack(index, url, rows_per_group=4)
    dm = GeoDataModule(url, batch_size=4, num_workers=0)
    dm.setup("fit")
    seen = [i for b in dm.train_dataloader() for i in b["index"].tolist()]
    assert sorted(seen) == list(range(len(dm.dataset("train"))))
    with pytest.raises(PackError, match="no _geotrainr_pack.json"):
        GeoDataModule((tmp_path / "src").as_uri())


@pytest.mark.parametrize("url", ["s3://AKIAEXAMPLE:sEcReT123@bucket/set", "s3://bucket/set?access_key=AKIAEXAMPLE&secret_key=sEcReT123"])
def test_a_url_with_credentials_is_refused_without_quoting_them(tmp_path, capsys, url):
    index = build_tiny_index(tmp_path / "src", n=12)
    with pytest.raises(PackError) as e:
        GeoDataModule(url)
    assert "sEcReT123" not in str(e.value) and "AKIAEXAMPLE" not in str(e.value) and "environment" in str(e.value)
    assert main(["pack", str(index), "--out", url]) == 2
    captured = capsys.readouterr()
    assert "sEcReT123" not in captured.err + captured.out and not (tmp_path / "bucket").exists()


# --- the streamed train loader ----------------------------------------------------------------


def test_batch_counts_are_equal_across_ranks_and_never_drop_a_row():
    for n in range(1, 200, 7):
        for world in (1, 2, 3, 4):
            if n < world:
                with pytest.raises(PackError):
                    batches_per_rank(n, world, 8)
                continue
            b = batches_per_rank(n, world, 8)
            for rank in range(world):
                share = (rank + 1) * n // world - rank * n // world
                bounds = batch_bounds(share, 8, b)
                sizes = np.diff(bounds)
                assert bounds[0] == 0 and bounds[-1] == share and len(sizes) == b and (sizes > 0).all()
                assert sizes.max() <= 16 and (b == 1 or sizes.min() >= 2 or share < 2 * b)


def plan_cover(stream: ShardStream, epoch: int, world: int, workers: int) -> list[list[int]]:
    """Positions each (rank, worker) reads in ``epoch``, computed as the loader does."""
    out = []
    for rank in range(world):
        stream.rank, stream.world = rank, world
        plan = stream.plan(epoch)
        for block in stream.worker_blocks(len(plan), workers):
            out.append([int(i) for b in block for i in plan[b]])
    return out


def test_stream_plan_is_disjoint_covers_once_and_reshuffles(packed):
    dm = GeoDataModule(str(packed), batch_size=4, num_workers=0, stream_buffer=2)
    dm.setup("fit")
    ds = dm.dataset("train", train=True)
    stream = ShardStream(ds, batch_size=4, seed=0)
    orders = []
    for world, workers in ((1, 1), (2, 1), (2, 2), (3, 2)):
        for epoch in (0, 1):
            parts = plan_cover(stream, epoch, world, workers)
            flat = [i for p in parts for i in p]
            assert sorted(flat) == list(range(len(ds))), (world, workers, epoch)  # each row once
            orders.append(flat)
    assert orders[0] != orders[1]  # a new order every epoch
    stream.rank, stream.world = 0, 1
    assert [list(b) for b in stream.plan(0)] == [list(b) for b in ShardStream(ds, 4, seed=0).plan(0)]  # seeded
    assert [list(b) for b in stream.plan(0)] != [list(b) for b in ShardStream(ds, 4, seed=1).plan(0)]
    # each worker reads few row groups: its positions come in runs of whole row groups
    groups = ds.packed.group_of(ds.rows[np.concatenate(stream.plan(0))])
    assert len(np.flatnonzero(np.diff(groups))) < 2 * len(np.unique(groups))


def test_loader_workers_read_disjoint_parts(packed):
    dm = GeoDataModule(str(packed), batch_size=4, num_workers=2)
    dm.setup("fit")
    loader = dm.train_dataloader()
    seen = [i for b in loader for i in b["index"].tolist()]
    assert sorted(seen) == list(range(len(dm.dataset("train")))) and len(loader) == 11


class Recorder(L.Callback):
    """Writes the split positions of every training batch, per rank and epoch, to ``folder``."""

    def __init__(self, folder: Path, crash_at: int | None = None):
        self.folder, self.crash_at = Path(folder), crash_at

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.crash_at is not None and trainer.global_step == self.crash_at:
            raise RuntimeError("simulated crash")
        path = self.folder / f"rank{trainer.global_rank}-epoch{trainer.current_epoch}.txt"
        with path.open("a") as f:
            f.write("".join(f"{i}\n" for i in batch["index"].tolist()))


def read_seen(folder: Path, pattern: str) -> list[int]:
    return [int(x) for p in sorted(folder.glob(pattern)) for x in p.read_text().split()]


def tiny_model(dm: GeoDataModule) -> CountryClassifier:
    return CountryClassifier(countries=dm.countries, backbone="test_efficientnet", weights=None, image_size=32)


def test_ddp_spawn_two_ranks_see_every_training_image_once_per_epoch(packed, tmp_path):
    dm = GeoDataModule(str(packed), batch_size=4, num_workers=1)
    n_train = 45
    rec = tmp_path / "seen"
    rec.mkdir()
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", max_epochs=2, limit_val_batches=0,
                        callbacks=[Recorder(rec)], enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False, logger=False, default_root_dir=tmp_path)
    trainer.fit(tiny_model(dm), datamodule=dm)
    for epoch in (0, 1):
        r0, r1 = read_seen(rec, f"rank0-epoch{epoch}.txt"), read_seen(rec, f"rank1-epoch{epoch}.txt")
        assert not set(r0) & set(r1)
        assert sorted(r0 + r1) == list(range(n_train)), epoch
    assert read_seen(rec, "rank0-epoch0.txt") != read_seen(rec, "rank0-epoch1.txt")


def test_resume_from_last_ckpt_mid_epoch_continues_where_the_data_was(packed, tmp_path, caplog):
    from lightning.pytorch.callbacks import ModelCheckpoint

    rec = tmp_path / "seen"
    rec.mkdir()
    ckpts = tmp_path / "ckpt"

    def trainer(crash_at=None):
        return L.Trainer(accelerator="cpu", devices=1, max_epochs=2, limit_val_batches=0, logger=False,
                         callbacks=[Recorder(rec, crash_at), ModelCheckpoint(ckpts, every_n_train_steps=3, save_last=True)],
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)

    dm = GeoDataModule(str(packed), batch_size=4, num_workers=2)
    with pytest.raises(RuntimeError, match="simulated crash"):
        trainer(crash_at=5).fit(tiny_model(dm), datamodule=dm)  # last.ckpt after step 3; steps 4 and 5 are lost
    before = read_seen(rec, "rank0-epoch0.txt")
    saved = torch.load(ckpts / "last.ckpt", weights_only=False)["GeoDataModule"]["stream"]
    assert saved["epoch"] == 0 and len(saved["done"]) == 3
    trained_before_ckpt = before[:12]  # three batches of four
    for p in rec.iterdir():
        p.unlink()
    dm = GeoDataModule(str(packed), batch_size=4, num_workers=2)
    with caplog.at_level("INFO"), warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*dataloader is not resumable.*")
        trainer().fit(tiny_model(dm), datamodule=dm, ckpt_path=str(ckpts / "last.ckpt"))
    assert "resuming epoch 0" in caplog.text and "3 batches" in caplog.text
    after = read_seen(rec, "rank0-epoch0.txt")
    assert sorted(trained_before_ckpt + after) == list(range(45))  # the rest of the epoch, nothing twice
    assert sorted(read_seen(rec, "rank0-epoch1.txt")) == list(range(45))  # the next epoch whole


def test_resume_with_another_batch_size_says_the_epoch_restarts(packed, caplog):
    dm = GeoDataModule(str(packed), batch_size=4, num_workers=0)
    dm.load_state_dict({"stream": {"epoch": 0, "done": [0, 1, 2], "world": 1, "batch_size": 8}})
    dm.setup("fit")
    with caplog.at_level("INFO"):
        seen = [i for b in dm.train_dataloader() for i in b["index"].tolist()]
    assert "the epoch restarts from its first batch" in caplog.text
    assert sorted(seen) == list(range(45))
    dm = GeoDataModule(str(packed), batch_size=4, num_workers=0)
    dm.load_state_dict({"stream": {"epoch": 0, "done": [0, 1, 2], "world": 1, "batch_size": 4}})
    dm.setup("fit")
    seen = [i for b in dm.train_dataloader() for i in b["index"].tolist()]
    assert len(seen) == 45 - 12 and len(set(seen)) == len(seen)


def test_fit_test_report_and_export_dataset_take_a_packed_set(packed, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = ["--config", str(ROOT / "configs" / "country.yaml"), f"--data.init_args.index={packed}",
            "--data.init_args.num_workers=0", "--data.init_args.batch_size=8",
            "--model.init_args.backbone=test_efficientnet", "--model.init_args.weights=null",
            "--model.init_args.image_size=32", "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false", "--trainer.default_root_dir=runs"]
    assert main(["fit", *args, "--trainer.max_epochs=1"]) == 0
    ckpt = next((tmp_path / "runs").rglob("last.ckpt"))
    assert main(["test", *args, f"--ckpt_path={ckpt}"]) == 0
    assert main(["report", str(ckpt), "--index", str(packed), "--split", "val", "--out", "rep", "--workers", "0"]) == 0
    records = [json.loads(line) for line in (tmp_path / "rep").glob("*.jsonl").__next__().read_text().splitlines()] \
        if list((tmp_path / "rep").glob("*.jsonl")) else []
    assert (tmp_path / "rep" / "report.md").exists()
    if records:
        assert all(r["image"].startswith("images/") for r in records)
    assert main(["export-dataset", str(packed), "--out", "hf"]) == 0
    assert sum(1 for _ in (tmp_path / "hf" / "data").glob("*.parquet")) >= 2

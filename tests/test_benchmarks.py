"""Smoke test of the benchmark scripts: each runs with --quick on tiny inputs and appends its JSON line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_quick(name: str, tmp_path: Path, *extra: str) -> dict:
    results = tmp_path / "results.jsonl"
    cmd = [sys.executable, str(ROOT / "benchmarks" / f"{name}.py"), "--quick", f"--results={results}",
           f"--workdir={tmp_path / 'work'}", *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "| " in proc.stdout  # the table
    lines = results.read_text().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["benchmark"] == name
    for key in ("date", "machine", "cores", "torch", "settings", "figures"):
        assert key in record, key
    assert record["settings"]["quick"] is True
    return record["figures"]


def test_index_scale_quick(tmp_path):
    figures = run_quick("index_scale", tmp_path, "--rows=5000")
    assert figures["rows"] == 5000 and figures["index_seconds"] > 0 and figures["index_peak_mib"] > 0
    assert set(figures["steps_s"]) >= {"generate", "validate", "split", "write", "open_for_training"}


def test_pipeline_quick(tmp_path, demo_index):
    figures = run_quick("pipeline", tmp_path, "--workers", "0", "1")
    assert figures["model_images_per_s"] > 0
    assert {"files/full/0", "files/draft/1", "parquet/full/0", "parquet/draft/1"} <= set(figures["loaders"])
    assert all(v["images_per_s"] > 0 for v in figures["loaders"].values())


def test_locate_quick(tmp_path, demo_index):
    figures = run_quick("locate", tmp_path)
    assert figures["raw_images_per_s"] > 0
    assert figures["locate_demo"]["images_per_s"] > 0 and figures["locate_640"]["images_per_s"] > 0


def test_fit_quick(tmp_path, demo_index):
    figures = run_quick("fit", tmp_path)
    assert figures["fit_images_per_s"] > 0 and figures["plain_images_per_s"] > 0 and figures["ratio"] > 0
    assert any((tmp_path / "work" / "fit").glob("*/runs/country"))  # run folders land in the workdir, not the repository


def test_scrape_durability_quick(tmp_path):
    figures = run_quick("scrape_durability", tmp_path)
    assert {"store_fsync", "store_no_fsync", "scrape_fsync", "scrape_no_fsync", "resume_check"} <= set(figures)
    assert all(v > 0 for v in figures.values())


@pytest.mark.slow
def test_scale_quick(tmp_path, demo_index):
    figures = run_quick("scale", tmp_path)
    assert figures["model_images_per_s"] > 0 and set(figures["goals"]) >= {"memory_growth", "setup_s", "shards_over_files"}
    for arm in ("files-2000", "packed-2000", "files-4000", "packed-4000"):
        assert figures[arm]["images_per_s"] > 0 and figures[arm]["peak_rss_mib"] > 0


@pytest.mark.slow
def test_shard_engines_quick(tmp_path, demo_index):
    pytest.importorskip("litdata")
    pytest.importorskip("webdataset")
    figures = run_quick("shard_engines", tmp_path)
    assert all(figures[e]["images_per_s"] > 0 for e in ("files", "parquet", "webdataset", "litdata"))


def test_recipe_quick(tmp_path, demo_index):
    figures = run_quick("recipe", tmp_path, "--index=demo")
    arm = figures["demo"]
    assert 0.0 <= arm["plain_acc1"] <= 1.0 and 0.0 <= arm["recipe_acc1"] <= 1.0
    assert arm["plain_minutes"] > 0 and arm["recipe_minutes"] > 0
    assert (tmp_path / "work" / "recipe" / "demo" / "runs" / "country").is_dir()  # the run lands in the workdir

"""`geotrainr export-dataset`: an index -> a Hugging Face datasets folder (parquet shards + dataset card)."""

from __future__ import annotations

import argparse
from pathlib import Path

from geotrainr.commands import add_force, add_out, deprecated, refuse_existing
from geotrainr.data.hf_export import ExportError


def build_parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Write an index as a Hugging Face datasets folder: data/{split}-NNNNN-of-NNNNN.parquet with an image "
        "feature, lat/lon/country/split and provenance columns, and a README.md dataset card (licence, attribution, "
        "splits). Load it with datasets.load_dataset('parquet', data_dir=OUT); publish it with "
        "'huggingface-cli upload USER/NAME OUT . --repo-type dataset'.",
    )
    p.add_argument("--index", default=None, help="parquet index file or shard folder")
    deprecated(p, "index", "--index INDEX", store="index")
    add_out(p, "folder to write (with --force, an earlier export there is replaced whole)", required=True)
    add_force(p, "an earlier export in --out")
    p.add_argument("--name", default=None, help="dataset name in the card (default: the folder's name)")
    p.add_argument("--licence", default=None, help="Hub licence id (e.g. cc-by-sa-4.0); default: from the index's licence column")
    p.add_argument("--shard-mb", type=float, default=500.0, help="image megabytes per parquet shard (default 500)")
    return p


def run(args: argparse.Namespace) -> int:
    from geotrainr.data.hf_export import export_dataset
    from geotrainr.progress import progress_bar

    if args.index is None:
        raise ExportError("give the index to export: --index INDEX")
    refuse_existing(args.out, args.force)
    with progress_bar("exporting", unit="img") as bar:
        result = export_dataset(args.index, args.out, shard_mb=args.shard_mb, name=args.name, licence=args.licence,
                                progress=bar)
    print("split       images  shards")
    for split, n in result.rows.items():
        print(f"{split:<10} {n:>7}  {result.shards[split]:>6}")
    print(f"licence: {result.licence}")
    print(f"wrote {Path(args.out)} (load: datasets.load_dataset('parquet', data_dir='{args.out}'))")
    return 0

"""`geotrainr report MODEL [--index PATH|demo | --config YAML | --truth LISTING] --out DIR`: an evaluation report."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from geotrainr.benchmarking import BENCHMARKS
from geotrainr.commands import add_device, add_force, add_out, refuse_existing
from geotrainr.config_files import register_parser_mode, resolve_config
from geotrainr.locator import RUNTIMES
from geotrainr.progress import progress_bar
from geotrainr.metrics import metrics_table
from geotrainr.report import ReportError, evaluate, write_report


def build_parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Evaluate a checkpoint on an index split and write a report: metrics table, confusion matrix "
        "of countries, accuracy per country, CDF of the great-circle error with the 1/25/200/750/2500 km marks, "
        "the map of guesses (truth joined to guess), predictions.csv, metrics.json and report.md tying them together.",
    )
    p.add_argument("model", metavar="MODEL", help="a .ckpt file written by geotrainr fit, a folder written by geotrainr export, "
                   "a run folder (its best checkpoint), or a Hugging Face Hub repository id (org/name)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--index", default=None, help="parquet index (file or shard folder) or 'demo' (default: demo)")
    src.add_argument("--config", default=None, help="a training config (a file or a shipped name such as country): "
                     "the index of its data section is used")
    src.add_argument("--truth", default=None, metavar="LISTING.csv",
                     help="a CSV of photos with path,lat,lon[,country] (paths relative to the CSV); split 'all'")
    src.add_argument("--benchmark", default=None, choices=list(BENCHMARKS),
                     help="a standard benchmark in its published layout (--data): the standard table beside published figures")
    p.add_argument("--data", default=None, help="--benchmark: the benchmark's folder or CSV (docs/benchmarks.md)")
    p.add_argument("--images", default=None, help="--truth or --benchmark: the image folder, where it is not the CSV's folder or the layout's default")
    p.add_argument("--columns", default=None, help="--truth or --benchmark: column names of another spelling, "
                   "e.g. path=file,lat=latitude,lon=lng")
    p.add_argument("--split", default=None, help="train, val, test or all (default: val; all with --truth)")
    add_out(p, "output folder (default: ./report)", default="report")
    add_force(p, "a report folder that already holds files")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=None, help="decoding processes (default: half the CPU cores, at most 4)")
    add_device(p)
    p.add_argument("--runtime", choices=RUNTIMES, default="torch",
                   help="onnx: run the network in onnxruntime on the CPU; needs a folder written by "
                   "'geotrainr export MODEL --out DIR --format onnx' (default: torch)")
    return p


def index_from_config(path: str) -> str:
    """The index of a LightningCLI config's data section, parsed by jsonargparse as ``fit`` parses it
    (``demo``, the data module's default, when it sets none)."""
    from jsonargparse import ArgumentError, ArgumentParser, get_loader

    from geotrainr.data.datamodule import GeoDataModule

    mode = register_parser_mode()
    try:
        cfg = get_loader(mode)(Path(resolve_config(path)).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ReportError(f"{path}: no such config file") from None
    except Exception as e:  # the loader's YAML errors, an undecodable file
        raise ReportError(f"{path}: not a readable YAML config ({str(e).splitlines()[0]})") from None
    parser = ArgumentParser(parser_mode=mode, exit_on_error=False)
    parser.add_subclass_arguments(GeoDataModule, "data", required=False)
    data = cfg.get("data") if isinstance(cfg, dict) else None
    if not data:
        return "demo"
    try:
        parsed = parser.parse_object({"data": data})
    except ArgumentError as e:
        raise ReportError(f"{path}: its data section is not one geotrainr reads ({e})") from None
    return str(parsed.data.init_args.index)


def run(args: argparse.Namespace) -> int:
    if args.benchmark:
        return run_benchmark_report(args)
    if args.data:
        raise ReportError("--data names a benchmark's files: give --benchmark im2gps3k|yfcc4k|osv5m-test too")
    if (args.columns or args.images) and not args.truth:
        raise ReportError("--columns and --images describe a --truth CSV or a --benchmark: give one of them too")
    refuse_existing(args.out, args.force)
    split = args.split or ("all" if args.truth else "val")
    device = None if args.device == "auto" else args.device
    with tempfile.TemporaryDirectory(prefix="geotrainr-report-") as tmp:
        if args.truth:
            from geotrainr.data.sources.folders import index_from_csv
            from geotrainr.data.index import validate_index, write_index

            from geotrainr.data.sources import parse_columns

            listing = index_from_csv(args.truth, tmp, columns=parse_columns(args.columns), images=args.images)
            listing = validate_index(listing).assign(split="test")  # every row is evaluated
            index = write_index(listing, Path(tmp) / "index.parquet")
        elif args.config:
            index = index_from_config(args.config)
        else:
            index = args.index or "demo"
        with progress_bar("report", unit="img") as bar:
            ev = evaluate(args.model, index=index, split=split, batch_size=args.batch_size, num_workers=args.workers,
                          device=device, progress=bar, runtime=args.runtime)
    if args.truth:  # the temporary index is gone: name the listing instead
        ev.index = args.truth
    print_report(ev, write_report(ev, args.out, checkpoint=args.model))
    return 0


def print_report(ev, page) -> None:
    """The metrics, their meaning and the notes on standard output."""
    width = max(len(k) for k, _, _ in metrics_table(ev.metrics))
    print(f"{ev.kind} model on {ev.index}, {ev.split} split: {len(ev.frame)} images"
          + (f" ({ev.skipped} unreadable, skipped)" if ev.skipped else ""))
    for k, v, meaning in metrics_table(ev.metrics):
        print(f"  {k:<{width}}  {v:>10}   {meaning}")
    for n in ev.notes:
        print(f"note: {n}")
    print(f"report written to {page}")


def run_benchmark_report(args: argparse.Namespace) -> int:
    """``--benchmark``: the usual report, plus ``benchmark.md`` with the standard table and published figures."""
    from geotrainr.benchmarking import run_benchmark, standard_table
    from geotrainr.data.sources import parse_columns
    from geotrainr.files import write_text_atomic

    if not args.data:
        raise ReportError(f"--benchmark {args.benchmark} needs --data: the folder or CSV it is published as (docs/benchmarks.md)")
    refuse_existing(args.out, args.force)
    device = None if args.device == "auto" else args.device
    with progress_bar(args.benchmark, unit="img") as bar:
        ev = run_benchmark(args.model, args.benchmark, args.data, images=args.images, columns=parse_columns(args.columns),
                           batch_size=args.batch_size, num_workers=args.workers, device=device, progress=bar,
                           runtime=args.runtime)
    page = write_report(ev, args.out, checkpoint=args.model, title=f"geotrainr on {args.benchmark}")
    table = standard_table(ev, args.benchmark, label=Path(str(args.model)).name or str(args.model))
    write_text_atomic(Path(args.out) / "benchmark.md", f"# {args.benchmark}: {len(ev.records)} images\n\n{table}\n")
    print_report(ev, page)
    print(f"\n{table}")
    return 0


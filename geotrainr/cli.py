"""The ``geotrainr`` command: LightningCLI verbs plus the library's own verbs.

``fit/validate/test/predict`` go to LightningCLI (configs, dotted overrides,
``--print_config``), the vocabulary every verb shares (MODEL first, ``--index``, ``--device``...)
translated to LightningCLI's settings by :func:`lightning_args`. Every other verb is an argparse command in
``geotrainr/commands/<verb>.py`` exposing ``build_parser(prog)`` and ``run(args)``.
A user mistake (any :class:`GeotrainrError`) prints one line and exits 2.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from pathlib import Path

from geotrainr.commands import OutputExistsError, lightning_device_args, warn_deprecated
from geotrainr.errors import GeotrainrError
from geotrainr.runs import RUN_CONFIG, RunNotFoundError, run_checkpoint
from geotrainr.version import __version__

LIGHTNING_VERBS = {
    "fit": "train a task from a config: a shipped one by name (--config country) or a file",
    "validate": "evaluate a checkpoint on the validation split; prints and saves the metrics",
    "test": "evaluate a checkpoint on the test split; prints and saves the metrics",
    "predict": "write prediction records: MODEL on an index split (--index/--split/--config), or on photos",
}

#: the vocabulary's flags on LightningCLI verbs -> LightningCLI's own settings (verbs that take them)
LIGHTNING_FLAGS = {
    "--index": ("--data.init_args.index", ("fit", "validate", "test", "predict")),
    "--workers": ("--data.init_args.num_workers", ("fit", "validate", "test", "predict")),
    "--split": ("--data.init_args.predict_split", ("predict",)),
    "--out": ("--predictions", ("predict",)),
    "-o": ("--predictions", ("predict",)),
}
#: verbs whose leading positional is MODEL, taken as --ckpt_path
LIGHTNING_MODEL_VERBS = ("validate", "test", "predict")

#: verb -> (module under geotrainr.commands, one-line description)
COMMANDS = {
    "index": ("index", "build a validated parquet index from a folder or a CSV"),
    "demo-data": ("demo", "build the offline demo dataset (aerial stand-in) and print its index path"),
    "scrape": ("scrape", "collect a Street View dataset from GeoNames places (resumable, budgeted)"),
    "locate": ("locate", "guess where photos were taken: countries, coordinates, nearest place, map"),
    "explain": ("explain", "Grad-CAM: which parts of a photo the model used for its guess"),
    "geocells": ("geocells", "build geocells from an index (or read a checkpoint's) and draw them on a map"),
    "ablate": ("ablate", "rerun the study's tables and the geocell comparison; writes a Markdown results page"),
    "pack": ("pack", "embed an index's images in parquet shards that training streams (millions of images, DDP)"),
    "export-dataset": ("export_dataset", "write an index as a Hugging Face datasets folder (parquet shards + dataset card)"),
    "report": ("report", "evaluate a checkpoint on an index split: metrics, confusion, error CDF, map, report.md"),
    "export": ("export", "write a checkpoint as a shareable Hugging Face folder (safetensors, config, model card)"),
    "serve": ("serve", "serve a model over HTTP (LitServe): /predict, /explain, /card, /health and a web page"),
}


def _usage() -> str:
    width = max(len(v) for v in [*LIGHTNING_VERBS, *COMMANDS])
    lines = [
        "usage: geotrainr <verb> [options]    (geotrainr <verb> --help for a verb's options)",
        "",
        "Single-image geolocation of street-level photos: train, evaluate and use country,",
        "coordinate and distance models.",
        "",
        "training (LightningCLI):",
    ]
    lines += [f"  {v:<{width}}  {d}" for v, d in LIGHTNING_VERBS.items()]
    lines += ["", "data and models:"]
    lines += [f"  {v:<{width}}  {d}" for v, (_, d) in COMMANDS.items()]
    lines += ["", "options:", f"  {'-h, --help':<{width}}  show this message", f"  {'--version':<{width}}  print the version"]
    return "\n".join(lines)


def one_line(message: str) -> str:
    """A user error's message on one line. An error raised in a DataLoader worker comes back from torch as
    ``Caught X in DataLoader worker process N. Original Traceback ...``: its last line is the message itself."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    if len(lines) > 1 and "Original Traceback" in message:
        name, sep, text = lines[-1].partition(": ")
        return text if sep and name.replace(".", "").replace("_", "").isalnum() else lines[-1]
    return " ".join(lines)


def _error(verb: str, message: str) -> int:
    print(f"geotrainr {verb}: error: {one_line(message)}", file=sys.stderr)
    return 2


def _lightning_form(args: Sequence[str]) -> bool:
    """Whether ``predict``'s arguments are LightningCLI's (a config, an index or split, data/trainer/model settings,
    or help) rather than photos."""
    return any(a in ("--config", "-c", "-h", "--help", "--print_config", "--index", "--split")
               or a.startswith(("--config=", "--data", "--trainer", "--model.", "--seed_everything", "--print_config",
                                "--index=", "--split="))
               for a in args)


def _has_settings(args: Sequence[str]) -> bool:
    """Whether LightningCLI arguments say what model and data to build (a config, or the sections themselves)."""
    return any(a in ("-c", "--config", "-h", "--help") or a.startswith(("--config=", "--model", "--data")) for a in args)


def _check_model_settings(model: str, args: Sequence[str]) -> None:
    """A MODEL outside a run folder, given without a config: one line, where LightningCLI would print its usage."""
    if not _has_settings(args):
        ckpt = Path(model)
        raise RunNotFoundError(f"{model}: no such checkpoint file or run folder" if not ckpt.exists() else
                               f"{model}: not in a run folder (no {RUN_CONFIG} beside its checkpoints); give --config, "
                               "the run's config.yaml or a shipped name such as country")


def lightning_args(verb: str, args: Sequence[str]) -> list[str]:
    """The vocabulary on a LightningCLI verb as LightningCLI's settings: a leading MODEL is ``--ckpt_path``,
    ``--device`` the trainer's accelerator and devices, ``--index/--workers/--split/--out`` the data's and
    the writer's. ``--force`` lets predict replace its output file."""
    args = list(args)
    out: list[str] = []
    if verb in LIGHTNING_MODEL_VERBS and args and not args[0].startswith("-"):
        ckpt, config = run_checkpoint(args.pop(0))
        if config is not None and not _has_settings(args):
            out += ["--config", str(config)]  # the run's own settings: its data, its trainer
        out.append(f"--ckpt_path={ckpt}")
    force = "--force" in args
    predictions = None
    i = 0
    while i < len(args):
        arg = args[i]
        name, eq, value = arg.partition("=")
        takes_value = name in LIGHTNING_FLAGS and verb in LIGHTNING_FLAGS[name][1] or name in ("--device", "--predictions")
        if not takes_value:
            if arg != "--force" or verb != "predict":
                out.append(arg)
            i += 1
            continue
        if not eq:
            if i + 1 >= len(args):
                raise LightningFlagError(f"{name} needs a value")
            value, i = args[i + 1], i + 1
        i += 1
        if name == "--device":
            out += lightning_device_args(value)
            continue
        if name == "--predictions":
            warn_deprecated(f"geotrainr {verb}", "--predictions", "--out")
        if name in ("--predictions", "--out", "-o"):
            predictions = value
        out.append(f"{LIGHTNING_FLAGS.get(name, (name,))[0]}={value}")
    if predictions is not None and not force and Path(predictions).exists():
        raise OutputExistsError(f"--out {predictions} exists; add --force to replace it")
    return out


class LightningFlagError(GeotrainrError, ValueError):
    """A vocabulary flag of a LightningCLI verb given without its value."""


def main(args: Sequence[str] | None = None) -> int:
    """Entry point of the ``geotrainr`` command; returns the exit code."""
    argv = list(sys.argv[1:] if args is None else args)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    if argv[0] == "--version":
        print(f"geotrainr {__version__}")
        return 0
    verb, rest = argv[0], argv[1:]
    if verb == "predict" and rest and not _lightning_form(rest):
        verb_module = "predict"  # photos and a model, no config: the argparse form of the verb
    elif verb in LIGHTNING_VERBS:
        from geotrainr.lightning_cli import run_lightning

        try:
            translated = lightning_args(verb, rest)
            if verb in LIGHTNING_MODEL_VERBS and rest and not rest[0].startswith("-"):
                _check_model_settings(rest[0], translated)
            return run_lightning(verb, translated)
        except GeotrainrError as e:
            return _error(verb, str(e))
    else:
        if verb not in COMMANDS:
            return _error(verb, f"unknown verb {verb!r}; run 'geotrainr --help' for the list")
        verb_module = COMMANDS[verb][0]
    module = importlib.import_module(f"geotrainr.commands.{verb_module}")
    parser = module.build_parser(f"geotrainr {verb}")
    try:
        ns = parser.parse_args(rest)
    except SystemExit as e:  # argparse: --help (0) or a usage error (2)
        return int(e.code or 0)
    except GeotrainrError as e:  # e.g. a --config file that cannot be read
        return _error(verb, str(e))
    try:
        return int(module.run(ns) or 0)
    except GeotrainrError as e:
        return _error(verb, str(e))
    except KeyboardInterrupt:
        print(f"geotrainr {verb}: interrupted", file=sys.stderr)
        return 130


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()

"""`geotrainr predict MODEL PHOTOS... --out FILE`: prediction records for photos, with no config.

With ``--config`` (an index and its split, any Trainer setting) ``predict`` is LightningCLI's verb;
without one this command runs: the model is everything, photos are files and folders, and the
Trainer's devices, strategy and precision are flags. Both write the same records through
:class:`~geotrainr.predictions.PredictionWriter`, every rank's rows included.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from geotrainr.commands import add_device, add_force, add_out, deprecated, lightning_device, refuse_existing
from geotrainr.listing import ImageListError


def build_parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Write one prediction record per photo (the schema locate and report use) with a trained model; "
        "no config needed. With --config, predict is LightningCLI's verb on an index split instead.",
        epilog="examples:\n"
        "  geotrainr predict best.ckpt photos/ --out guesses.csv\n"
        "  geotrainr predict best.ckpt photos/ --device cuda --devices 2 --strategy ddp --out guesses.jsonl",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", metavar="MODEL",
                   help="a .ckpt file, a run folder, a folder written by geotrainr export, or a Hub repository id")
    p.add_argument("images", nargs="*", help="photo files and/or folders (searched recursively)")
    deprecated(p, "--ckpt_path", "MODEL", store="model_option")
    deprecated(p, "--model", "MODEL", store="model_option")
    add_out(p, "output file: .csv, .json or .jsonl (default predictions.csv)", default="predictions.csv")
    deprecated(p, "--predictions", "--out", store="out")
    add_force(p, "an existing output file")
    p.add_argument("-k", "--top-k", type=int, default=5, help="countries listed per photo (default 5)")
    p.add_argument("--batch-size", type=int, default=32, help="photos per forward pass (default 32)")
    p.add_argument("--workers", type=int, default=0, help="decoding processes per device (default 0)")
    add_device(p)
    p.add_argument("--accelerator", default=None, help="auto, cpu, gpu ... (Lightning's; default: from --device)")
    p.add_argument("--devices", default=None, help="how many devices (Lightning's; default: 1, or the one --device names)")
    p.add_argument("--strategy", default="auto", help="auto, ddp, ddp_spawn ... (Lightning's)")
    p.add_argument("--precision", default="32-true", help="32-true, bf16-mixed, 16-mixed ... (Lightning's)")
    return p


def run(args: argparse.Namespace) -> int:
    import lightning as L

    from geotrainr.data.photos import PhotoDataModule
    from geotrainr.loading import load_model
    from geotrainr.listing import collect_images
    from geotrainr.predictions import PredictionWriter

    if getattr(args, "model_option", None):  # the old spelling: every positional is a photo
        args.images.insert(0, args.model)
        args.model = args.model_option
    if not args.images:
        raise ImageListError("give photo files or folders to predict on after MODEL")
    refuse_existing(args.out, args.force)
    if args.top_k < 1 or args.batch_size < 1 or args.workers < 0:
        raise ImageListError("--top-k and --batch-size must be at least 1, --workers at least 0")
    writer = PredictionWriter(args.out, top_k=args.top_k)  # a bad ending fails here, before any work
    files, notes = collect_images(args.images)
    for n in notes:
        print(f"geotrainr predict: {n}", file=sys.stderr)
    model = load_model(args.model)
    dm = PhotoDataModule(files, model.preprocessing, batch_size=args.batch_size, num_workers=args.workers)
    accelerator, chosen = lightning_device(args.device)
    devices = args.devices if args.devices is not None else chosen if chosen is not None else 1
    devices = int(devices) if str(devices).isdigit() else devices
    trainer = L.Trainer(accelerator=args.accelerator or accelerator, devices=devices, strategy=args.strategy, precision=args.precision,
                        logger=False, callbacks=[writer], enable_model_summary=False, enable_checkpointing=False,
                        default_root_dir=str(Path(args.out).resolve().parent))
    trainer.predict(model, datamodule=dm, return_predictions=False)
    if trainer.is_global_zero:
        print(f"{writer.written} predictions written to {writer.path}")
    return 0

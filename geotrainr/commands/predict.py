"""`geotrainr predict MODEL_OR --ckpt_path CKPT PHOTOS...`: prediction records for photos, with no config.

With ``--config`` (an index and its split, any Trainer setting) ``predict`` is LightningCLI's verb;
without one this command runs: the model is everything, photos are files and folders, and the
Trainer's devices, strategy and precision are flags. Both write the same records through
:class:`~geotrainr.predictions.PredictionWriter`, every rank's rows included.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from geotrainr.listing import ImageListError


def build_parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Write one prediction record per photo (the schema locate and report use) with a trained model; "
        "no config needed. With --config, predict is LightningCLI's verb on an index split instead.",
        epilog="examples:\n"
        "  geotrainr predict --ckpt_path best.ckpt photos/ --predictions guesses.csv\n"
        "  geotrainr predict --ckpt_path best.ckpt photos/ --devices 2 --strategy ddp --predictions guesses.jsonl",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("images", nargs="+", help="photo files and/or folders (searched recursively)")
    p.add_argument("--ckpt_path", "--model", dest="model", required=True,
                   help="a .ckpt file, a run folder, a folder written by geotrainr export, or a Hub repository id")
    p.add_argument("--predictions", "--out", dest="out", default="predictions.csv",
                   help="output file: .csv, .json or .jsonl (default predictions.csv)")
    p.add_argument("-k", "--top-k", type=int, default=5, help="countries listed per photo (default 5)")
    p.add_argument("--batch-size", type=int, default=32, help="photos per forward pass (default 32)")
    p.add_argument("--workers", type=int, default=0, help="decoding processes per device (default 0)")
    p.add_argument("--accelerator", default="auto", help="auto, cpu, gpu ... (Lightning's)")
    p.add_argument("--devices", default="1", help="how many devices (Lightning's; default 1)")
    p.add_argument("--strategy", default="auto", help="auto, ddp, ddp_spawn ... (Lightning's)")
    p.add_argument("--precision", default="32-true", help="32-true, bf16-mixed, 16-mixed ... (Lightning's)")
    return p


def run(args: argparse.Namespace) -> int:
    import lightning as L

    from geotrainr.data.photos import PhotoDataModule
    from geotrainr.loading import load_model
    from geotrainr.listing import collect_images
    from geotrainr.predictions import PredictionWriter

    if args.top_k < 1 or args.batch_size < 1 or args.workers < 0:
        raise ImageListError("--top-k and --batch-size must be at least 1, --workers at least 0")
    writer = PredictionWriter(args.out, top_k=args.top_k)  # a bad ending fails here, before any work
    files, notes = collect_images(args.images)
    for n in notes:
        print(f"geotrainr predict: {n}", file=sys.stderr)
    model = load_model(args.model)
    dm = PhotoDataModule(files, model.preprocessing, batch_size=args.batch_size, num_workers=args.workers)
    devices = int(args.devices) if str(args.devices).isdigit() else args.devices
    trainer = L.Trainer(accelerator=args.accelerator, devices=devices, strategy=args.strategy, precision=args.precision,
                        logger=False, callbacks=[writer], enable_model_summary=False, enable_checkpointing=False,
                        default_root_dir=str(Path(args.out).resolve().parent))
    trainer.predict(model, datamodule=dm, return_predictions=False)
    if trainer.is_global_zero:
        print(f"{writer.written} predictions written to {writer.path}")
    return 0

"""`geotrainr export MODEL --out DIR`: a trained model as a shareable Hugging Face folder."""

from __future__ import annotations

import argparse

from geotrainr.artifact import CONFIG_NAME, WEIGHTS_NAME
from geotrainr.commands import add_force, add_out
from geotrainr.hub import EXPORT_FORMATS, export_model


def build_parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description=f"Write a checkpoint as {WEIGHTS_NAME} (weights, no pickle), {CONFIG_NAME} (task, backbone, "
        "classes, preprocessing, geocells) and README.md (a model card with its evaluation and the data's licence). "
        "geotrainr locate/explain/report and geotrainr.load() take the folder wherever they take a checkpoint.",
        epilog="share it: huggingface-cli upload ORG/NAME DIR  (then: geotrainr locate ORG/NAME photo.jpg)",
    )
    p.add_argument("model", metavar="MODEL", help="a .ckpt file written by geotrainr fit, a run folder (its best "
                   "checkpoint) or a folder written by geotrainr export")
    add_out(p, "the folder to write (replaced as a whole with --force, never half-written)", required=True)
    add_force(p, "a folder that already holds files")
    p.add_argument("--format", choices=EXPORT_FORMATS, default="safetensors",
                   help="onnx: also write model.onnx, the network for onnxruntime (locate/report --runtime onnx); "
                   "default: safetensors only")
    return p


def run(args: argparse.Namespace) -> int:
    out = export_model(args.model, args.out, force=args.force, format=args.format)
    onnx = ", model.onnx" if args.format == "onnx" else ""
    print(f"exported {args.model} to {out}/ ({WEIGHTS_NAME}, {CONFIG_NAME}, README.md{onnx})")
    return 0

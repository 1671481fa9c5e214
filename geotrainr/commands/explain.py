"""`geotrainr explain MODEL IMAGE --out heat.png`: Grad-CAM of the model's guess over the photo."""

from __future__ import annotations

import argparse
from pathlib import Path

from geotrainr.commands import add_device, add_force, add_out, refuse_existing
from geotrainr.explain import explain
from geotrainr.locator import Locator


def build_parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Grad-CAM over the backbone's last feature map, overlaid on the photo: which regions "
        "(signs, road lines, poles, vegetation...) pushed the model towards its guess. Red: strong evidence; "
        "the dimmed, framed part of a wide photo is what the model's centre crop leaves out.",
    )
    p.add_argument("model", metavar="MODEL", help="a .ckpt file written by geotrainr fit, a folder written by geotrainr export, "
                   "a run folder (its best checkpoint), or a Hugging Face Hub repository id (org/name)")
    p.add_argument("image", help="the photo (any format and size Pillow reads)")
    add_out(p, "picture to write (default: <image stem>_gradcam.png in the working folder)", default=None)
    add_force(p, "an existing picture")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--country", default=None, help="explain this country (ISO code) instead of the predicted one "
                      "(country, distance and geocell models)")
    what.add_argument("--target", choices=("lat", "lon"), default=None,
                      help="linear coordinate models: explain the latitude (default) or the longitude output")
    p.add_argument("--alpha", type=float, default=0.5, help="opacity of the heat map (default 0.5)")
    p.add_argument("--credit", default=None, help="a second caption line, e.g. the photo's author and licence")
    add_device(p)
    return p


def run(args: argparse.Namespace) -> int:
    out = Path(args.out) if args.out else Path(f"{Path(args.image).stem}_gradcam.png")
    refuse_existing(out, args.force)
    locator = Locator.load(args.model, device=None if args.device == "auto" else args.device)
    target = args.country or args.target
    if args.target and locator.model.predicts_countries:
        from geotrainr.explain import ExplainError

        raise ExplainError(f"--target {args.target} is for linear coordinate models; this is a "
                           f"{locator.model.description} (use --country)")
    e = explain(locator, args.image, target=target)
    e.save(out, alpha=args.alpha, credit=args.credit)
    from PIL import Image

    with Image.open(out) as im:
        size = im.size
    print(f"{args.image}: {e.caption}")
    print(f"written to {out} ({size[0]}x{size[1]})")
    return 0

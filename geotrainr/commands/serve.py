"""`geotrainr serve MODEL`: the model behind an HTTP API and a web page, on LitServe.

``POST /predict`` takes a photo (multipart field ``file``, several for views of one place, or the raw
bytes with an ``image/*`` content type) and answers the prediction record ``geotrainr locate --format
json`` writes for it. ``POST /explain`` answers the Grad-CAM overlay as PNG, ``GET /card`` the
model's card, ``GET /health`` ``ok`` once the model is loaded, and ``GET /`` a page to drop photos on
(no internet needed). Bad uploads get ``{"error": "..."}`` with a 4xx code.
"""

from __future__ import annotations

import argparse

from geotrainr.commands import add_device, deprecated
from geotrainr.errors import GeotrainrError


class ServeExtraMissing(GeotrainrError, ImportError):
    """LitServe (the ``serve`` extra) is not installed."""


def build_parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Serve a model over HTTP (LitServe): POST /predict, POST /explain, GET /card, GET /health, "
        "and a web page at / that works offline.",
        epilog="examples:\n"
        "  geotrainr serve runs/country/version_0\n"
        "  curl -F file=@photo.jpg http://127.0.0.1:8000/predict\n"
        "  curl --data-binary @photo.jpg -H 'Content-Type: image/jpeg' 'http://127.0.0.1:8000/predict?name=photo.jpg'\n"
        "  geotrainr serve exported/ --host 0.0.0.0 --workers-per-device 2 --max-batch-size 16",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", metavar="MODEL", help="a .ckpt file, a run folder, a folder written by geotrainr export, or a Hub repository id")
    p.add_argument("--host", default="127.0.0.1", help="127.0.0.1 (this machine only, default), 0.0.0.0 or :: (every interface)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    add_device(p)
    p.add_argument("--workers-per-device", dest="workers_per_device", type=int, default=1,
                   help="inference workers per device, each with its own copy of the model (default 1)")
    deprecated(p, "--workers", "--workers-per-device", store="workers_per_device", type=int)
    p.add_argument("--max-batch-size", type=int, default=8,
                   help="requests the workers answer in one forward pass (dynamic batching; 1: none; default 8)")
    p.add_argument("--batch-timeout", type=float, default=0.01,
                   help="seconds a worker waits to fill a batch (default 0.01)")
    p.add_argument("--max-bytes", type=int, default=20 * 1024 * 1024, help="largest request body in bytes (default 20 MiB)")
    p.add_argument("--max-pixels", type=int, default=50_000_000,
                   help="largest photo in pixels, read from its header before decoding (default 50,000,000)")
    p.add_argument("--max-photos", type=int, default=8, help="photos (views of one place) per request (default 8)")
    p.add_argument("--runtime", choices=("torch", "onnx"), default="torch", help="inference runtime (default torch)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds a request may wait for a worker before a 504 (default 60)")
    p.add_argument("--log-level", default="warning", choices=("debug", "info", "warning", "error"),
                   help="server log level (default warning)")
    return p


def run(args: argparse.Namespace) -> int:
    try:
        from geotrainr.serve import Limits, ServeError, ServeSettings, serve
    except ImportError as e:
        raise ServeExtraMissing(f"serving needs LitServe: pip install 'geotrainr[serve]' ({e})") from None
    if args.workers_per_device < 1:
        raise ServeError("--workers-per-device must be at least 1")
    settings = ServeSettings(
        source=args.model, host=args.host, port=args.port, device=args.device, workers=args.workers_per_device,
        max_batch_size=args.max_batch_size, batch_timeout=args.batch_timeout,
        limits=Limits(max_bytes=args.max_bytes, max_pixels=args.max_pixels, max_photos=args.max_photos),
        runtime=args.runtime, timeout=args.timeout, log_level=args.log_level,
    )
    serve(settings)
    return 0

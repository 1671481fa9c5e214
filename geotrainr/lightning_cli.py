"""LightningCLI for fit/validate/test/predict: class list linked from data to model, metrics saved as JSON."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from geotrainr.errors import GeotrainrError
from geotrainr.files import write_text_atomic
from geotrainr.data.datamodule import GeoDataModule
from geotrainr.tasks.base import GeoTask


class GeoCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.countries", "model.init_args.countries", apply_on="instantiate")
        parser.add_argument("--predictions", type=str | None, default=None,
                            help="predict: output file (.csv or .json); default: predictions.csv in the run's log dir")

    def _log_dir(self) -> Path:
        d = self.trainer.log_dir or self.trainer.default_root_dir
        Path(d).mkdir(parents=True, exist_ok=True)
        return Path(d)

    def _save_metrics(self, stage: str, prefix: str) -> None:
        if not self.trainer.is_global_zero:
            return
        path = write_text_atomic(self._log_dir() / f"metrics-{stage}.json", json.dumps(self._metrics(prefix), indent=2, sort_keys=True))
        print(f"metrics written to {path}")

    def _metrics(self, prefix: str) -> dict[str, float]:
        """The scalar metrics logged under ``prefix`` (e.g. ``val/``)."""
        return {k: float(v) for k, v in self.trainer.callback_metrics.items() if k.startswith(prefix) and torch.as_tensor(v).numel() == 1}

    def after_fit(self) -> None:
        """Print the last validation metrics and where the checkpoints are; close W&B runs."""
        self._finish_wandb()
        if not self.trainer.is_global_zero or self.trainer.fast_dev_run:
            return
        metrics = self._metrics("val/")
        if metrics:
            print("\nvalidation after the last epoch:")
            for k in sorted(metrics):
                print(f"  {k:<22} {metrics[k]:.4f}")
        ckpt = self.trainer.checkpoint_callback
        if ckpt is not None and ckpt.best_model_path and ckpt.best_model_score is not None:
            print(f"best checkpoint: {ckpt.best_model_path} ({ckpt.monitor} = {float(ckpt.best_model_score):.4f})")

    def _finish_wandb(self) -> None:
        """Finish W&B runs so that offline run folders hold their summary (and notebooks can start another)."""
        from lightning.pytorch.loggers import WandbLogger

        for logger in self.trainer.loggers:
            if isinstance(logger, WandbLogger) and self.trainer.is_global_zero:
                logger.experiment.finish()

    def after_validate(self) -> None:
        self._save_metrics("validate", "val/")

    def after_test(self) -> None:
        self._save_metrics("test", "test/")

    def before_predict(self) -> None:
        """Every rank's predictions go through one writer, in the record schema ``locate`` and ``report`` use."""
        from geotrainr.predictions import PredictionWriter

        out = self.config_init[self.subcommand].get("predictions") if self.config_init else None
        self._prediction_writer = PredictionWriter(Path(out) if out else self._log_dir() / "predictions.csv")
        self.trainer.callbacks.append(self._prediction_writer)

    def after_predict(self) -> None:
        writer = getattr(self, "_prediction_writer", None)
        if self.trainer.is_global_zero and writer is not None and writer.written is not None:
            print(f"{writer.written} predictions written to {writer.path}")


def _user_error_in_chain(error: BaseException) -> GeotrainrError | None:
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, GeotrainrError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def _ckpt_path_arg(args: list[str]) -> str | None:
    """The value of ``--ckpt_path`` among the arguments (``--ckpt_path X`` or ``--ckpt_path=X``)."""
    for i, a in enumerate(args):
        if a == "--ckpt_path" and i + 1 < len(args):
            return args[i + 1]
        if a.startswith("--ckpt_path="):
            return a.split("=", 1)[1]
    return None


def check_ckpt_path(path: str | None) -> None:
    """Read a ``--ckpt_path`` file through the checkpoint module before Lightning touches it.

    Lightning re-reads the file's hyper-parameters and would import the class they name; here the
    file must be a valid geotrainr checkpoint whose class is the one registered for its task kind.
    """
    if not path or not Path(path).is_file():
        return  # "last", "best", hub URLs or a missing file: Lightning resolves and reports those
    from geotrainr.checkpoints import CheckpointError, read_checkpoint, task_class

    ckpt = read_checkpoint(path)
    cls = task_class(ckpt["geotrainr"])
    named = (ckpt.get("hyper_parameters") or {}).get("_class_path")
    expected = f"{cls.__module__}.{cls.__qualname__}"
    if named is not None and named not in (expected, f"geotrainr.tasks.{cls.__qualname__}"):
        raise CheckpointError(f"{path}: its hyper-parameters name the class {named!r}, not the {ckpt['geotrainr']['task']} "
                              f"task's {expected}; refused")


def run_lightning(verb: str, args: list[str]) -> int:
    """Run one LightningCLI verb; returns the exit code."""
    check_ckpt_path(_ckpt_path_arg(args))
    torch.set_float32_matmul_precision("high")
    saved_argv = sys.argv
    sys.argv = [saved_argv[0], verb, *args]  # LightningCLI reads sys.argv (and warns when given both)
    try:
        GeoCLI(
            GeoTask,
            GeoDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_kwargs={"overwrite": True},
            auto_configure_optimizers=False,
            parser_kwargs={"prog": "geotrainr", "default_env": False},
        )
    except SystemExit as e:  # jsonargparse: --help, --print_config (0) or a usage error (2)
        return int(e.code or 0) if isinstance(e.code, int) or e.code is None else 2
    except Exception as e:
        user_error = _user_error_in_chain(e)
        if user_error is not None:  # jsonargparse wraps errors raised while instantiating classes
            raise user_error from None
        raise
    finally:
        sys.argv = saved_argv
    return 0


__all__ = ["GeoCLI", "run_lightning"]

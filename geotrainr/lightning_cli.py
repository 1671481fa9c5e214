"""LightningCLI for fit/validate/test/predict: class list linked from data to model, metrics saved as JSON."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
from jsonargparse import Namespace
from lightning.pytorch import Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.utilities import rank_zero_only

from geotrainr.config_files import register_parser_mode, resolve_config_args
from geotrainr.errors import GeotrainrError
from geotrainr.files import write_text_atomic
from geotrainr.data.datamodule import GeoDataModule
from geotrainr.runs import RUN_CHECKPOINTS, claim_run_folder, find_checkpoint, run_version
from geotrainr.tasks.base import GeoTask

#: jsonargparse keeps its loaders per process: registered on import, here and in every spawned DDP process
PARSER_MODE = register_parser_mode()


class SaveConfig(SaveConfigCallback):
    """Lightning's config-saving callback, as a class of this module: a DDP process started by spawn
    unpickles it, and so imports this module and registers :data:`PARSER_MODE` before it saves."""


class GeoCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.countries", "model.init_args.countries", apply_on="instantiate")
        parser.add_argument("--predictions", type=str | None, default=None,
                            help="predict: output file (.csv or .json); default: predictions.csv in the run's log dir")

    def _subcommand_config(self, config: Namespace | None) -> Namespace | None:
        """The part of a parsed (or instantiated) config that belongs to the verb being run."""
        return config[self.subcommand] if config is not None and self.subcommand else config

    def before_instantiate_classes(self) -> None:
        """A W&B logger left at its default ``save_dir`` (".") writes under ``default_root_dir``, as the other runs do."""
        cfg = self._subcommand_config(self.config)
        trainer = cfg.get("trainer") if cfg is not None else None
        if trainer is None:
            return
        loggers = trainer.get("logger")
        for logger in loggers if isinstance(loggers, list) else [loggers]:
            init = getattr(logger, "init_args", None) if hasattr(logger, "class_path") else None
            if init is not None and str(logger.class_path).endswith("WandbLogger") and init.get("save_dir") in (None, "."):
                init["save_dir"] = trainer.get("default_root_dir") or "."

    def instantiate_trainer(self, **kwargs) -> Trainer:
        """Give every run its own folder under ``default_root_dir`` and resolve ``--ckpt_path last|best``.

        Lightning's default logger would file runs under ``<root>/lightning_logs/version_N``; this one files
        them under ``<root>/version_N`` (the checkpoints follow the logger). ``fit --ckpt_path last`` continues
        the run the checkpoint comes from, in the same folder.
        """
        from lightning.fabric.plugins.environments import SLURMEnvironment
        from lightning.pytorch.loggers import TensorBoardLogger

        trainer_cfg = self._get(self.config_init, "trainer", default={}) or {}
        root = Path(trainer_cfg.get("default_root_dir") or os.getcwd())
        version = SLURMEnvironment.job_id()  # Lightning's default: a requeued SLURM job continues its run
        sub = self._subcommand_config(self.config_init)
        ckpt_path = sub.get("ckpt_path") if sub is not None else None
        if ckpt_path in RUN_CHECKPOINTS:
            found = find_checkpoint(root, ckpt_path)
            check_ckpt_path(str(found))  # the same checks as a path given by name
            sub["ckpt_path"] = str(found)
            if self.subcommand == "fit":
                version = run_version(root, found)
                if rank_zero_only.rank == 0:
                    print(f"resuming {found.parent.parent} from {found}")
        if trainer_cfg.get("logger") in (None, True) and "logger" not in kwargs:
            if version is None and rank_zero_only.rank == 0 and not trainer_cfg.get("fast_dev_run"):
                version = claim_run_folder(root)  # other ranks take rank 0's folder (Lightning broadcasts it)
            kwargs["logger"] = TensorBoardLogger(save_dir=root, name="", version=version, default_hp_metric=False)
        return super().instantiate_trainer(**kwargs)

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
        if ckpt is not None and ckpt.dirpath:
            print(f"run folder: {Path(ckpt.dirpath).parent}")
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
    args = resolve_config_args(args)  # --config country: a shipped config
    saved_argv = sys.argv
    sys.argv = [saved_argv[0], verb, *args]  # LightningCLI reads sys.argv (and warns when given both)
    try:
        GeoCLI(
            GeoTask,
            GeoDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_callback=SaveConfig,
            save_config_kwargs={"overwrite": True},
            auto_configure_optimizers=False,
            parser_kwargs={"prog": "geotrainr", "default_env": False, "parser_mode": PARSER_MODE},
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

"""LightningCLI for fit/validate/test/predict: class list linked from data to model, metrics saved as JSON.

A ``ckpt_path`` (``--ckpt_path``, any abbreviation of it, ``ckpt_path:`` in a config, ``last``/``best``)
is read by geotrainr's one loader twice over: LightningCLI's own reading of the file's
hyper-parameters into the config (which would import any class a file names) is replaced by
:meth:`GeoCLI._parse_ckpt_path`, and the Trainer reads the file through :class:`GeoCheckpointIO`.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
from jsonargparse import Namespace
from lightning.pytorch import Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_only

from geotrainr.config_files import register_parser_mode, resolve_config_args
from geotrainr.artifact import read_checkpoint, read_weights
from geotrainr.errors import GeotrainrError
from geotrainr.files import write_text_atomic
from geotrainr.data.datamodule import GeoDataModule
from geotrainr.predictions import PredictionWriter
from geotrainr.loading import class_path, task_arguments, task_class
from geotrainr.runs import RUN_CHECKPOINTS, claim_run_folder, find_checkpoint, run_version
from geotrainr.tasks.base import GeoTask

#: jsonargparse keeps its loaders per process: registered on import, here and in every spawned DDP process
PARSER_MODE = register_parser_mode()


class SaveConfig(SaveConfigCallback):
    """Lightning's config-saving callback, as a class of this module: a DDP process started by spawn
    unpickles it, and so imports this module and registers :data:`PARSER_MODE` before it saves."""


#: the file through which Lightning's ddp_spawn hands the trained weights back from its workers
SPAWN_WEIGHTS = ".temp.ckpt"


class GeoCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint reading (resume, ``validate``/``test``/``predict`` with ``ckpt_path``) through
    :func:`geotrainr.artifact.read_checkpoint`: bounded, ``weights_only``, the record and weights checked.
    Lightning's own ``ddp_spawn`` hand-back of the weights (a plain state dict) is read as bounded and
    ``weights_only`` too (:func:`geotrainr.artifact.read_weights`)."""

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict:
        if Path(path).name == SPAWN_WEIGHTS:
            return read_weights(path)
        return read_checkpoint(path).checkpoint


class GeoCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.countries", "model.init_args.countries", apply_on="instantiate")
        parser.add_argument("--predictions", type=str | None, default=None,
                            help="predict: output file (.csv or .json); default: predictions.csv in the run's log dir")

    def _subcommand_config(self, config: Namespace | None) -> Namespace | None:
        """The part of a parsed (or instantiated) config that belongs to the verb being run."""
        return config[self.subcommand] if config is not None and self.subcommand else config

    def _parse_ckpt_path(self) -> None:
        """The model of a run with ``ckpt_path`` is the checkpoint's, built from what the one loader accepts.

        LightningCLI would parse the file's hyper-parameters into the config as they are, importing the
        class they name and honouring file and Hub names in them. Here the file is read and checked
        first, the class is the registered one of its task kind, and only plain, known arguments pass,
        with the backbone rebuilt offline and nothing that names a file (weights, init_from, geocells).
        ``last``/``best`` become the newest run's checkpoint under ``default_root_dir`` first.
        """
        self._run_checkpoint = None
        sub = self.config.get("subcommand")
        cfg = self.config.get(sub) if sub else None
        ckpt_path = cfg.get("ckpt_path") if cfg is not None else None
        if not ckpt_path:
            return
        if ckpt_path in RUN_CHECKPOINTS:
            trainer = cfg.get("trainer")
            root = Path((trainer.get("default_root_dir") if trainer is not None else None) or os.getcwd())
            ckpt_path = str(find_checkpoint(root, ckpt_path))
            self._run_checkpoint = (root, Path(ckpt_path))
            cfg["ckpt_path"] = ckpt_path
        artifact = read_checkpoint(ckpt_path)
        cls = task_class(artifact)
        args = {k: v for k, v in task_arguments(cls, artifact).items() if k != "countries"}  # linked from the data
        self.config = self.parser.parse_object({sub: {"model": {"class_path": class_path(cls), "init_args": args}}},
                                               self.config)

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
        if getattr(self, "_run_checkpoint", None) is not None and self.subcommand == "fit":  # --ckpt_path last|best: the same run
            found = self._run_checkpoint[1]
            version = run_version(root, found)
            if rank_zero_only.rank == 0:
                print(f"resuming {found.parent.parent} from {found}")
        if trainer_cfg.get("logger") in (None, True) and "logger" not in kwargs:
            if version is None and rank_zero_only.rank == 0 and not trainer_cfg.get("fast_dev_run"):
                version = claim_run_folder(root)  # other ranks take rank 0's folder (Lightning broadcasts it)
            kwargs["logger"] = TensorBoardLogger(save_dir=root, name="", version=version, default_hp_metric=False)
        plugins = kwargs.get("plugins", trainer_cfg.get("plugins")) or []
        kwargs["plugins"] = [*(plugins if isinstance(plugins, list) else [plugins]), GeoCheckpointIO()]
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


def run_lightning(verb: str, args: list[str]) -> int:
    """Run one LightningCLI verb; returns the exit code."""
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

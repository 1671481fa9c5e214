"""Runs keep their results: one folder per run under default_root_dir, --ckpt_path last|best, configs by name."""

import json
import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest
import torch

from geotrainr.cli import main
from geotrainr.config_files import CONFIG_DIR, ConfigNotFoundError, resolve_config, resolve_config_args, shipped_configs
from geotrainr.runs import RunNotFoundError, claim_run_folder, find_checkpoint, run_version

ROOT = Path(__file__).resolve().parents[1]


def tiny(index: Path, *extra: str) -> list[str]:
    """The shipped country config, by name, on the tiny index with a tiny backbone."""
    return [
        "--config", "country",
        f"--data.init_args.index={index}", "--data.init_args.num_workers=0", "--data.init_args.batch_size=8",
        "--model.init_args.backbone=test_efficientnet", "--model.init_args.weights=null", "--model.init_args.image_size=32",
        "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false", "--trainer.max_epochs=1", *extra,
    ]


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_two_fits_share_no_file_and_validate_test_never_touch_them(tiny_index, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["fit", *tiny(tiny_index)]) == 0
    out = capsys.readouterr().out
    first = tmp_path / "runs/country/version_0"
    assert f"best checkpoint: {Path('runs/country/version_0/checkpoints/best.ckpt')}" in out
    assert main(["fit", *tiny(tiny_index, "--seed_everything=1")]) == 0
    second = tmp_path / "runs/country/version_1"
    for run in (first, second):
        assert {"config.yaml", "checkpoints/best.ckpt", "checkpoints/last.ckpt"} <= set(files(run)), run
    assert sorted(p.name for p in (tmp_path / "runs/country").iterdir()) == ["version_0", "version_1"]
    assert not torch.equal(torch.load(first / "checkpoints/last.ckpt", weights_only=False)["state_dict"]["head.1.weight"],
                           torch.load(second / "checkpoints/last.ckpt", weights_only=False)["state_dict"]["head.1.weight"])

    # another default_root_dir: the whole run lands there, nothing under ./runs changes
    before = files(tmp_path / "runs")
    assert main(["fit", *tiny(tiny_index, "--trainer.default_root_dir=elsewhere")]) == 0
    assert (tmp_path / "elsewhere/version_0/checkpoints/best.ckpt").is_file()
    assert files(tmp_path / "runs") == before

    # validate and test: their own run folders with their metrics; the fits' files stay byte for byte
    assert main(["validate", *tiny(tiny_index, f"--ckpt_path={first / 'checkpoints/best.ckpt'}")]) == 0
    assert main(["test", *tiny(tiny_index, "--ckpt_path=best")]) == 0  # the newest run's best: version_1
    assert json.loads((tmp_path / "runs/country/version_2/metrics-validate.json").read_text())["val/acc1"] >= 0
    assert json.loads((tmp_path / "runs/country/version_3/metrics-test.json").read_text())["test/acc1"] >= 0
    after = files(tmp_path / "runs")
    assert {k: v for k, v in after.items() if k.startswith(("country/version_0/", "country/version_1/"))} == before
    assert not any("checkpoints" in k for k in after if k.startswith(("country/version_2/", "country/version_3/")))

    # a run folder as MODEL, no --config: its best checkpoint with the run's own config.yaml (data, trainer)
    assert main(["validate", str(first)]) == 0
    assert json.loads((tmp_path / "runs/country/version_4/metrics-validate.json").read_text()) == \
        json.loads((tmp_path / "runs/country/version_2/metrics-validate.json").read_text())


def test_ckpt_path_last_resumes_the_newest_run_in_its_own_folder(tiny_index, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    # with the metric improving in the resumed epoch (as under the strong policy this test was written with),
    # Lightning saves last.ckpt after validation (epoch 1); without an improvement it saves it at the end of
    # training, counted as epoch 2
    STRONG = "--data.init_args.augment=strong"
    assert main(["fit", *tiny(tiny_index, STRONG)]) == 0
    assert main(["fit", *tiny(tiny_index, STRONG)]) == 0
    assert main(["validate", *tiny(tiny_index, "--ckpt_path=last", STRONG)]) == 0  # version_2: metrics, no checkpoint
    capsys.readouterr()
    newest = tmp_path / "runs/country/version_1/checkpoints/last.ckpt"
    first = torch.load(newest, weights_only=False)
    assert main(["fit", *tiny(tiny_index, "--trainer.max_epochs=2", "--ckpt_path=last", STRONG)]) == 0
    shown = newest.relative_to(tmp_path)
    assert f"resuming {shown.parent.parent} from {shown}" in capsys.readouterr().out
    second = torch.load(newest, weights_only=False)
    assert second["epoch"] == 1 and second["global_step"] == 2 * first["global_step"]
    assert sorted(p.name for p in (tmp_path / "runs/country").iterdir()) == ["version_0", "version_1", "version_2"]
    assert find_checkpoint(tmp_path / "runs/country") == newest and run_version(tmp_path / "runs/country", newest) == 1


def test_ckpt_path_last_without_a_run_is_one_line(tiny_index, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["fit", *tiny(tiny_index, "--ckpt_path=last")]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("geotrainr fit: error:")]
    assert len(err) == 1 and "no run under" in err[0] and "checkpoints/last.ckpt" in err[0]
    with pytest.raises(RunNotFoundError):
        find_checkpoint(tmp_path / "nowhere", "best")
    assert not (tmp_path / "runs").exists()


def test_run_folders_are_claimed_one_by_one(tmp_path):
    root = tmp_path / "runs" / "country"
    assert [claim_run_folder(root) for _ in range(3)] == [0, 1, 2]
    (root / "version_7").mkdir()  # e.g. claimed a moment ago by a run started beside this one
    (root / "notes").mkdir()
    assert claim_run_folder(root) == 8
    assert sorted(p.name for p in root.iterdir()) == ["notes", "version_0", "version_1", "version_2", "version_7", "version_8"]


def test_config_names_resolve_to_the_shipped_files(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    names = shipped_configs()
    assert {"country", "coords", "distance", "geocells", "multitask", "trainer/ddp", "logger/wandb"} == set(names)
    assert Path(resolve_config("country")) == CONFIG_DIR / "country.yaml"
    assert Path(resolve_config("trainer/ddp.yaml")) == CONFIG_DIR / "trainer" / "ddp.yaml"
    assert resolve_config_args(["--config=logger/wandb", "-c", "coords", "--x", "country"]) == [
        f"--config={CONFIG_DIR / 'logger' / 'wandb.yaml'}", "-c", str(CONFIG_DIR / "coords.yaml"), "--x", "country"]
    # a file wins over a name, inline YAML passes through
    (tmp_path / "country").write_text("trainer:\n  max_epochs: 1\n")
    assert resolve_config("country") == "country"
    assert resolve_config("trainer: {max_epochs: 1}") == "trainer: {max_epochs: 1}"
    with pytest.raises(ConfigNotFoundError, match="shipped: coords, country"):
        resolve_config("countyr")
    # the checkout's configs/ is the packaged folder
    assert (ROOT / "configs").resolve() == CONFIG_DIR and (ROOT / "configs" / "country.yaml").is_file()

    assert main(["fit", "--config", "countyr"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("geotrainr fit: error:")]
    assert len(err) == 1 and "countyr" in err[0] and "trainer/ddp" in err[0] and "logger/wandb" in err[0]
    assert main(["fit", "--config", "geocells", "--config", "trainer/ddp", "--print_config"]) == 0
    printed = capsys.readouterr().out
    assert "class_path: geotrainr.tasks.CoordinateRegressor" in printed and "strategy: ddp" in printed


@pytest.mark.slow
def test_wheel_install_runs_a_shipped_config_by_name(tmp_path):
    """pip wheel, a fresh venv (system site packages for torch and friends), fit --config country elsewhere."""
    dist = tmp_path / "dist"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "-w", str(dist), "--no-deps",
                            "--no-build-isolation", "-q"], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-3000:]
    wheel = next(dist.glob("geotrainr-*.whl"))
    env_dir = tmp_path / "venv"
    venv.create(env_dir, system_site_packages=True, with_pip=True)
    python = env_dir / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    install = subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "-q", str(wheel)], env=env,
                             capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-3000:]
    work = tmp_path / "elsewhere"
    work.mkdir()
    where = subprocess.run([str(python), "-c", "import geotrainr; print(geotrainr.__file__)"], cwd=work, env=env,
                           capture_output=True, text=True, timeout=300)
    assert str(env_dir) in where.stdout, where.stdout + where.stderr  # the wheel, not a checkout
    fit = subprocess.run([str(env_dir / "bin" / "geotrainr"), "fit", "--config", "country", "--trainer.fast_dev_run=true",
                          "--data.init_args.num_workers=0"], cwd=work, env=env, capture_output=True, text=True, timeout=1800)
    assert fit.returncode == 0, fit.stderr[-3000:]
    unknown = subprocess.run([str(env_dir / "bin" / "geotrainr"), "fit", "--config", "nope"], cwd=work, env=env,
                             capture_output=True, text=True, timeout=300)
    assert unknown.returncode == 2 and "shipped: coords, country" in unknown.stderr


def test_wandb_run_folder_and_checkpoints_follow_default_root_dir(tiny_index, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    assert main(["fit", *tiny(tiny_index, "--config", "logger/wandb", "--trainer.default_root_dir=wb")]) == 0
    assert list((work / "wb" / "wandb").glob("offline-run-*"))
    ckpt = find_checkpoint(work / "wb", "last")
    assert ckpt.parent.parent.parent == work / "wb" / "geotrainr"  # <root>/<project>/<run id>/checkpoints
    assert sorted(p.name for p in work.iterdir()) == ["wb"]


@pytest.mark.parametrize("config", ["country", "coords", "distance", "geocells", "multitask"])
def test_last_ckpt_is_the_last_epoch_even_when_the_best_does_not_improve(tmp_path, config):
    """The shipped configs' checkpoint callbacks: best.ckpt keeps the best epoch, last.ckpt the end of the last one."""
    import lightning as L
    import yaml
    from lightning.pytorch.callbacks import ModelCheckpoint

    callbacks = [c for c in yaml.safe_load((CONFIG_DIR / f"{config}.yaml").read_text())["trainer"]["callbacks"]
                 if c["class_path"].endswith("ModelCheckpoint")]
    monitored = next(c["init_args"] for c in callbacks if c["init_args"].get("monitor"))
    worse = -1.0 if monitored.get("mode", "min") == "max" else 1.0

    class Worsening(L.LightningModule):  # the monitored metric gets worse every epoch: the best stays epoch 0
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(2, 1)

        def training_step(self, batch, _):
            return self.layer(batch[0]).sum()

        def validation_step(self, batch, _):
            self.log(monitored["monitor"], worse * float(self.current_epoch))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(4, 2)), batch_size=2)
    trainer = L.Trainer(default_root_dir=tmp_path, max_epochs=3, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[ModelCheckpoint(dirpath=tmp_path / "checkpoints", **c["init_args"])
                                                               for c in callbacks])
    trainer.fit(Worsening(), data, data)
    assert torch.load(tmp_path / "checkpoints" / "best.ckpt", weights_only=False)["epoch"] == 0
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)["epoch"] == 2
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]


def test_a_model_without_its_run_config_is_one_line(tiny_index, tmp_path, monkeypatch, capsys):
    """validate/test with a MODEL that has no run folder around it, and no --config: what is missing, in one line."""
    monkeypatch.chdir(tmp_path)
    assert main(["validate", str(tmp_path / "nowhere")]) == 2
    assert capsys.readouterr().err.strip() == f"geotrainr validate: error: {tmp_path / 'nowhere'}: no such checkpoint file or run folder"
    loose = tmp_path / "loose.ckpt"
    loose.write_bytes(b"not read before the config is known")
    assert main(["test", str(loose)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not in a run folder" in err and "--config" in err

import subprocess
import sys

import yaml

from geotrainr import __version__
from geotrainr.cli import COMMANDS, LIGHTNING_VERBS, main


def test_help_lists_every_verb(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for verb in [*LIGHTNING_VERBS, *COMMANDS]:
        assert f"  {verb} " in out


def test_version_and_module_entry():
    r = subprocess.run([sys.executable, "-m", "geotrainr", "--version"], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == f"geotrainr {__version__}"


def test_unknown_verb_exit_2(capsys):
    assert main(["frobnicate"]) == 2
    assert "unknown verb" in capsys.readouterr().err


def test_an_unknown_augmentation_policy_is_one_line(tiny_index, capsys):
    code = main(["fit", "--config", "country", f"--data.init_args.index={tiny_index}",
                 "--data.init_args.augment=flips", "--trainer.fast_dev_run=true"])
    err = capsys.readouterr().err
    assert code == 2 and "augment 'flips' is not a policy" in err and "Traceback" not in err


def test_a_class_list_that_cannot_work_is_one_line(tiny_index, capsys):
    base = ["fit", "--config", "geocells", f"--data.init_args.index={tiny_index}", "--trainer.fast_dev_run=true",
            "--model.init_args.backbone=test_efficientnet", "--model.init_args.weights=null"]
    for countries, says in (("[DE,DE,FR]", "more than once"), ("[XX,DE]", "unknown country code"),
                            ("[SE,CH]", "no training rows in the class list's countries")):
        code = main([*base, f"--data.init_args.countries={countries}"])
        err = capsys.readouterr().err
        assert code == 2 and says in err and "Traceback" not in err, countries


def test_norway_in_a_yaml_class_list_stays_norway(tiny_index, tmp_path, capsys):
    """YAML 1.1 reads an unquoted NO as false; geotrainr's configs follow YAML 1.2 (only true/false are booleans)."""
    extra = tmp_path / "classes.yaml"
    extra.write_text("data:\n  init_args:\n    countries: [DE, NO, FR]\n    hflip: false\nmodel:\n"
                     "  init_args:\n    freeze_backbone: true\n    lr: 1e-3\n")
    assert main(["fit", "--config", "country", "--config", str(extra), f"--data.init_args.index={tiny_index}",
                 "--print_config"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["data"]["init_args"]["countries"] == ["DE", "NO", "FR"]
    assert cfg["data"]["init_args"]["hflip"] is False and cfg["model"]["init_args"]["freeze_backbone"] is True
    assert cfg["model"]["init_args"]["lr"] == 1e-3


def test_an_error_from_a_loader_worker_is_one_line():
    """torch re-raises a worker's error with the worker's traceback in its message: the CLI prints the message alone."""
    from geotrainr.cli import one_line

    wrapped = ("Caught PackError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
               '  File "x.py", line 1, in f\n    raise PackError(...)\n'
               "geotrainr.data.packed.location.PackError: s3://bucket/set/part-00000.parquet: cannot be read (connection reset)\n")
    assert one_line(wrapped) == "s3://bucket/set/part-00000.parquet: cannot be read (connection reset)"
    assert one_line("index.parquet: no such index file or folder") == "index.parquet: no such index file or folder"

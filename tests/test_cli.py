import subprocess
import sys

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

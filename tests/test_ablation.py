"""The ablation's new groups (augmentation, resolution, multi-task) and its pages across evaluation sets."""

import json

import pytest

from geotrainr.ablation import AblationError, Run, plan, transfer, write_results
from geotrainr.cli import main


def test_the_new_groups_plan_their_runs():
    aug = plan(["aug"], ["tf_efficientnet_lite0:lite0-pypi"])
    assert [r.name for r in aug] == ["augment none", "augment geo-safe", "augment strong"]
    assert all(r.config == "country.yaml" for r in aug)
    assert aug[1].overrides[-1] == "--data.init_args.augment=geo-safe"
    res = plan(["res"], ["test_efficientnet:none"], sizes=[48, 64])
    assert [r.overrides[-1] for r in res] == ["--model.init_args.image_size=48", "--model.init_args.image_size=64"]
    mt = plan(["mt"], ["test_efficientnet:none"])
    assert [r.config for r in mt] == ["country.yaml", "coords.yaml", "geocells.yaml", "multitask.yaml"]
    with pytest.raises(AblationError, match="sizes"):
        plan(["res"], ["test_efficientnet:none"], sizes=[2])


def _runs() -> list[Run]:
    out = []
    for index, scores in (("demo", (0.70, 0.75, 0.60)), ("demo-relief", (0.50, 0.55, 0.52))):
        for name, acc in zip(("augment none", "augment geo-safe", "augment strong"), scores):
            out.append(Run("aug", name, "country.yaml", [], index=index, metrics={"acc1": acc, "err_km_median": 100.0}))
    return out


def test_a_recipe_is_adopted_only_when_it_wins_on_every_set(tmp_path):
    runs = _runs()
    lines, winner = transfer(runs, "aug")
    assert winner == "augment geo-safe" and "**75.0 %**" in lines[3] and "**55.0 %**" in lines[3]
    runs[5].metrics["acc1"] = 0.60  # strong now wins on the second set
    assert transfer(runs, "aug")[1] is None
    page = write_results(runs, tmp_path / "r.md", "geotrainr ablate ...", "demo,demo-relief", "val",
                         {"demo": "blue", "demo-relief": "relief"})
    text = page.read_text()
    assert "## Across evaluation sets" in text and "the sets disagree" in text
    assert "## Evaluation set `demo`" in text and "## Evaluation set `demo-relief`" in text
    assert "- data: `demo-relief`, scored on its `val` split (relief)" in text
    assert [r["index"] for r in json.loads((tmp_path / "r.json").read_text())] == ["demo"] * 3 + ["demo-relief"] * 3


def test_ablate_refuses_bad_sets_and_sizes(capsys):
    assert main(["ablate", "--groups", "res", "--sizes", "64,big"]) == 2
    assert main(["ablate", "--index", "demo,demo", "--groups", "aug"]) == 2
    err = capsys.readouterr().err
    assert "--sizes" in err and "name each evaluation set once" in err and "Traceback" not in err

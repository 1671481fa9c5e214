"""Every door a model enters by holds the same promise: nothing a file names is imported, fetched or opened,
bad files are one line (exit 2), and the same checks run whichever way the file comes in."""

from __future__ import annotations

import json
import os
import random
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from conftest import build_tiny_index, error_lines
from geotrainr.artifact import CheckpointError, read_checkpoint
from geotrainr.cli import main
from geotrainr.loading import load_model
from test_locate import photo, tiny_checkpoints

ROOT = Path(__file__).resolve().parents[1]
COUNTRY = str(ROOT / "configs" / "country.yaml")


@pytest.fixture(scope="session")
def ckpts(tmp_path_factory):
    return tiny_checkpoints(tmp_path_factory)


@pytest.fixture(scope="module")
def scene(ckpts, tmp_path_factory):
    """A photo, a small index and an exported copy of the country model."""
    base = tmp_path_factory.mktemp("doors")
    export = base / "export"
    assert main(["export", str(ckpts["country"]), "--out", str(export)]) == 0
    return {"img": photo(base / "p.jpg", 1), "index": build_tiny_index(base / "data", n=12), "export": export}


def _edited(ckpt: Path, out: Path, edit) -> Path:
    data = torch.load(ckpt, map_location="cpu", weights_only=True)
    edit(data)
    torch.save(data, out)
    return out


def _one_line_refusal(capsys, argv, *needles) -> str:
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 2, (argv[0], code, err)
    assert "Traceback" not in err and len(error_lines(err)) == 1, (argv[0], err)
    assert "weights_only" not in err  # never the advice to load a file unsafely
    for needle in needles:
        assert needle in err, (argv[0], needle, err)
    return err


def _ckpt_doors(path: Path, scene: dict, tmp_path: Path) -> list[list]:
    """Every way a checkpoint file gets in from the command line."""
    idx = f"--data.init_args.index={scene['index']}"
    quiet = ["--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={tmp_path / 'runs'}"]
    config = tmp_path / "with-ckpt.yaml"
    config.write_text(f"ckpt_path: {path}\n")
    return [
        ["locate", path, scene["img"]],
        ["explain", path, scene["img"], "--out", tmp_path / "h.png"],
        ["report", path, "--index", scene["index"], "--out", tmp_path / "r"],
        ["export", path, "--out", tmp_path / "x"],
        ["predict", path, scene["img"], "-o", tmp_path / "p.csv"],
        ["predict", "--ckpt_path", path, scene["img"], "--predictions", tmp_path / "p.csv"],  # the old spelling
        ["validate", "--config", COUNTRY, idx, "--ckpt_path", path, *quiet],
        ["test", "--config", COUNTRY, idx, "--ckpt", path, *quiet],  # an abbreviation of --ckpt_path
        ["validate", "--config", COUNTRY, "--config", config, idx, *quiet],  # ckpt_path: in a config file
        ["fit", "--config", COUNTRY, idx, f"--ckpt_path={path}", "--trainer.max_epochs=1", *quiet],  # resume
        ["fit", "--config", COUNTRY, idx, f"--model.init_args.init_from={path}", "--model.init_args.backbone=test_efficientnet",
         "--model.init_args.weights=null", "--trainer.fast_dev_run=true", *quiet],
    ]


def test_a_foreign_class_path_is_never_imported_at_any_door(ckpts, scene, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bad = _edited(ckpts["country"], tmp_path / "this.ckpt", lambda d: d["hyper_parameters"].update(_class_path="this.Zen"))
    sys.modules.pop("this", None)
    for argv in _ckpt_doors(bad, scene, tmp_path):
        _one_line_refusal(capsys, argv, "this.Zen")
        assert "this" not in sys.modules, argv[0]  # importing it would print the Zen of Python
    assert not (tmp_path / "x").exists() and not (tmp_path / "r").exists() and not (tmp_path / "p.csv").exists()


def test_names_in_a_file_are_never_opened_or_fetched(ckpts, scene, tmp_path, capsys, monkeypatch):
    """weights, init_from and geocells paths and Hub backbones in a file are ignored; the recorded architecture rebuilds it."""
    monkeypatch.chdir(tmp_path)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # opening it would block the test

    def hostile(d):
        d["hyper_parameters"].update(weights=str(fifo), init_from=str(fifo), geocells=str(fifo), pretrained=True)
        d["hyper_parameters"]["backbone"] = d["geotrainr"]["backbone"] = "hf-hub:attacker/x"

    def no_network(*a, **k):
        raise AssertionError("a file made geotrainr contact the Hub")

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_network)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_network)
    bad = _edited(ckpts["country"], tmp_path / "names.ckpt", hostile)
    model = load_model(bad)
    assert model.hparams.weights is None and model.hparams.init_from is None and model.hparams.pretrained is False
    assert main(["locate", str(bad), str(scene["img"])]) == 0
    assert main(["validate", "--config", COUNTRY, f"--data.init_args.index={scene['index']}", "--ckpt_path", str(bad),
                 "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={tmp_path / 'runs'}"]) == 0
    capsys.readouterr()
    unknown = _edited(bad, tmp_path / "hub-only.ckpt", lambda d: d["geotrainr"].update(architecture=None))
    for argv in (["locate", unknown, scene["img"]], ["validate", "--config", COUNTRY, f"--data.init_args.index={scene['index']}",
                                                     "--ckpt_path", unknown]):
        _one_line_refusal(capsys, argv, "never fetches")


def test_special_files_non_finite_weights_and_huge_records_are_refused(ckpts, scene, tmp_path, capsys):
    export = tmp_path / "export"
    export.mkdir()
    (export / "model.safetensors").write_bytes((scene["export"] / "model.safetensors").read_bytes())
    os.mkfifo(export / "config.json")  # would block a reader that opens it
    _one_line_refusal(capsys, ["locate", export, scene["img"]], "not a regular file")
    (export / "config.json").unlink()
    (export / "config.json").symlink_to("/dev/zero")  # would grow a reader's memory without end
    _one_line_refusal(capsys, ["locate", export, scene["img"]], "not a regular file")

    def nan(d):
        d["state_dict"]["head.1.weight"][0, 0] = float("nan")

    _one_line_refusal(capsys, ["locate", _edited(ckpts["country"], tmp_path / "nan.ckpt", nan), scene["img"]], "NaN")

    def inf(d):
        d["state_dict"]["head.1.bias"][0] = float("inf")

    _one_line_refusal(capsys, ["report", _edited(ckpts["country"], tmp_path / "inf.ckpt", inf), "--index", scene["index"]], "infinite")
    huge = _edited(ckpts["distance"], tmp_path / "huge.ckpt", lambda d: d["hyper_parameters"].update(embed_dim=200_000))
    _one_line_refusal(capsys, ["locate", huge, scene["img"]], "do not fit the model its record describes")


def test_every_class_list_a_file_carries_must_agree(ckpts, scene, tmp_path, capsys):
    def swap(codes: list) -> list:
        return [codes[1], codes[0], *codes[2:]]

    in_record = _edited(ckpts["country"], tmp_path / "swapped.ckpt",
                        lambda d: d["geotrainr"].update(countries=swap(d["geotrainr"]["countries"])))
    _one_line_refusal(capsys, ["locate", in_record, scene["img"]], "another order")
    config = json.loads((scene["export"] / "config.json").read_text())
    config["countries"] = swap(config["countries"])
    export = tmp_path / "export"
    export.mkdir()
    (export / "config.json").write_text(json.dumps(config))
    (export / "model.safetensors").write_bytes((scene["export"] / "model.safetensors").read_bytes())
    _one_line_refusal(capsys, ["locate", export, scene["img"]], "another order")


def test_pickle_payloads_at_the_lightning_doors_are_one_line(ckpts, scene, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "pwned"

    class RunsCode:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = _edited(ckpts["country"], tmp_path / "evil.ckpt", lambda d: d.update(callbacks={"x": RunsCode()}))
    for argv in _ckpt_doors(evil, scene, tmp_path):
        _one_line_refusal(capsys, argv, "refused")
    assert not marker.exists()


def _mutants(data: bytes, n: int, seed: int) -> list[tuple[str, bytes]]:
    """Seeded damage to a file: flipped bytes (often in the pickled record), cuts, spliced chunks."""
    rng = random.Random(seed)
    start = data.find(b"data.pkl")
    pkl = (start, min(len(data), start + 4096)) if start >= 0 else (0, len(data))
    out = []
    for i in range(n):
        b = bytearray(data)
        how = i % 4
        if how == 0:  # bytes flipped anywhere
            for _ in range(rng.randint(1, 16)):
                b[rng.randrange(len(b))] = rng.randrange(256)
        elif how == 1:  # bytes flipped in the record
            for _ in range(rng.randint(1, 8)):
                b[rng.randrange(*pkl)] = rng.randrange(256)
        elif how == 2:  # cut short
            b = b[: rng.randrange(len(b))]
        else:  # a chunk copied over another place
            a, c, k = rng.randrange(len(b)), rng.randrange(len(b)), rng.randint(1, 64)
            b[c:c + k] = b[a:a + k]
        out.append((["flip", "record", "cut", "splice"][how], bytes(b)))
    return out


def test_fuzzed_checkpoints_and_exports_never_end_in_a_traceback(ckpts, scene, tmp_path, capsys):
    """200 seeded mutations of a real checkpoint and 60 of an export: each loads and locates, or is one line (exit 2)."""
    outcomes = {0: 0, 2: 0}
    data = Path(ckpts["country"]).read_bytes()
    for k, (how, mutant) in enumerate(_mutants(data, 200, seed=0)):
        path = tmp_path / f"m{k}.ckpt"
        path.write_bytes(mutant)
        code = main(["locate", str(path), str(scene["img"]), "--format", "json"])
        captured = capsys.readouterr()
        assert code in outcomes, (k, how, code, captured.err)
        assert "Traceback" not in captured.err and "Traceback" not in captured.out, (k, how, captured.err)
        if code == 2:
            assert len(captured.err.strip().splitlines()) == 1, (k, how, captured.err)
        outcomes[code] += 1
        path.unlink()
    for name in ("config.json", "model.safetensors"):
        original = (scene["export"] / name).read_bytes()
        for k, (how, mutant) in enumerate(_mutants(original, 30, seed=1)):
            folder = tmp_path / f"e{name}{k}"
            folder.mkdir()
            for f in scene["export"].iterdir():
                (folder / f.name).write_bytes(mutant if f.name == name else f.read_bytes())
            code = main(["locate", str(folder), str(scene["img"])])
            err = capsys.readouterr().err
            assert code in outcomes and "Traceback" not in err, (name, k, how, err)
            outcomes[code] += 1
    assert outcomes[2] > 100  # most damage is caught, the rest loads as a working model


def test_the_task_registry_is_the_one_the_record_schema_names():
    from geotrainr.artifact import TASK_CLASSES
    from geotrainr.loading import class_path
    from geotrainr.tasks import TASKS

    assert {kind: class_path(cls) for kind, cls in TASKS.items()} == TASK_CLASSES


def test_the_trainer_reads_checkpoints_through_the_one_loader(ckpts, scene, tmp_path, monkeypatch):
    """validate with --ckpt_path calls geotrainr's reader, not torch.load behind it."""
    import geotrainr.lightning_cli as lcli

    calls = []
    real = lcli.read_checkpoint

    def counting(path):
        calls.append(str(path))
        return real(path)

    monkeypatch.setattr(lcli, "read_checkpoint", counting)
    monkeypatch.chdir(tmp_path)
    assert main(["validate", "--config", COUNTRY, f"--data.init_args.index={scene['index']}", "--ckpt_path",
                 str(ckpts["country"]), "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={tmp_path}"]) == 0
    assert calls == [str(ckpts["country"])] * 2  # the CLI's model arguments, then the Trainer's restore

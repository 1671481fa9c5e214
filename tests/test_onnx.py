"""ONNX export and the onnxruntime runtime: the same answers as torch, and damaged files refused in one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

import onnx  # noqa: E402

import geotrainr  # noqa: E402
from geotrainr.cli import main  # noqa: E402
from geotrainr.locator import Locator  # noqa: E402
from geotrainr.onnx_runtime import META, OnnxError  # noqa: E402
from geotrainr.report import evaluate  # noqa: E402
from test_locate import photo, tiny_checkpoints  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
REAL_PHOTOS = ROOT.parent / "shared" / "realphotos" / "osv5m"


@pytest.fixture(scope="session")
def ckpts(tmp_path_factory):
    return tiny_checkpoints(tmp_path_factory)


@pytest.fixture(scope="session")
def onnx_export(ckpts, tmp_path_factory) -> Path:
    """The tiny country model exported with --format onnx, once per session (the export takes seconds)."""
    out = tmp_path_factory.mktemp("onnx") / "country"
    assert main(["export", str(ckpts["country"]), "--out", str(out), "--format", "onnx"]) == 0
    return out


@pytest.fixture(scope="session")
def real_photos() -> list[Path]:
    files = sorted((REAL_PHOTOS / "images").glob("*.jpg"))
    if not files:
        pytest.skip(f"the real-photo set is not here ({REAL_PHOTOS})")
    return files


def _agree(torch_guesses, onnx_guesses) -> None:
    """Same top-1 on every photo, probabilities within 1e-4, the same guessed point."""
    assert len(torch_guesses) == len(onnx_guesses)
    for a, b in zip(torch_guesses, onnx_guesses):
        assert a.ok and b.ok and a.image == b.image
        assert a.country == b.country
        if a.probs is not None:
            np.testing.assert_allclose(a.probs, b.probs, atol=1e-4, rtol=0)
        np.testing.assert_allclose([a.lat, a.lon], [b.lat, b.lon], atol=1e-3)


def test_export_writes_onnx_beside_the_safetensors(onnx_export):
    assert sorted(p.name for p in onnx_export.iterdir()) == ["README.md", "config.json", "model.onnx", "model.safetensors"]
    config = json.loads((onnx_export / "config.json").read_text())
    model = onnx.load(str(onnx_export / "model.onnx"))
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta[META["preprocessing"]]) == config["preprocessing"]
    assert json.loads(meta[META["countries"]]) == config["countries"]
    batch = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch.dim_param and not batch.HasField("dim_value")  # a dynamic batch axis
    assert "--runtime onnx" in (onnx_export / "README.md").read_text()


def test_both_runtimes_agree_on_every_real_photo(onnx_export, real_photos):
    on_torch = Locator.load(onnx_export, device="cpu").locate(real_photos, batch_size=16)
    loc = geotrainr.load(onnx_export, runtime="onnx")
    assert loc.runtime == "onnx" and loc.device.type == "cpu" and "onnxruntime" in repr(loc)
    _agree(on_torch, loc.locate(real_photos, batch_size=16))
    # batch size 1 and a last, partial batch go through the dynamic batch axis
    _agree(on_torch[:3], loc.locate(real_photos[:3], batch_size=1))


def test_locate_and_report_take_runtime_onnx(onnx_export, real_photos, tiny_index, capsys):
    photos = real_photos[:8]
    answers = {}
    for runtime in ("torch", "onnx"):
        assert main(["locate", str(onnx_export), *map(str, photos), "--format", "json", "--runtime", runtime]) == 0
        answers[runtime] = json.loads(capsys.readouterr().out)
    assert [r["country"] for r in answers["torch"]] == [r["country"] for r in answers["onnx"]]
    for a, b in zip(answers["torch"], answers["onnx"]):
        assert [t["country"] for t in a["top_k"]] == [t["country"] for t in b["top_k"]]
        assert np.allclose([t["probability"] for t in a["top_k"]], [t["probability"] for t in b["top_k"]], atol=1e-4)
    scored = {rt: evaluate(onnx_export, index=tiny_index, split="val", num_workers=0, device="cpu", runtime=rt)
              for rt in ("torch", "onnx")}
    assert scored["onnx"].metrics == pytest.approx(scored["torch"].metrics, abs=1e-4)
    assert main(["report", str(onnx_export), "--index", str(tiny_index), "--runtime", "onnx", "--workers", "0",
                 "--out", str(tiny_index.parent / "report")]) == 0
    assert "country model" in capsys.readouterr().out


def _one_line_error(capsys, args: list[str]) -> str:
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("geotrainr locate: error: ") and "Traceback" not in err
    return err


def test_bad_inputs_are_one_line_exit_2(ckpts, onnx_export, tmp_path, capsys):
    pic = str(photo(tmp_path / "p.jpg", 1))
    # a checkpoint (or a run folder) with --runtime onnx: say how to get a model.onnx
    for source in (ckpts["country"], ckpts["country"].parents[1]):
        err = _one_line_error(capsys, ["locate", str(source), pic, "--runtime", "onnx"])
        assert "geotrainr export MODEL --out DIR --format onnx" in err
    plain = tmp_path / "plain"
    shutil.copytree(onnx_export, plain)
    (plain / "model.onnx").unlink()
    assert "no model.onnx" in _one_line_error(capsys, ["locate", str(plain), pic, "--runtime", "onnx"])

    def damaged(name: str, edit) -> Path:
        folder = tmp_path / name
        shutil.copytree(onnx_export, folder)
        edit(folder)
        return folder

    def truncate(folder: Path) -> None:
        data = (folder / "model.onnx").read_bytes()
        (folder / "model.onnx").write_bytes(data[: len(data) // 3])

    def set_meta(key: str, value: str):
        def edit(folder: Path) -> None:
            model = onnx.load(str(folder / "model.onnx"))
            for p in model.metadata_props:
                if p.key == META[key]:
                    p.value = value
            onnx.save(model, str(folder / "model.onnx"))
        return edit

    def drop_meta(folder: Path) -> None:  # an ONNX model from elsewhere
        model = onnx.load(str(folder / "model.onnx"))
        del model.metadata_props[:]
        onnx.save(model, str(folder / "model.onnx"))

    config = json.loads((onnx_export / "config.json").read_text())
    other_size = json.dumps({**config["preprocessing"], "image_size": 96}, sort_keys=True)
    cases = [
        ("truncated", truncate, "not a readable ONNX model"),
        ("garbage", lambda f: (f / "model.onnx").write_bytes(b"\x00garbage" * 100), "not a readable ONNX model"),
        ("directory", lambda f: ((f / "model.onnx").unlink(), (f / "model.onnx").mkdir()), "not a regular file"),
        ("classes", set_meta("countries", json.dumps(list(reversed(config["countries"])))), "its countries"),
        ("size", set_meta("preprocessing", other_size), "its preprocessing"),
        ("weights", set_meta("weights", "0" * 64), "other weights than model.safetensors"),
        ("foreign", drop_meta, "not exported by geotrainr"),
    ]
    for name, edit, message in cases:
        err = _one_line_error(capsys, ["locate", str(damaged(name, edit)), pic, "--runtime", "onnx"])
        assert message in err, (name, err)
    with pytest.raises(OnnxError, match="differs from the weights in model.safetensors"):
        _swap_head_in_graph(damaged("swapped", lambda f: None))


def _swap_head_in_graph(folder: Path):
    """A graph whose own head weights were changed (metadata intact): the blank-image check notices."""
    model = onnx.load(str(folder / "model.onnx"))
    from onnx import numpy_helper

    for i, t in enumerate(model.graph.initializer):
        arr = numpy_helper.to_array(t)
        if arr.ndim == 2:  # the linear head's weight
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(arr + 1.0, t.name))
    onnx.save(model, str(folder / "model.onnx"))
    return geotrainr.load(folder, runtime="onnx")


def test_serve_runtime_onnx_answers_what_locate_runtime_onnx_writes(onnx_export, ckpts, real_photos, tmp_path, capsys):
    pytest.importorskip("requests")
    pytest.importorskip("litserve")
    from test_serve import locate_json, post, start_server, stop

    pic = real_photos[0]
    (want,) = locate_json(onnx_export, [pic.name], pic.parent, capsys, "--runtime", "onnx")
    proc, url = start_server(onnx_export, "--runtime", "onnx", cwd=tmp_path)
    try:
        got = post(url, [(pic.name, pic.read_bytes())])
        assert got.status_code == 200, got.text
        assert got.json() == want
        # the record is rounded alike in both runtimes: that onnxruntime answered shows in the worker's libraries
        if Path("/proc/self/maps").is_file():
            assert any("onnxruntime" in maps for maps in _descendant_maps(proc.pid)), "no inference worker runs onnxruntime"
    finally:
        assert stop(proc) == 0, proc.log.read_text()
    # a checkpoint has no model.onnx: refused before the server starts, in one line
    assert main(["serve", str(ckpts["country"]), "--runtime", "onnx"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("geotrainr serve: error: ") and "Traceback" not in err
    assert "geotrainr export MODEL --out DIR --format onnx" in err


def _descendant_maps(pid: int) -> list[str]:
    """/proc/PID/maps of the processes started under ``pid`` (the server's spawned workers), not of ``pid`` itself."""
    parents = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                parents[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    tree, grew = {pid}, True
    while grew:
        new = {c for c, pp in parents.items() if pp in tree and c not in tree}
        tree |= new
        grew = bool(new)
    out = []
    for child in tree - {pid}:
        try:
            out.append(Path(f"/proc/{child}/maps").read_text())
        except OSError:
            continue
    return out


def test_runtime_choices(onnx_export):
    with pytest.raises(geotrainr.GeotrainrError, match="unknown runtime"):
        geotrainr.load(onnx_export, runtime="tensorrt")
    with pytest.raises(OnnxError, match="a country model, but a coords model is needed"):
        Locator.load(onnx_export, kind="coords", runtime="onnx")


# --- the other task kinds (an export takes about 8 s on 2 idle cores, each) --------------------------------------------


def _multitask_checkpoint(path: Path) -> Path:
    from geotrainr.geocells import Geocells
    from geotrainr.tasks.multitask import MultiTaskGeolocator

    pts = np.array([[52.5, 13.4], [48.1, 11.6], [50.1, 8.7], [53.6, 10.0], [48.9, 2.35], [43.3, 5.4]])
    model = MultiTaskGeolocator(countries=["DE", "FR"], backbone="test_efficientnet", weights=None, image_size=48)
    model.set_geocells(Geocells.build(pts, ["DE"] * 4 + ["FR"] * 2, min_per_cell=1, max_per_cell=2))
    torch.manual_seed(0)
    torch.nn.init.normal_(model.offset_head.weight, std=0.05)  # offsets that move the guess
    ckpt = {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams), "pytorch-lightning_version": L.__version__}
    model.on_save_checkpoint(ckpt)
    torch.save(ckpt, path)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["coords", "distance", "multitask"])
def test_other_task_kinds_agree(kind, ckpts, tmp_path, real_photos):
    ckpt = _multitask_checkpoint(tmp_path / "mt.ckpt") if kind == "multitask" else ckpts[kind]
    out = tmp_path / kind
    assert main(["export", str(ckpt), "--out", str(out), "--format", "onnx"]) == 0
    on_torch = Locator.load(out, device="cpu").locate(real_photos[:24])
    on_onnx = Locator.load(out, runtime="onnx").locate(real_photos[:24])
    _agree(on_torch, on_onnx)
    if kind == "multitask":  # several views decode through the task's own code in both runtimes
        assert on_onnx[0].cell_probs is not None and on_onnx[0].cell_offsets is not None

"""The multi-task model (country + geocell + offset heads): its guess, its training, and every verb."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from geotrainr.cli import main
from geotrainr.geo import great_circle_error_km
from geotrainr.geocells import Geocells
from geotrainr.artifact import read_checkpoint
from geotrainr.loading import load_model
from geotrainr.tasks import TASKS, MultiTaskGeolocator
from geotrainr.tasks.base import TaskConfigError
from test_tasks import newest, tiny_args

ROOT = Path(__file__).resolve().parents[1]
MULTI = str(ROOT / "configs" / "multitask.yaml")


def _cells() -> Geocells:
    """Two German cells and one French cell."""
    pts = np.array([[52.5, 13.4], [52.6, 13.5], [48.1, 11.6], [48.2, 11.5], [48.9, 2.3], [48.8, 2.4]])
    return Geocells.build(pts, ["DE", "DE", "DE", "DE", "FR", "FR"], min_per_cell=1, max_per_cell=2)


def _model(**kw) -> MultiTaskGeolocator:
    m = MultiTaskGeolocator(countries=["DE", "FR"], backbone="test_efficientnet", weights=None, image_size=32, **kw)
    m.set_geocells(_cells())
    return m.eval()


def test_registered_and_refuses_what_cannot_work():
    assert TASKS["multitask"] is MultiTaskGeolocator
    with pytest.raises(TaskConfigError, match="geocells"):
        MultiTaskGeolocator(countries=["DE", "FR"], backbone="test_efficientnet", weights=None, head="linear")
    with pytest.raises(TaskConfigError, match="cell_weight"):
        MultiTaskGeolocator(countries=["DE", "FR"], backbone="test_efficientnet", weights=None, cell_weight=0)


def test_the_guess_is_country_then_cell_then_offset_inside_the_cell():
    m = _model()
    k = len(m.geocells)
    de_cells = [i for i, c in enumerate(m.geocells.countries) if c == "DE"]
    fr_cell = m.geocells.countries.index("FR")
    # the cell head prefers the French cell, but the country head is sure of Germany: Germany wins,
    # and the guess is the best German cell, moved by its offset and kept inside the cell's box
    cell_logits = torch.full((1, k), 0.0)
    cell_logits[0, fr_cell] = 2.0
    cell_logits[0, de_cells[1]] = 1.0
    offsets = torch.zeros(1, 2 * k)
    offsets[0, 2 * de_cells[1]: 2 * de_cells[1] + 2] = torch.tensor([0.04, 50.0])  # far too far east: clipped
    out = {"cell_logits": cell_logits, "offsets": offsets, "country_logits": torch.tensor([[6.0, -6.0]])}
    g = m.guess(out)
    assert m.countries[int(g["probs"].argmax())] == "DE"
    box = m.geocells.bounds[de_cells[1]]
    centroid = m.geocells.centroids[de_cells[1]]
    assert g["latlon"][0, 0].item() == pytest.approx(min(centroid[0] + 0.04, box[1]))
    assert g["latlon"][0, 1].item() == pytest.approx(box[3])
    torch.testing.assert_close(g["probs"].sum(1), torch.ones(1, dtype=g["probs"].dtype))
    # the cell distribution sums to the country probabilities, so decoding it (several views) agrees
    per_country = torch.zeros(1, 2, dtype=g["cell_probs"].dtype).index_add_(1, m.cell_country, g["cell_probs"])
    torch.testing.assert_close(per_country, g["probs"])
    latlon, probs = m.decode_cells(g["cell_probs"])
    assert torch.equal(latlon[0], m.cell_centroids[de_cells[1]]) and int(probs.argmax()) == 0
    # ... and decoding it with the per-cell offsets gives the single-image guess itself
    assert torch.equal(m.decode_cells(g["cell_probs"], g["cell_offsets"])[0], g["latlon"])
    # without the offset the guess is the centroid
    assert torch.equal(_model(offset=False).guess(out)["latlon"][0], m.cell_centroids[de_cells[1]])


def test_a_country_without_training_cells_is_never_the_guess():
    m = MultiTaskGeolocator(countries=["DE", "FR", "NO"], backbone="test_efficientnet", weights=None, image_size=32)
    m.set_geocells(_cells())  # no Norwegian rows in training: no Norwegian cells
    k = len(m.geocells)
    out = {"cell_logits": torch.zeros(1, k), "offsets": torch.zeros(1, 2 * k), "country_logits": torch.tensor([[0.0, 1.0, 9.0]])}
    g = m.eval().guess(out)
    assert m.countries[int(g["probs"].argmax())] == "FR" and float(g["probs"][0, 2]) == 0.0
    assert m.geocells.countries[int(g["cell_probs"].argmax())] == "FR"


def test_the_cell_distribution_decodes_to_the_guess_even_when_cells_underflow():
    m = _model()
    k = len(m.geocells)
    fr = m.geocells.countries.index("FR")
    cell_logits = torch.zeros(1, k)
    cell_logits[0, fr] = -200.0  # exp underflows in a softmax over all cells
    g = m.guess({"cell_logits": cell_logits, "offsets": torch.zeros(1, 2 * k), "country_logits": torch.tensor([[-5.0, 5.0]])})
    assert m.countries[int(g["probs"].argmax())] == "FR" and float(g["cell_probs"][0, fr]) > 0.99
    latlon, probs = m.decode_cells(g["cell_probs"], g["cell_offsets"])
    assert torch.equal(latlon, g["latlon"]) and int(probs.argmax()) == int(g["probs"].argmax())


def test_several_views_keep_the_offset():
    """Views of one place: their cell probabilities and per-cell offsets are averaged, then decoded as one view."""
    from geotrainr.multiview import group
    from geotrainr.predictions import make_guesses

    m = _model()
    k = len(m.geocells)
    de = m.geocells.countries.index("DE")
    outs = []
    for east in (0.02, 0.04):
        offsets = torch.zeros(1, 2 * k)
        offsets[0, 2 * de: 2 * de + 2] = torch.tensor([0.0, east])
        cell_logits = torch.zeros(1, k)
        cell_logits[0, de] = 3.0
        outs.append(m.guess({"cell_logits": cell_logits, "offsets": offsets, "country_logits": torch.tensor([[5.0, 0.0]])}))

    def decoder(cell_probs, cell_offsets=None):
        ll, p = m.decode_cells(torch.from_numpy(cell_probs)[None], None if cell_offsets is None else torch.from_numpy(cell_offsets)[None])
        return ll[0].numpy(), p[0].numpy()

    views = make_guesses(["a_0.jpg", "a_90.jpg"], np.stack([o["latlon"][0].numpy() for o in outs]),
                         np.stack([o["probs"][0].numpy() for o in outs]), {}, m.countries, 2)
    for v, o in zip(views, outs):
        v.cell_probs, v.cell_offsets, v.cell_decoder = o["cell_probs"][0].numpy(), o["cell_offsets"][0].numpy(), decoder
    (one,) = group(views, ["a", "a"])
    centroid = m.geocells.centroids[de]
    box = m.geocells.bounds[de]
    assert one.lon == pytest.approx(min(centroid[1] + 0.03, box[3]))  # the mean offset, not the bare centroid
    assert one.lon != pytest.approx(centroid[1]) and one.country == "DE"


def test_every_head_learns_from_the_weighted_loss():
    torch.manual_seed(0)
    m = _model()
    m.train()
    batch = {"image": torch.randn(4, 3, 32, 32), "country": torch.tensor([0, 0, 1, -1]),
             "latlon": torch.tensor([[52.5, 13.4], [48.1, 11.6], [48.9, 2.3], [48.9, 2.35]], dtype=torch.float64)}
    loss = m.shared_step(batch, "train")
    loss.backward()
    for head in (m.head, m.country_head, m.offset_head):
        assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0
    quiet = MultiTaskGeolocator(countries=["DE", "FR"], backbone="test_efficientnet", weights=None, image_size=32,
                                country_weight=0.0, offset_weight=0.0)
    quiet.set_geocells(_cells())
    assert quiet.country_head is None and quiet.offset_head is None  # no loss, no head
    quiet.shared_step(batch, "train").backward()
    assert quiet.head.weight.grad is not None
    with torch.no_grad():
        g = quiet.eval().predict_latlon(batch["image"])
    cells = (g["cell_probs"]).argmax(-1)
    assert torch.equal(g["latlon"], quiet.cell_centroids[cells])  # the centroid, from the cells alone


def test_multitask_config_through_every_verb(tiny_index, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = [*tiny_args(tiny_index, "country"), "--config", MULTI, f"--data.init_args.index={tiny_index}",
            "--model.init_args.backbone=test_efficientnet", "--model.init_args.weights=null",
            "--model.init_args.image_size=32", "--data.init_args.num_workers=0", "--data.init_args.batch_size=8",
            "--model.init_args.min_per_cell=2", "--model.init_args.max_per_cell=4", "--trainer.max_epochs=2",
            "--trainer.enable_progress_bar=false"]
    assert main(["fit", *args]) == 0
    ckpt = newest(tmp_path / "runs" / "multitask", "last.ckpt")
    record = read_checkpoint(ckpt).checkpoint["geotrainr"]
    assert record["task"] == "multitask" and record["head"] == "geocells" and record["geocells"]["countries"]
    model = load_model(ckpt)
    assert model.country_head is not None and model.offset_head.out_features == 2 * len(model.geocells)
    hp = read_checkpoint(ckpt).checkpoint["hyper_parameters"]
    assert hp["head_warmup_epochs"] == 0.0 and hp["warmup_epochs"] == 0.5
    assert hp["backbone_lr_mult"] == 0.5 and not hp["freeze_backbone"]

    images = sorted(str(p) for p in (tiny_index.parent / "images").glob("*.jpg"))[:4]
    assert main(["locate", str(ckpt), *images, "--format", "json", "-o", "located.json", "--workers", "0"]) == 0
    located = json.loads(Path("located.json").read_text())
    assert len(located) == 4 and all(r["top_k"] and r["lat"] is not None for r in located)
    assert main(["explain", str(ckpt), images[0], "--out", "heat.png"]) == 0 and Path("heat.png").stat().st_size > 0
    assert main(["report", str(ckpt), "--index", str(tiny_index), "--out", "report", "--workers", "0"]) == 0
    metrics = json.loads(Path("report/metrics.json").read_text())["metrics"]
    assert {"acc1", "acc5", "err_km_median", "geoscore"} <= set(metrics)
    assert main(["export", str(ckpt), "--out", "exported"]) == 0
    assert main(["locate", "exported", *images, "--format", "json", "-o", "again.json", "--workers", "0"]) == 0
    again = json.loads(Path("again.json").read_text())
    assert [(r["lat"], r["lon"]) for r in again] == [(r["lat"], r["lon"]) for r in located]
    assert main(["predict", "--ckpt_path", str(ckpt), *images, "--predictions", "pred.json"]) == 0
    assert len(json.loads(Path("pred.json").read_text())) == 4
    capsys.readouterr()


def test_multitask_trains_on_a_single_country(tmp_path, monkeypatch, capsys):
    """One country: no country head (it could only say yes), country accuracy left out, cells and offsets train."""
    from conftest import single_country_index

    monkeypatch.chdir(tmp_path)
    index = single_country_index(tmp_path / "data")
    args = [*tiny_args(index, "country"), "--config", MULTI, f"--data.init_args.index={index}",
            "--model.init_args.backbone=test_efficientnet", "--model.init_args.weights=null",
            "--model.init_args.image_size=32", "--data.init_args.num_workers=0", "--data.init_args.batch_size=10",
            "--model.init_args.min_per_cell=2", "--model.init_args.max_per_cell=5", "--trainer.max_epochs=1"]
    assert main(["fit", *args]) == 0
    ckpt = newest(tmp_path / "runs" / "multitask", "last.ckpt")
    model = load_model(ckpt)
    assert model.country_head is None and len(model.geocells) > 1
    assert main(["report", str(ckpt), "--index", str(index), "--out", "report", "--workers", "0"]) == 0
    metrics = json.loads(Path("report/metrics.json").read_text())["metrics"]
    assert "err_km_median" in metrics and "acc1" not in metrics
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = model.predict_latlon(x)
    torch.testing.assert_close(out["probs"], torch.ones(2, 1, dtype=out["probs"].dtype))
    assert (great_circle_error_km(out["latlon"], torch.tensor([[45.2, 15.2]], dtype=torch.float64)) < 100).all()


def test_country_model_init_starts_the_backbone_and_the_country_head(tmp_path):
    import lightning as L

    from geotrainr.tasks import CountryClassifier

    country = CountryClassifier(countries=["DE", "FR"], backbone="test_efficientnet", weights=None, image_size=32)
    ckpt = tmp_path / "country.ckpt"
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, max_epochs=0)
    trainer.strategy.connect(country)
    trainer.save_checkpoint(ckpt)
    m = MultiTaskGeolocator(countries=["DE", "FR"], backbone="test_efficientnet", weights=None, image_size=32,
                            init_from=str(ckpt))
    assert torch.equal(m.country_head.weight, country.head[1].weight)
    for (name, a), (_, b) in zip(m.backbone.state_dict().items(), country.backbone.state_dict().items()):
        assert torch.equal(a, b), name
    other = MultiTaskGeolocator(countries=["FR", "DE"], backbone="test_efficientnet", weights=None, image_size=32,
                                init_from=str(ckpt))  # another class order: the backbone only
    assert not torch.equal(other.country_head.weight, country.head[1].weight)


@pytest.mark.parametrize("name", ["geocells", "multitask"])
def test_new_sweeps_parameters_parse_and_run(name, tiny_index, tmp_path, monkeypatch):
    """Each parameter the way the W&B agent passes it (--name=value) reaches the config it names."""
    import yaml

    monkeypatch.chdir(tmp_path)
    sweep = yaml.safe_load((ROOT / "configs" / "sweeps" / f"{name}.yaml").read_text())
    assert sweep["program"] == "geotrainr" and "${args}" in sweep["command"]
    assert sweep["command"][sweep["command"].index("--config") + 1] == name
    agent_args = []
    for key, spec in sweep["parameters"].items():
        value = spec.get("value", spec["values"][0] if "values" in spec else spec.get("min"))
        agent_args.append(f"--{key}={value}")
    agent_args = [a for a in agent_args if not a.startswith("--data.init_args.index=")]
    args = [*tiny_args(tiny_index, "country"), "--config", str(ROOT / "configs" / f"{name}.yaml"),
            f"--data.init_args.index={tiny_index}", "--model.init_args.backbone=test_efficientnet",
            "--model.init_args.weights=null", "--model.init_args.image_size=32", "--data.init_args.num_workers=0",
            "--data.init_args.batch_size=8", "--model.init_args.min_per_cell=2", "--model.init_args.max_per_cell=4"]
    agent_args = [a for a in agent_args if not a.startswith("--model.init_args.max_per_cell=")]
    assert main(["fit", *args, *agent_args, "--trainer.fast_dev_run=true"]) == 0

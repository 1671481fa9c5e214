import pandas as pd
import pytest
import torch

from conftest import build_tiny_index, make_image
from geotrainr.data import GeoDataModule
from geotrainr.data.dataset import ImageLoadError
from geotrainr.preprocess import Preprocessing, load_rgb
from geotrainr.data.index import write_index


def test_batch_contents_and_class_list(tiny_index):
    dm = GeoDataModule(str(tiny_index), batch_size=8, num_workers=0)
    assert dm.countries == ["DE", "ES", "FR", "GB", "IT", "PL"] and dm.num_classes == 6
    dm.set_preprocessing(Preprocessing(image_size=32))
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (8, 3, 32, 32) and batch["image"].dtype == torch.float32
    assert batch["country"].dtype == torch.long and batch["latlon"].shape == (8, 2)
    assert batch["skipped"] == 0
    val = next(iter(dm.val_dataloader()))
    frame = dm.frames["val"].reset_index(drop=True)
    i = int(val["index"][0])
    assert dm.countries[int(val["country"][0])] == frame["country"][i]
    assert val["latlon"][0].tolist() == pytest.approx([frame["lat"][i], frame["lon"][i]], abs=1e-4)


def test_fixed_country_list_and_unknown_code(tiny_index):
    dm = GeoDataModule(str(tiny_index), countries=["fr", "DE"], num_workers=0)
    assert dm.countries == ["FR", "DE"] and dm.num_classes == 2
    with pytest.raises(Exception, match="unknown country code"):
        GeoDataModule(str(tiny_index), countries=["XX"])


def test_corrupt_and_missing_images_are_skipped_and_counted(tmp_path):
    rows = []
    for i in range(6):
        make_image(tmp_path / f"{i}.png", i)
        rows.append({"image_path": f"{i}.png", "lat": 50.0, "lon": 10.0 + i, "country": "DE", "split": "train"})
    (tmp_path / "1.png").write_bytes(b"\x89PNG broken")
    (tmp_path / "2.png").unlink()
    idx = write_index(pd.DataFrame(rows), tmp_path / "index.parquet")
    dm = GeoDataModule(str(idx), batch_size=6, num_workers=0, augment=False)
    dm.set_preprocessing(Preprocessing(image_size=16))
    batch = next(iter(dm.train_dataloader()))
    assert batch["skipped"] == 2 and len(batch["image"]) == 4
    strict = GeoDataModule(str(idx), batch_size=6, num_workers=0, strict=True)
    with pytest.raises(ImageLoadError, match=r"row [12] \("):  # whichever broken row the shuffle reaches first
        next(iter(strict.train_dataloader()))


def test_embedded_bytes_match_files(tmp_path):
    rows = []
    for i in range(4):
        p = make_image(tmp_path / f"{i}.jpg", i, size=64)
        rows.append({"image_path": f"{i}.jpg", "image": p.read_bytes(), "lat": 45.0, "lon": 7.0, "country": "IT", "split": "val"})
    df = pd.DataFrame(rows)
    with_bytes = write_index(df, tmp_path / "b.parquet")
    files_only = write_index(df.drop(columns="image"), tmp_path / "f.parquet")
    out = []
    for idx in (with_bytes, files_only):
        dm = GeoDataModule(str(idx), countries=["IT"], batch_size=4, num_workers=0)
        dm.set_preprocessing(Preprocessing(image_size=32))
        dm.setup()
        out.append(next(iter(dm.val_dataloader()))["image"])
    torch.testing.assert_close(out[0], out[1])


@pytest.mark.parametrize("mode", ["RGBA", "L", "P", "CMYK"])
def test_any_mode_loads_as_rgb(tmp_path, mode):
    from PIL import Image

    path = tmp_path / f"x.{'png' if mode != 'CMYK' else 'jpg'}"
    Image.new(mode, (20, 10)).save(path)
    with load_rgb(path) as im:
        assert im.mode == "RGB" and im.size == (20, 10)


def test_exif_rotation_is_applied(tmp_path):
    from PIL import Image

    im = Image.new("RGB", (40, 20), (200, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    im.save(tmp_path / "r.jpg", exif=exif)
    with load_rgb(tmp_path / "r.jpg") as loaded:
        assert loaded.size == (20, 40)


def test_draft_decoding_gives_at_least_the_asked_size(tmp_path):
    make_image(tmp_path / "big.jpg", 1, size=640)
    with load_rgb(tmp_path / "big.jpg", draft_size=128) as im:
        assert 128 <= min(im.size) < 640


def test_no_horizontal_flip_by_default(tiny_index):
    from torchvision import transforms as T

    dm = GeoDataModule(str(tiny_index), num_workers=0)
    ops = dm.dataset("train", train=True).transform.transforms
    assert not any(isinstance(o, T.RandomHorizontalFlip) for o in ops)
    dm_flip = GeoDataModule(str(tiny_index), num_workers=0, hflip=True)
    assert any(isinstance(o, T.RandomHorizontalFlip) for o in dm_flip.dataset("train", train=True).transform.transforms)


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA"])
def test_normalisation_equals_torchvision_bit_for_bit(mode):
    import numpy as np
    from PIL import Image
    from torchvision import transforms as T

    from geotrainr.preprocess import ToNormalizedTensor

    rng = np.random.default_rng(0)
    channels = {"RGB": 3, "L": 1, "RGBA": 4}[mode]
    pixels = rng.integers(0, 256, size=(37, 53, channels), dtype=np.uint8)
    im = Image.fromarray(pixels[..., 0] if channels == 1 else pixels, mode)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    ours = ToNormalizedTensor(mean, std)(im)
    reference = T.Compose([T.ToTensor(), T.Normalize(mean, std)])(im.convert("RGB"))
    assert ours.dtype == torch.float32 and ours.shape == (3, 37, 53)
    assert torch.equal(ours, reference)
    every_level = Image.fromarray(np.arange(256, dtype=np.uint8).repeat(3).reshape(16, 16, 3))
    assert torch.equal(ToNormalizedTensor(mean, std)(every_level), T.Compose([T.ToTensor(), T.Normalize(mean, std)])(every_level))
    as_floats = np.asarray(every_level, dtype=np.float64)  # arrays of other types take the arithmetic path
    assert torch.allclose(ToNormalizedTensor(mean, std)(as_floats), ToNormalizedTensor(mean, std)(every_level))


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear", "nearest"])
def test_eval_resize_and_crop_match_torchvision_within_one_level(interpolation):
    import numpy as np
    from PIL import Image
    from skimage import data as skimage_data
    from torchvision import transforms as T

    from geotrainr.preprocess import ResizeCenterCrop

    noise = Image.fromarray(np.random.default_rng(1).integers(0, 256, size=(97, 131, 3), dtype=np.uint8))
    photos = [Image.fromarray(skimage_data.chelsea()), Image.fromarray(skimage_data.astronaut()), noise, noise.transpose(Image.Transpose.TRANSPOSE)]
    mode = T.InterpolationMode(interpolation)
    for size, resize_to in [(64, 64), (64, 73), (97, 97), (48, 40), (128, 146)]:  # plain, crop_pct 0.875, no resampling, padding, upscaling
        ours = ResizeCenterCrop(size, resize_to, interpolation)
        reference = T.Compose([T.Resize(resize_to, interpolation=mode), T.CenterCrop(size)])
        for photo in photos:
            a, b = np.asarray(ours(photo), dtype=int), np.asarray(reference(photo), dtype=int)
            assert a.shape == b.shape == (size, size, 3), (photo.size, size, resize_to)
            assert np.abs(a - b).max() <= 1, (photo.size, size, resize_to, np.abs(a - b).max())
            if resize_to == min(photo.size) or interpolation == "nearest":
                assert np.array_equal(a, b)  # unresampled crops and nearest neighbour take exactly torchvision's path


def test_augment_takes_a_policy_name_and_the_old_booleans(tmp_path):
    from geotrainr.augment import DEFAULT_AUGMENT, AugmentPolicyError

    idx = build_tiny_index(tmp_path)
    assert GeoDataModule(str(idx), num_workers=0).augment == DEFAULT_AUGMENT
    assert GeoDataModule(str(idx), num_workers=0, augment=True).augment == DEFAULT_AUGMENT
    assert GeoDataModule(str(idx), num_workers=0, augment=False).augment == "none"
    assert GeoDataModule(str(idx), num_workers=0, augment="strong").augment == "strong"
    with pytest.raises(AugmentPolicyError):
        GeoDataModule(str(idx), num_workers=0, augment="flips")


def test_a_class_list_naming_a_country_twice_is_one_line(tmp_path):
    from geotrainr.countries import UnknownCountryError

    idx = build_tiny_index(tmp_path)
    with pytest.raises(UnknownCountryError, match="DE more than once"):
        GeoDataModule(str(idx), num_workers=0, countries=["DE", "FR", "de"])

"""Training augmentation: the named policies and the training transform built from a model's :class:`Preprocessing`.

Evaluation never augments; its transform is the preprocessor's own (:class:`~geotrainr.preprocess.Preprocessor`),
which :func:`build_transform` also returns for ``train=False`` and policy ``none``.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T

from geotrainr.errors import GeotrainrError
from geotrainr.preprocess import Preprocessing, ResizeCenterCrop, ToNormalizedTensor, interpolation_of


#: The augmentation policies of training, by name (``GeoDataModule(augment=...)``, ``build_transform``).
#: ``none``: the evaluation transform; ``geo-safe``: mild crops that keep most of the frame, small rotations,
#: camera-like blur, JPEG and noise, colours untouched; ``strong``: random resized crop down to half the frame
#: and colour jitter (the recipe shipped before the policies existed).
AUGMENT_POLICIES = ("none", "geo-safe", "strong")


#: The default policy, chosen on two evaluation sets from different imagery sources (docs/results.md,
#: "Augmentation on two evaluation sets"): ``augment: true`` means this one.
DEFAULT_AUGMENT = "none"


class AugmentPolicyError(GeotrainrError, ValueError):
    """An augmentation policy name that does not exist."""


def resolve_policy(augment: bool | str | None) -> str:
    """A policy name from ``augment``: a name, or true (the default policy) / false (``none``) as in old configs."""
    if augment is None or augment is False:
        return "none"
    if augment is True:
        return DEFAULT_AUGMENT
    name = str(augment).strip().lower()
    if name in ("true", "default"):
        return DEFAULT_AUGMENT
    if name == "false":
        return "none"
    if name not in AUGMENT_POLICIES:
        raise AugmentPolicyError(f"augment {augment!r} is not a policy: choose from {', '.join(AUGMENT_POLICIES)} "
                                 "(or true for the default, false for none)")
    return name


class RandomJPEG:
    """Re-encode as JPEG at a random quality with probability ``p``: the compression of another camera or upload."""

    def __init__(self, quality: tuple[int, int] = (40, 95), p: float = 0.3):
        self.quality, self.p = quality, p

    def __call__(self, pic: Image.Image) -> Image.Image:
        if float(torch.rand(())) >= self.p:
            return pic
        q = int(torch.randint(self.quality[0], self.quality[1] + 1, ()))
        buffer = io.BytesIO()
        pic.convert("RGB").save(buffer, format="JPEG", quality=q)
        buffer.seek(0)
        with Image.open(buffer) as im:
            return im.convert("RGB")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(quality={self.quality}, p={self.p})"


class RandomSensorNoise:
    """Add Gaussian noise of a random strength (up to ``sigma`` grey levels) with probability ``p``: sensor noise.

    The same noise on all three channels' scale, zero mean, so the colour balance is kept.
    """

    def __init__(self, sigma: float = 6.0, p: float = 0.2):
        self.sigma, self.p = sigma, p

    def __call__(self, pic: Image.Image) -> Image.Image:
        if float(torch.rand(())) >= self.p:
            return pic
        a = np.asarray(pic.convert("RGB"), dtype=np.float32)
        strength = float(torch.rand(())) * self.sigma
        noise = torch.randn(a.shape, generator=None).numpy() * strength
        return Image.fromarray(np.clip(a + noise, 0, 255).round().astype(np.uint8))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(sigma={self.sigma}, p={self.p})"


def _augment_ops(policy: str, size: int, interp) -> list[Callable]:
    """The random steps of a training policy (before normalisation); ``none`` has none."""
    if policy == "strong":
        return [T.RandomResizedCrop(size, scale=(0.5, 1.0), ratio=(3 / 4, 4 / 3), interpolation=interp),
                T.ColorJitter(0.2, 0.2, 0.2)]
    if policy == "geo-safe":
        # the frame's edges carry signal (coast, road side, sky): keep at least 80 % of it, barely reshaped,
        # rotate a little (a tilted phone), then what differs between cameras: focus, compression, noise
        return [T.RandomRotation(5, interpolation=T.InterpolationMode.BILINEAR),
                T.RandomResizedCrop(size, scale=(0.8, 1.0), ratio=(0.9, 1 / 0.9), interpolation=interp),
                T.RandomApply([T.GaussianBlur(3, sigma=(0.1, 1.0))], p=0.2),
                RandomJPEG(),
                RandomSensorNoise()]
    raise AugmentPolicyError(f"no random steps for policy {policy!r}")


def build_transform(pre: Preprocessing, train: bool, hflip: bool = False, augment: bool | str = True) -> Callable:
    """Eval (and policy ``none``): resize the short side and centre-crop. Train: the ``augment`` policy.

    No horizontal flip by default: it swaps the driving side, a strong country cue.
    """
    size = pre.image_size
    policy = resolve_policy(augment)
    if train and policy != "none":
        ops = _augment_ops(policy, size, T.InterpolationMode(interpolation_of(pre)))
        if hflip:
            ops.insert(1, T.RandomHorizontalFlip())
    else:
        ops = [ResizeCenterCrop(size, int(round(size / pre.crop_pct)), interpolation_of(pre))]
        if train and hflip:
            ops.append(T.RandomHorizontalFlip())
    ops.append(ToNormalizedTensor(pre.mean, pre.std))
    return T.Compose(ops)

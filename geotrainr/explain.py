"""Grad-CAM: which parts of a photo pushed the model towards a country (or a coordinate).

Grad-CAM (Selvaraju et al., 2017) weights each channel of the last feature map
by the mean gradient of the explained score and keeps the positive part. The
feature map is the output of the timm backbone's ``forward_features`` (before
pooling); the rest of the model (``forward_head`` + the task head) is re-run
on it, so one forward and one backward pass give the map for any timm model:
CNNs (N, C, h, w), channels-last stages (N, h, w, C) and ViT-style tokens
(N, L, C) alike.

What is explained per task kind:

- country: the logit of the predicted (or a chosen) country;
- distance: closeness to the nearest (or a chosen) country anchor, i.e. minus the predicted distance;
- coords: the latitude or the longitude output (``target="lat"``/``"lon"``): what made it look
  further north or further east.

The overlay is drawn on the original photo at full resolution (small photos are
enlarged to at least 512 px for viewing); the part of the photo the model does
not see (the centre crop leaves out the sides of wide photos) is dimmed and framed.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from geotrainr.countries import country_table
from geotrainr.plots import save_image
from geotrainr.preprocess import Preprocessor, decode
from geotrainr.errors import GeotrainrError  # noqa: F401 - ExplainError's base, for readers
from geotrainr.tasks.base import ExplainError  # noqa: F401 - raised through the tasks, importable here




@dataclass
class Explanation:
    """A Grad-CAM map and what it explains.

    Attributes:
        photo: the RGB photo (original resolution).
        cam: Grad-CAM over the model's input crop, (h, w) of the feature map, in [0, 1].
        crop_box: (left, top, right, bottom) of the part of ``photo`` the model saw.
        target: the explained output: an ISO code, ``"lat"`` or ``"lon"``.
        predicted: the model's guess (ISO code) or predicted coordinates as text.
        score: probability of ``target`` (country, distance) or the predicted value in degrees (coords).
        kind: the checkpoint's task kind.
        label: how the explained output is named in the caption (the task's ``explain_label``).
    """

    photo: Image.Image
    cam: np.ndarray
    crop_box: tuple[int, int, int, int]
    target: str
    predicted: str
    score: float
    kind: str
    label: str = "class"

    @property
    def caption(self) -> str:
        names = country_table()
        if self.target in ("lat", "lon"):
            what = "latitude (north-ness)" if self.target == "lat" else "longitude (east-ness)"
            return f"Grad-CAM for the {what}; predicted {self.predicted}"
        name = names[self.target].name if self.target in names else self.target
        pred = names[self.predicted].name if self.predicted in names else self.predicted
        return f"Grad-CAM for {self.label} {self.target} {name} (p = {self.score:.2f}); predicted {self.predicted} {pred}"

    def heatmap(self, size: tuple[int, int] | None = None) -> np.ndarray:
        """The CAM on the photo's pixel grid (or ``size``), zero outside the crop, in [0, 1]."""
        w, h = size or self.photo.size
        sx, sy = w / self.photo.width, h / self.photo.height
        l, t, r, b = self.crop_box
        box = (round(l * sx), round(t * sy), round(r * sx), round(b * sy))
        cam = Image.fromarray(self.cam.astype(np.float32), mode="F").resize(
            (max(1, box[2] - box[0]), max(1, box[3] - box[1])), Image.Resampling.BICUBIC
        )
        full = np.zeros((h, w), np.float32)
        full[box[1] : box[1] + cam.height, box[0] : box[0] + cam.width] = np.asarray(cam)[: h - box[1], : w - box[0]]
        return np.clip(full, 0.0, 1.0)

    def overlay(self, alpha: float = 0.5, cmap: str = "jet", min_side: int = 512, caption: bool = True,
                credit: str | None = None) -> Image.Image:
        """The photo with the heat map blended in, the unseen part dimmed, a caption strip below.

        ``credit``: a second caption line, e.g. the photo's licence and author.
        """
        import matplotlib

        photo = self.photo
        scale = max(1.0, min_side / max(1, min(photo.size)))
        if scale > 1.0:  # tiny photos (e.g. the demo's 32 px patches) are enlarged to be seen
            photo = photo.resize((round(photo.width * scale), round(photo.height * scale)), Image.Resampling.LANCZOS)
        w, h = photo.size
        heat = self.heatmap((w, h))
        colours = matplotlib.colormaps[cmap](heat)[..., :3]
        base = np.asarray(photo, np.float32) / 255.0
        a = alpha * (0.25 + 0.75 * heat)[..., None]  # strong evidence shows most
        blended = base * (1 - a) + colours * a
        l, t, r, b = (round(v * scale) for v in self.crop_box)
        inside = np.zeros((h, w), bool)
        inside[t:b, l:r] = True
        blended[~inside] = base[~inside] * 0.45
        out = Image.fromarray((np.clip(blended, 0, 1) * 255).astype(np.uint8))
        draw = ImageDraw.Draw(out)
        lw = max(2, round(min(w, h) / 250))
        if (l, t, r, b) != (0, 0, w, h):
            draw.rectangle((l, t, r - 1, b - 1), outline=(255, 255, 255), width=lw)
        if not caption:
            return out
        font_size = max(12, round(w / 60))
        try:
            font = ImageFont.load_default(size=font_size)
        except TypeError:  # Pillow < 10.1 without sizes
            font = ImageFont.load_default()
        text = self.caption + (f"\n{credit}" if credit else "")
        strip_h = round(font_size * (1.8 + (1.25 if credit else 0)))
        canvas = Image.new("RGB", (w, h + strip_h), (20, 20, 20))
        canvas.paste(out, (0, 0))
        ImageDraw.Draw(canvas).text((lw + 4, h + round(font_size * 0.35)), text, fill=(255, 255, 255), font=font)
        return canvas

    def save(self, path: str | os.PathLike, **overlay_kwargs) -> Path:
        """Write the overlay atomically (format from the file ending)."""
        return save_image(self.overlay(**overlay_kwargs), path)


def _to_grid(t: torch.Tensor, num_features: int, prefix_tokens: int) -> torch.Tensor:
    """A backbone's last feature map as (N, C, h, w), whatever its layout."""
    if t.ndim == 4:
        if t.shape[1] != num_features and t.shape[-1] == num_features:  # channels-last stages (e.g. Swin)
            return t.permute(0, 3, 1, 2)
        return t
    if t.ndim == 3:  # tokens (N, L, C): drop class/register tokens, lay patches on a square grid
        tokens = t[:, prefix_tokens:, :]
        side = int(math.isqrt(tokens.shape[1]))
        if side * side != tokens.shape[1]:
            raise ExplainError(f"cannot lay {tokens.shape[1]} tokens on a square grid for Grad-CAM")
        return tokens.transpose(1, 2).reshape(t.shape[0], t.shape[2], side, side)
    raise ExplainError(f"Grad-CAM needs a spatial feature map; this backbone gives shape {tuple(t.shape)}")


def gradcam(model, x: torch.Tensor, target: str | None = None) -> tuple[np.ndarray, str, str, float]:
    """Grad-CAM of one input ``x`` (1, 3, H, W) for a task model.

    Args:
        model: a task model; what it explains is its own (:meth:`~geotrainr.tasks.base.GeoTask.explain_score`).
        x: the preprocessed image batch of one.
        target: an ISO code of the class list (country, distance and geocell models), ``"lat"``/``"lon"``
            (linear coordinate models); default: the predicted country, or ``"lat"`` for linear coordinate models.

    Returns: (cam in [0, 1] on the feature grid, target, predicted, score).
    """
    model.explain_target(target)  # a bad target fails before any work
    backbone = model.backbone
    with torch.no_grad():
        feats = backbone.forward_features(x)
    fmap = feats.detach().requires_grad_(True)
    with torch.enable_grad():
        pooled = backbone.forward_head(fmap, pre_logits=True)
        score_t, target, predicted, shown = model.explain_score(pooled, target)
        (grad,) = torch.autograd.grad(score_t, fmap)
    nf = getattr(model, "num_features", feats.shape[1])
    prefix = int(getattr(backbone, "num_prefix_tokens", 0) or 0)
    a, g = _to_grid(fmap.detach(), nf, prefix), _to_grid(grad, nf, prefix)
    weights = g.mean(dim=(2, 3), keepdim=True)
    cam = torch.relu((weights * a).sum(1))[0].float()
    top = float(cam.max())
    cam = cam / top if top > 0 else cam
    return cam.cpu().numpy(), target, predicted, shown


def explain(model_or_locator, image, target: str | None = None, device: str | torch.device | None = None) -> Explanation:
    """Grad-CAM of one photo (a path, bytes or a PIL image) for a task model or a :class:`~geotrainr.locator.Locator`.

    The model's input is made by the model's :class:`~geotrainr.preprocess.Preprocessor`, exactly as
    ``locate`` makes it; the overlay is drawn on the photo decoded at full size, with the crop box
    the preprocessor reports scaled onto it.

    Args:
        model_or_locator: what :func:`~geotrainr.loading.load_model` or ``Locator.load`` returns.
        image: path, bytes or PIL image (any size and format Pillow reads).
        target: a country code to explain instead of the predicted one; ``"lat"``/``"lon"`` for coordinate models.
        device: where to run; default: where the model is.
    """
    model = getattr(model_or_locator, "model", model_or_locator)
    if device is not None:
        model = model.to(device)
    dev = next(model.parameters()).device
    pre = getattr(model_or_locator, "preprocessor", None) or Preprocessor(model.preprocessing)
    model.explain_target(target)
    seen = pre.open(image)
    x = pre.transform(seen).unsqueeze(0).to(dev)
    photo = _full_photo(image)
    model.eval()
    cam, target, predicted, score = gradcam(model, x, target)
    sx, sy = photo.width / seen.width, photo.height / seen.height
    l, t, r, b = pre.crop_box(seen.size)
    box = (round(l * sx), round(t * sy), round(r * sx), round(b * sy))
    return Explanation(photo, cam, box, target, predicted, score, model.task_kind, model.explain_label)


def _full_photo(image) -> Image.Image:
    """The photo decoded at full size (no reduction), for drawing on."""
    im = decode(image, None)
    im.load()
    return im

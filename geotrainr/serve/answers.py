"""What the inference worker answers: a request's photos located through the one :class:`~geotrainr.locator.Locator`
code path (as ``geotrainr locate`` does), views of one place grouped, Grad-CAM on request, and the model's card.
"""

from __future__ import annotations

import io
import os


from geotrainr.errors import GeotrainrError
from geotrainr.countries import country_table
from geotrainr.geo import EARTH_RADIUS_KM
from geotrainr.hub import model_card as card_text
from geotrainr.tasks.base import ExplainError
from geotrainr.explain import explain
from geotrainr.hub import export_config
from geotrainr.loading import read_source
from geotrainr.locator import Locator
from geotrainr.multiview import auto_group_key, group


def model_card(source: str | os.PathLike, model) -> dict:
    """What ``GET /card`` answers: task, classes, input, backbone, training data and metrics, the model card text.

    The model carries everything but its training provenance, which is read from the checkpoint
    record or the exported ``config.json`` where ``source`` is one.
    """

    config = export_config(model, _provenance(source))
    names = country_table()
    classes = list(config["countries"])
    return {
        "source": str(source),
        "task": config["task"],
        "head": config.get("head"),
        "backbone": config.get("backbone"),
        "input": config["preprocessing"],
        "classes": classes,
        "class_names": {c: names[c].name if c in names else c for c in classes},
        "centres": {c: [names[c].lat, names[c].lon] for c in classes if c in names},
        "guess_note": getattr(model, "guess_note", None),
        "earth_radius_km": EARTH_RADIUS_KM,
        "metrics": config.get("metrics") or {},
        "data": config.get("data") or {},
        "geotrainr_version": config.get("geotrainr_version"),
        "card": card_text(config),
    }


def _provenance(source: str | os.PathLike) -> dict:
    """``metrics`` and ``data`` of the record behind ``source``, read by the one loader's reader; {} if none."""

    try:
        record = read_source(source).record
    except GeotrainrError:
        return {}
    return {k: record.get(k) for k in ("metrics", "data") if isinstance(record.get(k), dict)}


def load_locator(source: str | os.PathLike, device: str | None = "auto", runtime: str = "torch"):
    """``geotrainr.load`` with the runtime named only when it is not the default one."""

    if runtime == "torch":
        return Locator.load(source, device=device)
    return Locator.load(source, device=device, runtime=runtime)


def _group_key(names: list[str]) -> str:
    """The record's ``image`` for several views: their shared ``--group-by auto`` key, else the names joined."""

    keys = {auto_group_key(n) for n in names}
    return keys.pop() if len(keys) == 1 else "+".join(names)


def _named(message: str | None, name: str) -> str:
    """An error of the locator (``"<label>: what went wrong"``, the label made up for bytes) under the upload's name."""
    what = (message or "no prediction").split(": ", 1)[-1]
    return f"{name}: {what.rstrip('.')}."


def answer(locator, items: list[dict]) -> list[dict]:
    """The answers to a batch of requests: ``{"status": 200, "record": {...}}``, ``{"status": 200, "png": bytes}``
    or ``{"status": 4xx, "error": "..."}``, one per item, in order.

    Every photo of every ``locate`` item goes through one :meth:`Locator.locate` call (one forward pass per
    ``max_batch_size`` requests); ``explain`` items are answered one by one.
    """

    out: list[dict | None] = [None] * len(items)
    flat: list[bytes] = []
    for item in items:
        if item["op"] == "locate":
            flat.extend(data for _, data in item["photos"])
    guesses = []
    if flat:
        k = max(item.get("top_k", 5) for item in items if item["op"] == "locate")
        guesses = locator.locate(flat, top_k=k, batch_size=len(flat), num_workers=0)
    at = 0
    for n, item in enumerate(items):
        if item["op"] == "explain":
            out[n] = explain_one(locator, item)
            continue
        names = [name for name, _ in item["photos"]]
        mine = guesses[at : at + len(names)]
        for g, name in zip(mine, names):
            g.image = name
            if not g.ok:
                g.error = _named(g.error, name)
        at += len(names)
        failed = [g for g in mine if not g.ok]
        if failed:
            out[n] = {"status": 422, "error": failed[0].error}
            continue
        k = item.get("top_k", 5)
        if len(mine) == 1:
            guess = mine[0]
            guess.top_k = guess.top_k[:k]
        else:
            guess = group(mine, [_group_key(names)] * len(mine), top_k=k)[0]
        out[n] = {"status": 200, "record": guess.to_dict()}
    return out  # type: ignore[return-value]


def explain_one(locator, item: dict) -> dict:
    """Grad-CAM overlay of one photo as PNG bytes (a bad target is the client's 422)."""

    name, data = item["photos"][0]
    try:
        overlay = explain(locator, data, target=item.get("target")).overlay()
    except ExplainError as e:
        return {"status": 422, "error": f"{e}."}
    except GeotrainrError as e:
        return {"status": 422, "error": f"{name}: {e}."}
    buf = io.BytesIO()
    overlay.save(buf, "PNG")
    return {"status": 200, "png": buf.getvalue()}

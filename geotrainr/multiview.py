"""Several views of one place, one guess: group keys and the combination of guesses."""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from geotrainr.countries import get_country
from geotrainr.geo import spherical_mean
from geotrainr.predictions import Guess, make_guesses

#: ``abc_90`` / ``abc-2`` / ``abc_0.5``: a view suffix of at most 3 digits, below 360 (a heading or a view number).
#: Four-digit camera counters (``IMG_1234``) are left alone so that unrelated photos do not merge.
_VIEW_SUFFIX = re.compile(r"^(?P<stem>.+?)[_-](?P<n>\d{1,3}(?:\.\d+)?)$")


def auto_group_key(image: str | os.PathLike) -> str:
    """Group key of a file: its stem without a trailing ``_<heading>``/``-<n>``/``_<n>``, in its folder.

    ``pano/abc_0.jpg`` and ``pano/abc_90.jpg`` give ``pano/abc``; ``IMG_1234.jpg`` stays ``IMG_1234``.
    """
    p = Path(image)
    stem = p.stem
    m = _VIEW_SUFFIX.match(stem)
    if m and float(m["n"]) < 360:
        stem = m["stem"]
    return stem if str(p.parent) in ("", ".") else str(p.parent / stem)


def group(guesses: Sequence[Guess], keys: Sequence[str], top_k: int | None = None) -> list[Guess]:
    """Combine the guesses sharing a key into one guess per key (in order of first appearance).

    Country and distance models: the probabilities of the views are averaged (PIGEON found
    plain averaging of four views best) and the guess is the top class's centre. Geocell
    models: the cell probabilities (and the multi-task model's per-cell offsets) are averaged and
    decoded as the model decodes one view. Linear
    coordinate models: the coordinates are combined by :func:`geotrainr.geo.spherical_mean`. Views that
    failed are left out; a key whose views all failed keeps an error. Truth, when every
    view has it, is carried over (their spherical mean).
    """
    if len(keys) != len(guesses):
        raise ValueError(f"{len(guesses)} guesses but {len(keys)} keys")
    buckets: dict[str, list[Guess]] = {}
    for g, key in zip(guesses, keys):
        buckets.setdefault(str(key), []).append(g)
    labels, latlon, probs_rows, errors, classes, cells = [], [], [], {}, None, {}
    for n, (key, members) in enumerate(buckets.items()):
        labels.append(key)
        good = [g for g in members if g.ok]
        if not good:
            errors[n] = f"{key}: none of its {len(members)} view(s) could be read"
            latlon.append((np.nan, np.nan))
            probs_rows.append(None)
            continue
        if good[0].cell_probs is not None:
            classes = good[0].classes
            cell_probs = np.mean(np.stack([g.cell_probs for g in good]), axis=0)
            offsets = None
            if all(g.cell_offsets is not None for g in good):  # the multi-task model's: each view's offset per cell
                offsets = np.mean(np.stack([g.cell_offsets for g in good]), axis=0)
            ll, p = good[0].cell_decoder(cell_probs, offsets)
            latlon.append(tuple(ll.tolist()))
            probs_rows.append(p)
            cells[n] = (cell_probs, offsets, good[0].cell_decoder)
        elif good[0].probs is not None:
            classes = good[0].classes
            p = np.mean(np.stack([g.probs for g in good]), axis=0)
            c = get_country(classes[int(np.argmax(p))])
            latlon.append((c.lat, c.lon))
            probs_rows.append(p)
        else:
            latlon.append(tuple(spherical_mean(torch.tensor([[g.lat, g.lon] for g in good])).tolist()))
            probs_rows.append(None)
    if top_k is None:
        top_k = max((len(g.top_k) for g in guesses), default=5)
    probs = None
    if classes is not None:
        probs = np.stack([p if p is not None else np.full(len(classes), np.nan, dtype=np.float32) for p in probs_rows])
    out = make_guesses(labels, np.asarray(latlon, dtype=float), probs, errors, classes or (), top_k)
    for n, (g, members) in enumerate(zip(out, buckets.values())):
        g.members = [m.image for m in members]
        if n in cells and g.ok:
            g.cell_probs, g.cell_offsets, g.cell_decoder = cells[n]
        truth = [m for m in members if m.true_lat is not None]
        if truth and len(truth) == len(members):
            lat, lon = spherical_mean(torch.tensor([[m.true_lat, m.true_lon] for m in truth])).tolist()
            countries = Counter(m.true_country for m in truth if m.true_country)
            g.set_truth(lat, lon, countries.most_common(1)[0][0] if countries else None)
    return out



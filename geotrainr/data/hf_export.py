"""An index -> a Hugging Face ``datasets``-compatible folder: parquet shards with an ``image`` feature and a card.

Layout (what ``push_to_hub`` writes, so that ``huggingface-cli upload`` publishes it as is)::

    DIR/README.md                              dataset card: YAML (licence, configs, features, splits), attribution
    DIR/data/train-00000-of-00002.parquet      image {bytes, path}, lat, lon, country, split, provenance columns
    DIR/data/validation-00000-of-00001.parquet
    DIR/data/test-00000-of-00001.parquet

Each shard carries the ``huggingface`` schema metadata that ``datasets`` reads its features from, so
``datasets.load_dataset("parquet", data_dir=DIR)`` (or ``load_dataset(DIR)``, through the card's
``configs``) gives decodable images without the network. The folder is assembled beside the target
and renamed into place: a reader never sees half a dataset.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from huggingface_hub import DatasetCard, DatasetCardData

from geotrainr.progress import ProgressCallback
from geotrainr.files import staged_folder
from geotrainr.data.schema import SPLITS, IndexValidationError, image_label
from geotrainr.data.index import index_root, read_index, rows_outside, validate_index
from geotrainr.data.image_files import open_image_source

#: index split -> Hugging Face split name (``datasets`` calls the validation split "validation")
HF_SPLITS = {"train": "train", "val": "validation", "test": "test"}
#: licence as written in an index -> the Hub's licence identifier
LICENCE_IDS = {"cc-by-sa 4.0": "cc-by-sa-4.0", "cc-by 4.0": "cc-by-4.0", "cc0 1.0": "cc0-1.0", "cc0": "cc0-1.0",
               "cc-by-nc 4.0": "cc-by-nc-4.0", "cc-by-nc-sa 4.0": "cc-by-nc-sa-4.0", "public domain": "cc0-1.0"}
#: columns that locate the image in the index and are replaced by the ``image`` feature
IMAGE_COLUMNS = ("image", "image_path", "archive", "member", "image_name")
#: sources whose terms forbid redistributing the images
NO_REDISTRIBUTION = {"streetview": "the Google Maps Platform terms forbid storing or redistributing Street View images"}


class ExportError(IndexValidationError):
    """The index cannot be exported as asked."""


@dataclass
class ExportResult:
    out: Path
    rows: dict[str, int]
    shards: dict[str, int]
    licence: str
    nbytes: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def licence_id(values: pd.Series | None) -> str:
    """The Hub licence id of the rows' ``licence`` values: one shared licence, else ``other``/``unknown``."""
    if values is None:
        return "unknown"
    known = {str(v).strip() for v in values.dropna() if str(v).strip()}
    if not known:
        return "unknown"
    if len(known) > 1 or values.isna().any():
        return "other"
    (one,) = known
    return LICENCE_IDS.get(one.lower(), one.lower().replace(" ", "-"))


def _value_type(t: pa.DataType) -> str | None:
    """``datasets`` Value dtype of an arrow type (None: not a plain scalar, left out)."""
    if pa.types.is_boolean(t):
        return "bool"
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "string"
    if pa.types.is_floating(t):
        return {16: "float16", 32: "float32", 64: "float64"}[t.bit_width]
    if pa.types.is_integer(t):
        return str(t)  # int8 ... uint64: the same names
    return None


def _columns_table(df: pd.DataFrame) -> pa.Table:
    """The scalar columns (everything but the image locators) as arrow, object columns as strings."""
    cols = {}
    for c in df.columns:
        if c in IMAGE_COLUMNS:
            continue
        s = df[c]
        if s.dtype == object:
            s = s.map(lambda v: None if v is None or (isinstance(v, float) and np.isnan(v)) else str(v)).astype(object)
        arr = pa.array(s.to_numpy(), from_pandas=True)
        if pa.types.is_null(arr.type):
            arr = arr.cast(pa.string())
        if _value_type(arr.type) is not None:
            cols[c] = arr
    return pa.table(cols)


def _image_name(df: pd.DataFrame, i: int) -> str:
    for c in ("image_name", "member", "image_path"):
        if c in df.columns and isinstance(df[c].iloc[i], str):
            return os.path.basename(df[c].iloc[i])
    return f"{i:08d}.jpg"


def _features(table: pa.Table) -> dict:
    features = {"image": {"_type": "Image"}}
    for f in table.schema:
        features[f.name] = {"dtype": _value_type(f.type), "_type": "Value"}
    return features


def _schema(table: pa.Table) -> pa.Schema:
    image = pa.field("image", pa.struct([pa.field("bytes", pa.binary()), pa.field("path", pa.string())]))
    meta = {"huggingface": json.dumps({"info": {"features": _features(table)}})}
    return pa.schema([image, *table.schema]).with_metadata(meta)


#: The dataset card's body (Jinja, rendered by huggingface_hub); its YAML front matter is the DatasetCardData.
DATASET_CARD_TEMPLATE = """---
{{ card_data }}
---

# {{ name }}

Street-level images with the coordinates (WGS84 `lat`, `lon`) and the country (ISO 3166-1 alpha-2, `country`) where each was taken: {{ images }} images in {{ countries }} countries, exported from the geotrainr index `{{ source_index }}`.

## Splits

| split | images | countries |
| --- | ---: | ---: |
{% for split, n, k in splits -%}
| {{ split }} | {{ n }} | {{ k }} |
{% endfor %}
Views of one place (one panorama, one capture sequence, points a few metres apart) were kept in one split when the index was split by place (`geotrainr index`, the default).

## Columns

| column | type |
| --- | --- |
{% for column, dtype in columns -%}
| `{{ column }}` | {{ dtype }} |
{% endfor %}
## Licence and attribution

{% for licence, n in licences -%}
- {{ n }} images under {{ licence }}
{% else -%}
The index states no licence for its images: set one before publishing.
{% endfor -%}
{% if sources %}
Sources: {{ sources }}.
{% endif -%}
{% if creators %}
Images by {{ creator_count }} contributors (the `creator` column credits each image); the most prolific:

{% for creator, n in creators -%}
- {{ creator }} ({{ n }})
{% endfor -%}
{% if creator_count > creators | length -%}
- and {{ creator_count - creators | length }} more
{% endif -%}
{% endif -%}
{% if osv5m %}
OpenStreetView-5M: Astruc et al., *OpenStreetView-5M: The Many Roads to Global Visual Geolocation*, CVPR 2024; imagery from Mapillary contributors.
{% endif %}
Coordinates to countries: GeoNames (CC BY 4.0) where the source gave no country.

## Use

```python
from datasets import load_dataset

ds = load_dataset("parquet", data_dir="PATH/TO/THIS/FOLDER")  # or load_dataset("USER/NAME") once pushed
ds["train"][0]["image"]  # a PIL image
```

Publish: `huggingface-cli upload USER/NAME PATH/TO/THIS/FOLDER . --repo-type dataset`.
"""
#: creators named on the card (the ``creator`` column credits every image)
CARD_CREATORS = 50


def _dtype(spec: dict) -> str:
    return "image" if spec["_type"] == "Image" else spec["dtype"]


def _card(df: pd.DataFrame, result: ExportResult, features: dict, name: str, source_index: str) -> DatasetCard:
    """README.md: the Hub's metadata (licence, configs, features, splits), then what the data is and whom to credit."""
    splits = [HF_SPLITS[s] for s in result.rows]
    card_data = DatasetCardData(
        license=result.licence,
        pretty_name=name,
        task_categories=["image-classification"],
        tags=["geolocation", "street-level-imagery"],
        configs=[{"config_name": "default",
                  "data_files": [{"split": s, "path": f"data/{s}-*"} for s in splits]}],
        dataset_info={
            "features": [{"name": k, "dtype": _dtype(v)} for k, v in features.items()],
            "splits": [{"name": HF_SPLITS[s], "num_bytes": result.nbytes.get(s, 0), "num_examples": n}
                       for s, n in result.rows.items()],
        },
    )
    has = {c: c in df.columns and df[c].notna().any() for c in ("licence", "source", "creator")}
    creators = df["creator"].dropna().astype(str).value_counts() if has["creator"] else pd.Series(dtype=int)
    return DatasetCard.from_template(
        card_data,
        template_str=DATASET_CARD_TEMPLATE,
        name=name,
        images=len(df),
        countries=df["country"].nunique(),
        source_index=source_index,
        splits=[(HF_SPLITS[s], n, df.loc[df["split"] == s, "country"].nunique()) for s, n in result.rows.items()],
        columns=[(k, _dtype(v)) for k, v in features.items()],
        licences=list(df["licence"].fillna("not stated").value_counts().items()) if has["licence"] else [],
        sources=(", ".join(f"{s} ({n})" for s, n in df["source"].fillna("unknown").value_counts().items())
                 if "source" in df.columns else ""),
        creators=list(creators.head(CARD_CREATORS).items()),
        creator_count=len(creators),
        osv5m="source" in df.columns and bool((df["source"] == "osv5m").any()),
    )


def export_dataset(
    index: str | os.PathLike,
    out: str | os.PathLike,
    shard_mb: float = 500.0,
    name: str | None = None,
    licence: str | None = None,
    progress: ProgressCallback | None = None,
) -> ExportResult:
    """Write ``index`` as a Hugging Face dataset folder at ``out`` (replaced whole, atomically).

    Shards hold about ``shard_mb`` MB of image bytes each. ``licence`` (a Hub id such as
    ``cc-by-sa-4.0``) overrides the one read from the rows' ``licence`` column. A row whose image lies
    outside the index's image root (see :func:`~geotrainr.data.index.write_index`) is refused, naming it,
    before anything is written; each image is read bounded (a regular file, at most MAX_IMAGE_BYTES).
    """
    index, out = Path(index), Path(out)
    df = validate_index(read_index(index))
    root = index_root(index)
    outside = rows_outside(df, index)
    if outside:  # refused before anything is written: an export embeds only images of the dataset
        i, why = outside[0]
        raise ExportError(f"{index}: row {i} ({image_label(df, i)}): {why}; {len(outside)} row(s) like it, nothing exported")
    if "split" not in df.columns:
        df["split"] = "train"
    result = ExportResult(out, {}, {}, licence or licence_id(df["licence"] if "licence" in df.columns else None))
    if "source" in df.columns:
        for src, why in NO_REDISTRIBUTION.items():
            n = int((df["source"] == src).sum())
            if n:
                result.warnings.append(f"{n} images come from {src}: {why}; do not publish this export")
    if out.exists() and not (out.is_dir() and (not any(out.iterdir()) or ((out / "README.md").is_file() and (out / "data").is_dir()))):
        raise ExportError(f"{out} exists and is not a dataset export: choose another --out (nothing is overwritten)")
    done = 0
    with staged_folder(out) as tmp:
        (tmp / "data").mkdir()
        features = None
        for split in SPLITS:
            rows = np.flatnonzero((df["split"] == split).to_numpy())
            if len(rows) == 0:
                continue
            sub = df.iloc[rows].reset_index(drop=True)
            table = _columns_table(sub)
            schema = _schema(table)
            features = features or _features(table)
            written: list[Path] = []
            start, size, images, total_bytes = 0, 0, [], 0

            def flush(end: int) -> None:
                image = pa.StructArray.from_arrays([pa.array([b for b, _ in images], pa.binary()), pa.array([p for _, p in images], pa.string())],
                                                   fields=list(schema.field("image").type))
                shard = pa.Table.from_arrays([image, *table.slice(start, end - start).columns], schema=schema)
                path = tmp / "data" / f".{HF_SPLITS[split]}-{len(written):05d}.parquet"
                pq.write_table(shard, path)
                written.append(path)

            for i in range(len(sub)):
                try:
                    with open_image_source(sub, i, root) as f:
                        data = f.read()
                except OSError as e:
                    raise ExportError(f"{_image_name(sub, i)}: cannot read the image ({e})") from None
                images.append((data, _image_name(sub, i)))
                size += len(data)
                total_bytes += len(data)
                done += 1
                if progress is not None:
                    progress(done, len(df))
                if size >= shard_mb * 1e6:
                    flush(i + 1)
                    start, size, images = i + 1, 0, []
            if images:
                flush(len(sub))
            for k, path in enumerate(written):
                path.rename(path.with_name(f"{HF_SPLITS[split]}-{k:05d}-of-{len(written):05d}.parquet"))
            result.rows[split] = len(sub)
            result.nbytes[split] = int(total_bytes + table.nbytes)
            result.shards[split] = len(written)
        _card(df, result, features, name or out.name, str(index)).save(tmp / "README.md")
    for w in result.warnings:
        print(f"warning: {w}", file=sys.stderr)
    return result

"""The image index: one parquet file (or a folder of parquet shards) per dataset.

This module is the one place that knows the schema. ``image_path`` is relative
to the folder that holds the index (the parent of the file or of the shard
folder). Writers are atomic: a reader never sees a half-written file.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from geotrainr.countries import country_table
from geotrainr.data.image_files import check_all_images
from geotrainr.data.packed.manifest import PACK_MANIFEST, PACK_PARTIAL, check_pack, unfinished_pack
from geotrainr.data.schema import IMAGE_ROOT_KEY, REQUIRED, SCHEMA, SPLITS, IndexValidationError, row_label
from geotrainr.data.trust import outside_reason, regular_file_size
from geotrainr.files import atomic_path, staged_folder


def index_root(path: str | os.PathLike) -> Path:
    """Folder that ``image_path`` and ``archive`` values are relative to."""
    return Path(path).resolve().parent


def image_root(path: str | os.PathLike) -> Path:
    """The folder index ``path``'s images may live in: recorded by :func:`write_index` (``geotrainr.image_root``,
    relative to the index's folder), else the index's own folder."""
    path = Path(path)
    first = path
    if path.is_dir():
        shards = sorted(p for p in path.glob("*.parquet") if not p.name.startswith((".", "_")))
        if not shards:
            return index_root(path)
        first = shards[0]
    try:
        meta = pq.read_schema(first).metadata or {}
    except (pa.ArrowInvalid, OSError) as e:
        raise IndexValidationError(f"{path}: not a readable parquet index ({e})") from None
    rel = meta.get(IMAGE_ROOT_KEY)
    if rel is None:
        return index_root(path)
    rel = rel.decode("utf-8", "replace")
    if os.path.isabs(rel):
        raise IndexValidationError(f"{path}: the recorded image root {rel!r} is absolute; an index names it relative to its folder")
    return Path(os.path.realpath(index_root(path) / rel))


def image_outside(index_dir: Path, root: Path, value: str) -> str | None:
    """Why ``value`` (an ``image_path`` or ``archive`` relative to ``index_dir``) is not inside ``root``; None when it is."""
    if not isinstance(value, str) or os.path.isabs(value) or value.startswith(("/", "\\")):
        return outside_reason(root, value)
    return outside_reason(root, os.path.relpath(os.path.normpath(os.path.join(index_dir, value)), root))


def rows_outside(df: pd.DataFrame, index: str | os.PathLike) -> list[tuple[int, str]]:
    """``(row, reason)`` for every row of index ``index`` whose image file or archive lies outside its image root."""
    index_dir, root = index_root(index), image_root(index)
    cache: dict[str, str | None] = {}
    bad = []
    has_bytes = df["image"].notna().to_numpy() if "image" in df.columns else np.zeros(len(df), bool)
    for col in ("archive", "image_path"):
        if col not in df.columns:
            continue
        for i, value in enumerate(df[col].to_numpy(object)):
            if has_bytes[i] or not isinstance(value, str) or not value:
                continue
            if value not in cache:
                cache[value] = image_outside(index_dir, root, value)
            if cache[value] is not None:
                bad.append((i, f"{cache[value]}: not inside the index's image root {root}"))
    return sorted(set(bad))


def show_value(value) -> str:
    """A cell value for an error message: numbers plainly, anything else quoted."""
    if isinstance(value, (int, float, np.integer, np.floating)):
        return str(float(value))
    return repr(value)


def read_index(path: str | os.PathLike, columns: Iterable[str] | None = None) -> pd.DataFrame:
    """Read an index file or shard folder; ``columns`` reads only those (fast for large sets)."""
    path = Path(path)
    if not path.exists():
        raise IndexValidationError(f"{path}: no such index file or folder")
    try:
        if path.is_dir():
            if (path / PACK_PARTIAL).exists() and not (path / PACK_MANIFEST).exists():
                raise IndexValidationError(unfinished_pack(path))
            if (path / PACK_MANIFEST).exists():
                manifest = check_pack(pa.fs.LocalFileSystem(), str(path.resolve()), path)
                shards = [path / s["file"] for s in manifest["shards"]]
            else:
                shards = sorted(p for p in path.glob("*.parquet") if not p.name.startswith((".", "_")))
            if not shards:
                raise IndexValidationError(f"{path}: folder holds no parquet shard")
            present = set(pq.read_schema(shards[0]).names)
            cols = [c for c in columns if c in present] if columns is not None else None
            table = pa.concat_tables([pq.read_table(s, columns=cols) for s in shards], promote_options="default")
        else:
            regular_file_size(path, what="parquet index")  # a FIFO would block
            present = set(pq.read_schema(path).names)
            cols = [c for c in columns if c in present] if columns is not None else None
            table = pq.read_table(path, columns=cols)
    except (pa.ArrowInvalid, OSError) as e:
        raise IndexValidationError(f"{path}: not a readable parquet index ({e})") from None
    return table.to_pandas()


def validate_index(df: pd.DataFrame, root: str | os.PathLike | None = None, check_images: bool = False) -> pd.DataFrame:
    """Check every row against the contract and return a normalised copy.

    Raises :class:`IndexValidationError` naming the first bad row. Country codes
    are upper-cased; ``check_images`` opens every image (slow, thorough).
    """
    if len(df) == 0:
        raise IndexValidationError("the index is empty: no image rows")
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise IndexValidationError(f"missing required column(s): {', '.join(missing)}")
    if "image_path" not in df.columns and "image" not in df.columns and "archive" not in df.columns:
        raise IndexValidationError("the index needs an 'image_path', an 'image' or an 'archive' + 'member' column")
    if "archive" in df.columns and "member" not in df.columns:
        raise IndexValidationError("an 'archive' column needs a 'member' column (the file inside the archive)")
    df = df.reset_index(drop=True).copy()
    if "image_path" in df.columns:
        has_path = df["image_path"].map(lambda p: isinstance(p, str) and p != "").to_numpy()
    else:
        has_path = np.zeros(len(df), bool)
    has_bytes = df["image"].notna().to_numpy() if "image" in df.columns else np.zeros(len(df), bool)
    if "archive" in df.columns:
        has_member = (df["archive"].map(lambda p: isinstance(p, str) and p != "") & df["member"].map(lambda p: isinstance(p, str) and p != "")).to_numpy()
    else:
        has_member = np.zeros(len(df), bool)
    bad = np.flatnonzero(~(has_path | has_bytes | has_member))
    if len(bad):
        raise IndexValidationError(f"{row_label(df, bad[0])}: no image_path, no image bytes and no archive member")
    for col, lo, hi in (("lat", -90.0, 90.0), ("lon", -180.0, 180.0)):
        values = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=float)
        bad = np.flatnonzero(~np.isfinite(values) | (values < lo) | (values > hi))
        if len(bad):
            raise IndexValidationError(
                f"{row_label(df, bad[0])}: {col} {show_value(df[col].iloc[bad[0]])} is not a number in [{lo:g}, {hi:g}]"
            )
        df[col] = values
    country = df["country"].map(lambda c: c.strip().upper() if isinstance(c, str) else c)
    known = set(country_table())
    bad = np.flatnonzero(~country.isin(known).to_numpy())
    if len(bad):
        raise IndexValidationError(f"{row_label(df, bad[0])}: unknown country code {df['country'].iloc[bad[0]]!r}")
    df["country"] = country.astype(str)
    if "split" in df.columns:
        bad = np.flatnonzero(~df["split"].isin(SPLITS).to_numpy())
        if len(bad):
            raise IndexValidationError(
                f"{row_label(df, bad[0])}: split {df['split'].iloc[bad[0]]!r} is not one of {', '.join(SPLITS)}"
            )
    if has_path.any():
        paths = df["image_path"][has_path]
        dup = paths.duplicated()
        if dup.any():
            i = int(paths.index[dup.to_numpy()][0])
            raise IndexValidationError(f"{row_label(df, i)}: duplicate image_path")
    if has_member.any():
        dup = df.loc[has_member, ["archive", "member"]].duplicated()
        if dup.any():
            i = int(dup.index[dup.to_numpy()][0])
            raise IndexValidationError(f"{row_label(df, i)}: duplicate archive member")
    if check_images:
        check_all_images(df, root)
    return df


def _to_table(df: pd.DataFrame) -> pa.Table:
    fields = [pa.field(c, SCHEMA[c]) if c in SCHEMA else None for c in df.columns]
    schema_fields = []
    for c, f in zip(df.columns, fields):
        schema_fields.append(f if f is not None else pa.field(c, pa.Schema.from_pandas(df[[c]], preserve_index=False).field(c).type))
    return pa.Table.from_pandas(df.reset_index(drop=True), schema=pa.schema(schema_fields), preserve_index=False)


def write_parquet_atomic(table: pa.Table, path: str | os.PathLike, durable: bool = False) -> Path:
    """Write ``table`` to ``path`` through a temporary file in the same folder, then rename.

    ``durable``: flushed to the disk before the rename and the folder after it (survives a power cut).
    """
    with atomic_path(path, durable) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    return Path(path)


def write_index(df: pd.DataFrame, path: str | os.PathLike, shard_rows: int | None = None,
                image_root: str | os.PathLike | None = None) -> Path:
    """Write an index atomically: one file, or a folder of shards of ``shard_rows`` rows.

    ``image_root`` is the folder the rows' images may live in (the dataset they came from; default:
    the index's own folder). It is recorded relative to the index's folder (``geotrainr.image_root``)
    and ``pack``/``export-dataset`` read no image outside it. A shard folder is assembled beside the
    target and renamed into place, so an existing index is replaced only once the new one is complete.
    """
    path = Path(path)
    folder = index_root(path)
    rel = os.path.relpath(os.path.realpath(image_root), os.path.realpath(folder)) if image_root is not None else "."

    def table(part: pd.DataFrame) -> pa.Table:
        t = _to_table(part)
        return t.replace_schema_metadata({**(t.schema.metadata or {}), IMAGE_ROOT_KEY: rel.encode("utf-8")})

    if not shard_rows or len(df) <= shard_rows:
        return write_parquet_atomic(table(df), path)
    with staged_folder(path) as tmp_dir:
        for n, start in enumerate(range(0, len(df), shard_rows)):
            pq.write_table(table(df.iloc[start : start + shard_rows]), tmp_dir / f"part-{n:05d}.parquet", compression="zstd")
    return path


# --- splits -----------------------------------------------------------------


# --- building an index from sources ------------------------------------------


def summarize(df: pd.DataFrame, min_rows: int = 10) -> str:
    """Readable summary: rows per split, per country, and countries under ``min_rows``."""
    lines = [f"{len(df)} images, {df['country'].nunique()} countries"]
    if "split" in df.columns:
        counts = df["split"].value_counts()
        lines.append("split   rows")
        lines += [f"{s:<7} {int(counts.get(s, 0)):>6}" for s in SPLITS if s in counts or s != "test"]
    per = pd.crosstab(df["country"], df["split"]) if "split" in df.columns else df["country"].value_counts().to_frame("rows")
    per["total"] = per.sum(axis=1)
    per = per.sort_values("total", ascending=False)
    lines.append("")
    lines.append(per.to_string())
    small = per.index[per["total"] < min_rows].tolist()
    if small:
        lines.append(f"\ncountries with fewer than {min_rows} rows: {', '.join(small)}")
    return "\n".join(lines)

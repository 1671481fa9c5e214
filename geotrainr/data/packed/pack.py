"""Writing a packed set (``geotrainr pack``): shard by shard, each whole or not at all, resumable, manifest last."""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from geotrainr.data.packed.manifest import PACK_MANIFEST as MANIFEST
from geotrainr.data.packed.manifest import PACK_PARTIAL as PARTIAL
from geotrainr.progress import ProgressCallback
from geotrainr.data.schema import SPLITS
from geotrainr.data.splits import assign_splits
from geotrainr.data.image_files import open_image_source
from geotrainr.data.demo import resolve_index

_CTX: dict | None = None
from geotrainr.files import atomic_path, write_text_atomic
from geotrainr.preprocess import decode, register_image_openers
from geotrainr.data.index import index_root, read_index, rows_outside, validate_index
from geotrainr.data.packed.location import FORMAT, PackError, VERSION, is_url, filesystem, read_json


@dataclass
class PackResult:
    out: str
    rows: int
    shards: int
    written: int
    reused: int
    nbytes: int
    unreadable: int
    splits: dict
    #: where the first few unreadable images or non-images came from (stored empty)
    unreadable_examples: list = None


#: provenance columns a pack keeps (the image columns are replaced by ``image`` and ``origin``)
KEEP = ("pano_id", "heading", "pitch", "fov", "capture_date", "place_id", "source", "group", "creator", "licence")


def _origin(df: pd.DataFrame) -> np.ndarray:
    """Where each row's image came from: its path, ``archive:member``, or empty for bytes already embedded."""
    out = np.full(len(df), "", dtype=object)
    if "image_path" in df.columns:
        paths = df["image_path"].to_numpy(object)
        ok = np.array([isinstance(p, str) and p != "" for p in paths], bool)
        out[ok] = paths[ok]
    if "archive" in df.columns:
        arch, mem = df["archive"].to_numpy(object), df["member"].to_numpy(object)
        ok = np.array([isinstance(a, str) and a != "" for a in arch], bool) & (out == "")
        out[ok] = [f"{a}:{m}" for a, m in zip(arch[ok], mem[ok])]
    return out


def reencode(data: bytes, max_side: int | None, quality: int) -> bytes:
    """The image at most ``max_side`` pixels on its long side, as a JPEG of ``quality`` (unchanged when it already fits
    and is a JPEG). Raises on an unreadable image."""
    from PIL import Image


    if max_side is None:
        return data
    with Image.open(io.BytesIO(data)) as probe:
        fits = probe.format == "JPEG" and max(probe.size) <= max_side
    if fits:
        return data
    with decode(data, max_side) as im:  # the decoder's own downscale first, then a proper resample
        im = im.copy()
    if max(im.size) > max_side:
        scale = max_side / max(im.size)
        im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.LANCZOS)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality, optimize=True)
    return buf.getvalue()


def is_image(data: bytes) -> bool:
    """Whether ``data`` starts with an image header Pillow can parse (no pixels decoded)."""
    from PIL import Image


    register_image_openers()
    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.width > 0 and im.height > 0
    except Exception:  # noqa: BLE001 - any parser error means no image
        return False


#: largest arrow chunk of image bytes (a plain binary array holds at most 2 GiB)
_CHUNK_BYTES = 2**30


def _binary_column(images: list[bytes]) -> pa.ChunkedArray:
    """The images as binary chunks of at most _CHUNK_BYTES each: many large images never overflow one array."""
    chunks, start, size = [], 0, 0
    for i, b in enumerate(images):
        if size + len(b) > _CHUNK_BYTES and i > start:
            chunks.append(pa.array(images[start:i], pa.binary()))
            start, size = i, 0
        size += len(b)
    chunks.append(pa.array(images[start:], pa.binary()))
    return pa.chunked_array(chunks, pa.binary())


def _write_shard(job: tuple) -> tuple[int, int, list[int], int, int, list[str]]:
    """Write shard ``k`` of the plan; returns (k, rows, row groups, bytes, unreadable, first unreadable origins).

    An image that cannot be read (missing, not a regular file, over MAX_IMAGE_BYTES, a zip bomb) or whose
    header is not an image's is stored empty: its bytes never reach the pack; training skips and counts it.
    """
    k, rows, ctx = job
    df, root, out, max_side, quality, per_group = ctx["df"], ctx["root"], ctx["out"], ctx["max_side"], ctx["quality"], ctx["per_group"]

    part = df.iloc[rows]
    images, unreadable, examples = [], 0, []
    for i in rows:
        try:
            with open_image_source(df, int(i), root) as f:
                data = f.read()
        except Exception:  # noqa: BLE001 - a missing image stays missing; training counts it (max_unreadable)
            data = b""
        if not is_image(data):
            images.append(b"")
            unreadable += 1
            if len(examples) < 3:
                examples.append(str(ctx["origin"][i]) or f"row {i}")
            continue
        try:
            data = reencode(data, max_side, quality)
        except Exception:  # noqa: BLE001 - an undecodable image is kept as it is; training skips and counts it
            unreadable += 1
        images.append(data)
    cols = {"image": _binary_column(images),
            "lat": pa.array(part["lat"].to_numpy(np.float64)), "lon": pa.array(part["lon"].to_numpy(np.float64)),
            "country": pa.array(part["country"].astype(str).to_numpy(object), pa.string()),
            "split": pa.array(part["split"].astype(str).to_numpy(object), pa.string()),
            "origin": pa.array(ctx["origin"][rows], pa.string())}
    for c in KEEP:
        if c in part.columns:
            cols[c] = pa.Array.from_pandas(part[c].reset_index(drop=True))
    table = pa.table(cols)
    name = shard_name(k)
    compression = {c: ("none" if c == "image" else "zstd") for c in table.column_names}
    _put_table(table, out, name, per_group, compression)
    groups = [min(per_group, len(rows) - s) for s in range(0, len(rows), per_group)]
    nbytes = int(sum(len(b) for b in images))
    return k, len(rows), groups, nbytes, unreadable, examples


def shard_name(k: int) -> str:
    return f"part-{k:05d}.parquet"


def _put_table(table: pa.Table, out: str, name: str, per_group: int, compression: dict) -> None:
    """Write one shard atomically: a temporary file renamed into place (local), or one whole object (URL)."""

    fs, base = filesystem(out)
    if isinstance(fs, pa.fs.LocalFileSystem):
        with atomic_path(Path(base) / name) as tmp:
            pq.write_table(table, tmp, row_group_size=per_group, compression=compression)
        return
    buf = pa.BufferOutputStream()
    pq.write_table(table, buf, row_group_size=per_group, compression=compression)
    with fs.open_output_stream(f"{base}/{name}") as f:  # an object store shows an object only once it is whole
        f.write(buf.getvalue())


def _put_text(out: str, name: str, text: str) -> None:

    fs, base = filesystem(out)
    if isinstance(fs, pa.fs.LocalFileSystem):
        write_text_atomic(Path(base) / name, text)
        return
    with fs.open_output_stream(f"{base}/{name}") as f:
        f.write(text.encode("utf-8"))


def _shard_done(fs: pa.fs.FileSystem, path: str, rows: int) -> list[int] | None:
    """The row groups of a finished shard with ``rows`` rows, else None (missing, cut, or another size)."""
    try:
        with fs.open_input_file(path) as f:
            meta = pq.ParquetFile(f).metadata
    except (OSError, pa.ArrowInvalid):
        return None
    if meta.num_rows != rows:
        return None
    return [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]


def pack(
    index: str | os.PathLike,
    out: str | os.PathLike,
    max_side: int | None = None,
    quality: int = 90,
    rows_per_group: int = 512,
    groups_per_shard: int = 16,
    seed: int = 0,
    workers: int = 1,
    progress: ProgressCallback | None = None,
) -> PackResult:
    """Write ``index`` (files, zip members or embedded bytes) as a packed set at ``out`` (a folder or a URL).

    Resumable: shards are written one by one, each whole or not at all; a rerun with the same index
    and settings keeps the finished ones. The manifest is written last, so a reader never takes an
    unfinished pack for a finished one. ``max_side`` re-encodes larger images as JPEGs of ``quality``.
    """

    if max_side is not None and max_side < 16:
        raise PackError(f"--max-side {max_side}: too small (at least 16 pixels)")
    if not 1 <= quality <= 100:
        raise PackError(f"--quality {quality}: must be in 1..100")
    if rows_per_group < 1 or groups_per_shard < 1:
        raise PackError("rows per row group and row groups per shard must be at least 1")
    src = resolve_index(index)
    if not src.exists():
        raise PackError(f"{src}: no such index file or folder")
    out = os.fspath(out)
    if not is_url(out) and Path(out).resolve() == src.resolve():
        raise PackError(f"{out}: the output would overwrite the index it packs")
    fs, base = filesystem(out)
    info = fs.get_file_info([base, f"{base}/{MANIFEST}", f"{base}/{PARTIAL}"])
    stat = os.stat(src)
    settings = {"source": os.path.abspath(src), "source_size": stat.st_size, "source_mtime_ns": stat.st_mtime_ns,
                "max_side": max_side, "quality": quality, "rows_per_group": rows_per_group,
                "groups_per_shard": groups_per_shard, "seed": seed}
    if info[0].type == pa.fs.FileType.File:
        raise PackError(f"{out}: is a file; --out names a new folder")
    if info[1].type == pa.fs.FileType.File:
        raise PackError(f"{out}: already holds a finished pack; remove it (or choose another --out) to pack again")
    if info[2].type == pa.fs.FileType.File:
        if read_json(fs, f"{base}/{PARTIAL}") != settings:
            raise PackError(f"{out}: holds an unfinished pack of another index or with other settings; remove it "
                            "or rerun with the settings it was started with")
    elif info[0].type == pa.fs.FileType.Directory and fs.get_file_info(pa.fs.FileSelector(base)):
        raise PackError(f"{out}: the folder is not empty; pack into a new folder")
    df = validate_index(read_index(src))
    outside = rows_outside(df, src)
    if outside:  # refused before anything is written: a pack holds only images of the dataset
        i, why = outside[0]
        raise PackError(f"{src}: row {i} ({_origin(df.iloc[[i]])[0]}): {why}; "
                        f"{len(outside)} row(s) like it, nothing packed")
    assigned = "split" not in df.columns
    if assigned:
        df = assign_splits(df, "group", val=0.2, seed=seed)
    rng = np.random.default_rng(seed)
    order = np.concatenate([rng.permutation(np.flatnonzero((df["split"] == s).to_numpy())) for s in SPLITS]).astype(np.int64)
    per_shard = rows_per_group * groups_per_shard
    jobs_rows = [order[a:a + per_shard] for a in range(0, len(order), per_shard)]
    fs.create_dir(base, recursive=True)
    _put_text(out, PARTIAL, json.dumps(settings, sort_keys=True))
    done: dict[int, tuple[int, list[int], int]] = {}
    for k, rows in enumerate(jobs_rows):
        groups = _shard_done(fs, f"{base}/{shard_name(k)}", len(rows))
        if groups is not None:
            done[k] = (len(rows), groups, -1)
    reused = len(done)
    ctx = {"df": df, "root": index_root(src), "out": out, "max_side": max_side, "quality": quality,
           "per_group": rows_per_group, "origin": _origin(df)}
    todo = [(k, rows, ctx) for k, rows in enumerate(jobs_rows) if k not in done]
    total, count = len(df), sum(len(jobs_rows[k]) for k in done)
    if progress is not None:
        progress(count, total)
    nbytes = unreadable = 0
    examples: list[str] = []
    if workers > 1 and len(todo) > 1:
        import multiprocessing as mp

        global _CTX
        _CTX = ctx
        with mp.get_context("fork").Pool(workers) as pool:
            results = pool.imap_unordered(_write_shard_forked, [(k, rows) for k, rows, _ in todo])
            for k, n, groups, b, bad, ex in results:
                done[k], nbytes, unreadable, count = (n, groups, b), nbytes + b, unreadable + bad, count + n
                examples += ex
                if progress is not None:
                    progress(count, total)
        _CTX = None
    else:
        for job in todo:
            k, n, groups, b, bad, ex = _write_shard(job)
            done[k], nbytes, unreadable, count = (n, groups, b), nbytes + b, unreadable + bad, count + n
            examples += ex
            if progress is not None:
                progress(count, total)
    splits = {s: int((df["split"] == s).sum()) for s in SPLITS}
    train = df[df["split"] == "train"] if splits["train"] else df
    manifest = {
        "format": FORMAT, "version": VERSION, "rows": int(len(df)),
        "shards": [{"file": shard_name(k), "rows": done[k][0], "row_groups": done[k][1]} for k in range(len(jobs_rows))],
        "splits": splits, "split_assigned": assigned,
        "train_countries": sorted(train["country"].astype(str).str.upper().unique().tolist()),
        "columns": ["image", "lat", "lon", "country", "split", "origin", *[c for c in KEEP if c in df.columns]],
        "sources": sorted(df["source"].dropna().astype(str).unique().tolist()) if "source" in df.columns else [],
        "licences": sorted(df["licence"].dropna().astype(str).unique().tolist()) if "licence" in df.columns else [],
        "creators": int(df["creator"].dropna().astype(str).nunique()) if "creator" in df.columns else 0,
        "settings": {k: v for k, v in settings.items() if not k.startswith("source_")},
    }
    _put_text(out, MANIFEST, json.dumps(manifest, indent=1))
    fs.delete_file(f"{base}/{PARTIAL}")
    return PackResult(out, int(len(df)), len(jobs_rows), len(todo), reused, nbytes, unreadable, splits, examples[:3])


def _write_shard_forked(job: tuple) -> tuple:
    """A pool worker's shard: the context is inherited through fork, not pickled per task."""
    k, rows = job
    return _write_shard((k, rows, _CTX))

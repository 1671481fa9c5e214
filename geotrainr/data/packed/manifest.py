"""A packed set's manifest: written last by ``geotrainr pack``, read (bounded) and checked against its shards before any work.
"""

from __future__ import annotations

import json
import re

import pyarrow as pa
import pyarrow.parquet as pq

from geotrainr.data.schema import IndexValidationError
from geotrainr.data.trust import MAX_MANIFEST_BYTES, regular_file_size


#: a packed set's manifest (written last), and the marker of a pack in progress (see geotrainr/data/packed/)
PACK_MANIFEST = "_geotrainr_pack.json"


PACK_PARTIAL = "_geotrainr_pack.partial.json"


def unfinished_pack(location) -> str:
    return f"{location}: an unfinished pack (geotrainr pack was interrupted); run the same geotrainr pack command again to finish it"


def read_json_bounded(fs: pa.fs.FileSystem, path: str, limit: int = MAX_MANIFEST_BYTES) -> dict:
    """A JSON object from a regular file of at most ``limit`` bytes on ``fs``."""
    info = fs.get_file_info(path)
    if info.type != pa.fs.FileType.File:
        raise IndexValidationError(f"{path}: not a regular file")
    if info.size is not None and info.size > limit:
        raise IndexValidationError(f"{path}: {info.size:,} bytes, more than a manifest may hold ({limit:,})")
    if isinstance(fs, pa.fs.LocalFileSystem):
        regular_file_size(path, limit, "manifest")  # the size above followed a symlink; a FIFO reports 0
    with fs.open_input_stream(path) as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise IndexValidationError(f"{path}: more than a manifest may hold ({limit:,} bytes)")
    try:
        value = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise IndexValidationError(f"{path}: not a JSON manifest ({e})") from None
    if not isinstance(value, dict):
        raise IndexValidationError(f"{path}: not a JSON object")
    return value


def check_pack(fs: pa.fs.FileSystem, base: str, location) -> dict:
    """The manifest of the finished pack at ``base``, once every shard it lists is there, whole, with the rows
    and row groups it says (parquet footers only; a cut or missing shard is one line, before any work)."""
    manifest = read_json_bounded(fs, f"{base}/{PACK_MANIFEST}")
    shards = manifest.get("shards")
    if not isinstance(shards, list) or not all(isinstance(s, dict) for s in shards):
        raise IndexValidationError(f"{location}: {PACK_MANIFEST} lists no shards")
    total = 0
    for s in shards:
        name, rows, groups = s.get("file"), s.get("rows"), s.get("row_groups")
        if (not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*\.parquet", name)
                or not isinstance(rows, int) or not isinstance(groups, list) or not all(isinstance(g, int) for g in groups)):
            raise IndexValidationError(f"{location}: {PACK_MANIFEST} has a malformed shard entry {str(s)[:80]!r}")
        try:
            with fs.open_input_file(f"{base}/{name}") as f:
                meta = pq.ParquetFile(f).metadata
            found = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
        except FileNotFoundError:
            raise IndexValidationError(f"{location}: shard {name} of the manifest is missing; pack the set again") from None
        except (OSError, pa.ArrowInvalid) as e:
            raise IndexValidationError(f"{location}: shard {name} is cut or unreadable ({e}); pack the set again") from None
        if meta.num_rows != rows or found != groups:
            raise IndexValidationError(f"{location}: shard {name} holds {meta.num_rows} rows in {len(found)} row groups, "
                                       f"the manifest says {rows} in {len(groups)}; pack the set again")
        total += rows
    if manifest.get("rows") != total:
        raise IndexValidationError(f"{location}: the manifest says {manifest.get('rows')} rows, its shards hold {total}")
    return manifest

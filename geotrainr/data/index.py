"""The image index: one parquet file (or a folder of parquet shards) per dataset.

This module is the one place that knows the schema. ``image_path`` is relative
to the folder that holds the index (the parent of the file or of the shard
folder). Writers are atomic: a reader never sees a half-written file.
"""

from __future__ import annotations

import io
import math
import os
import re
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from geotrainr.countries import country_table
from geotrainr.data.trust import MAX_IMAGE_BYTES, MAX_MANIFEST_BYTES, outside_reason, regular_file_size
from geotrainr.errors import GeotrainrError
from geotrainr.geo import km_per_degree_lat

SPLITS = ("train", "val", "test")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")

#: Column name -> arrow type. image_path, image or archive + member is required, lat/lon/country always.
SCHEMA = {
    "image_path": pa.string(),
    "image": pa.binary(),
    "lat": pa.float64(),
    "lon": pa.float64(),
    "country": pa.string(),
    "split": pa.string(),
    "pano_id": pa.string(),
    "heading": pa.float64(),
    "pitch": pa.float64(),
    "fov": pa.float64(),
    "capture_date": pa.string(),
    "place_id": pa.string(),
    "source": pa.string(),
    "archive": pa.string(),
    "member": pa.string(),
    "group": pa.string(),
    "creator": pa.string(),
    "licence": pa.string(),
}
REQUIRED = ("lat", "lon", "country")


class IndexValidationError(GeotrainrError, ValueError):
    """The index (or its source) breaks the contract; the message names the row and the problem."""


#: a packed set's manifest (written last), and the marker of a pack in progress (see geotrainr/data/shards.py)
PACK_MANIFEST = "_geotrainr_pack.json"
PACK_PARTIAL = "_geotrainr_pack.partial.json"


#: parquet key-value metadata of an index: where its images may live, relative to the index's folder
IMAGE_ROOT_KEY = b"geotrainr.image_root"
#: the default notion of one place: views sharing a key (GROUP_KEYS) or this close
PLACE_RADIUS_M = 10.0


def unfinished_pack(location) -> str:
    return f"{location}: an unfinished pack (geotrainr pack was interrupted); run the same geotrainr pack command again to finish it"


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


def read_json_bounded(fs: pa.fs.FileSystem, path: str, limit: int = MAX_MANIFEST_BYTES) -> dict:
    """A JSON object from a regular file of at most ``limit`` bytes on ``fs``."""
    import json

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


def image_label(df: pd.DataFrame, i: int) -> str:
    """How row ``i``'s image is named to a user: its path, ``archive:member``, or empty for embedded bytes."""
    if "image_path" in df.columns and isinstance(df["image_path"].iloc[i], str):
        return df["image_path"].iloc[i]
    if "archive" in df.columns and isinstance(df["archive"].iloc[i], str):
        return f"{df['archive'].iloc[i]}:{df['member'].iloc[i]}"
    return ""


def _row_label(df: pd.DataFrame, i: int) -> str:
    label = image_label(df, i)
    return f"row {i} ({label})" if label else f"row {i}"


def _show(value) -> str:
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
        raise IndexValidationError(f"{_row_label(df, bad[0])}: no image_path, no image bytes and no archive member")
    for col, lo, hi in (("lat", -90.0, 90.0), ("lon", -180.0, 180.0)):
        values = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=float)
        bad = np.flatnonzero(~np.isfinite(values) | (values < lo) | (values > hi))
        if len(bad):
            raise IndexValidationError(
                f"{_row_label(df, bad[0])}: {col} {_show(df[col].iloc[bad[0]])} is not a number in [{lo:g}, {hi:g}]"
            )
        df[col] = values
    country = df["country"].map(lambda c: c.strip().upper() if isinstance(c, str) else c)
    known = set(country_table())
    bad = np.flatnonzero(~country.isin(known).to_numpy())
    if len(bad):
        raise IndexValidationError(f"{_row_label(df, bad[0])}: unknown country code {df['country'].iloc[bad[0]]!r}")
    df["country"] = country.astype(str)
    if "split" in df.columns:
        bad = np.flatnonzero(~df["split"].isin(SPLITS).to_numpy())
        if len(bad):
            raise IndexValidationError(
                f"{_row_label(df, bad[0])}: split {df['split'].iloc[bad[0]]!r} is not one of {', '.join(SPLITS)}"
            )
    if has_path.any():
        paths = df["image_path"][has_path]
        dup = paths.duplicated()
        if dup.any():
            i = int(paths.index[dup.to_numpy()][0])
            raise IndexValidationError(f"{_row_label(df, i)}: duplicate image_path")
    if has_member.any():
        dup = df.loc[has_member, ["archive", "member"]].duplicated()
        if dup.any():
            i = int(dup.index[dup.to_numpy()][0])
            raise IndexValidationError(f"{_row_label(df, i)}: duplicate archive member")
    if check_images:
        check_all_images(df, root)
    return df


def check_all_images(df: pd.DataFrame, root: str | os.PathLike | None) -> None:
    """Open and fully decode every image; raise on the first that fails."""
    from PIL import Image
    from tqdm.auto import tqdm

    root = Path(root) if root is not None else Path.cwd()
    for i in tqdm(range(len(df)), desc="checking images", unit="img", leave=False, mininterval=1.0):
        try:
            with open_image_source(df, i, root) as f, Image.open(f) as im:
                im.load()
        except Exception as e:  # noqa: BLE001 - any decoder error means an unusable image
            raise IndexValidationError(f"{_row_label(df, i)}: unreadable image ({type(e).__name__}: {e})") from None


def open_image_source(df: pd.DataFrame, i: int, root: Path):
    """A binary file object for row ``i``: embedded bytes first, else the archive member (streamed), else the file.

    Bounded: a file must be a regular file and a member must declare a sane size, each at most
    :data:`~geotrainr.data.trust.MAX_IMAGE_BYTES` (checked before anything is opened or inflated).
    """
    if "image" in df.columns:
        data = df["image"].iloc[i]
        if data is not None and not (isinstance(data, float) and math.isnan(data)):
            return io.BytesIO(data)
    if "archive" in df.columns and isinstance(df["archive"].iloc[i], str):
        from geotrainr.data.archives import open_member

        return open_member(os.path.normpath(root / df["archive"].iloc[i]), df["member"].iloc[i])
    path = os.path.normpath(root / df["image_path"].iloc[i])  # the index folder may not exist yet
    regular_file_size(path, MAX_IMAGE_BYTES, "image")
    return open(path, "rb")


def image_size_bytes(df: pd.DataFrame, i: int, root: Path) -> int:
    """Size in bytes of row ``i``'s image, without reading it (file size, zip directory, or the bytes)."""
    if "image" in df.columns:
        data = df["image"].iloc[i]
        if data is not None and not (isinstance(data, float) and math.isnan(data)):
            return len(data)
    if "archive" in df.columns and isinstance(df["archive"].iloc[i], str):
        from geotrainr.data.archives import member_size

        return member_size(os.path.normpath(root / df["archive"].iloc[i]), df["member"].iloc[i])
    return regular_file_size(os.path.normpath(root / df["image_path"].iloc[i]), MAX_IMAGE_BYTES, "image")


_END_MARKERS = {"JPEG": b"\xff\xd9", "PNG": b"IEND\xaeB`\x82"}


def _tail_complete(fmt: str | None, f, size: int) -> bool:
    """Whether a JPEG/PNG file of ``size`` bytes ends with its end marker (a cut download does not); other formats
    pass. Reads the last 4 KiB (a zip member is inflated up to there as a stream, in small chunks)."""
    marker = _END_MARKERS.get(fmt or "")
    if marker is None:
        return True
    f.seek(max(0, size - 4096))
    return marker in f.read(4096)


def check_image_headers(df: pd.DataFrame, root: str | os.PathLike | None) -> list[tuple[int, str]]:
    """Cheap check of every image: size > 0 and a header Pillow can parse (no pixel decoding).

    Returns ``(row, reason)`` for every row that fails: missing files, empty files, files that are not
    regular or over :data:`~geotrainr.data.trust.MAX_IMAGE_BYTES`, zip bombs, truncated or foreign headers.
    A zip member is streamed, never inflated whole into memory. About 0.1 ms per image from a warm disk.
    """
    from PIL import Image
    from tqdm.auto import tqdm

    from geotrainr.preprocess import register_image_openers

    register_image_openers()
    root = Path(root) if root is not None else Path.cwd()
    bad: list[tuple[int, str]] = []
    for i in tqdm(range(len(df)), desc="checking image headers", unit="img", leave=False, mininterval=1.0):
        try:
            size = image_size_bytes(df, i, root)
            if size == 0:
                bad.append((i, "empty file (0 bytes)"))
                continue
            with open_image_source(df, i, root) as f, Image.open(f) as im:
                if im.width <= 0 or im.height <= 0:
                    bad.append((i, "image has no pixels"))
                    continue
                if not _tail_complete(im.format, f, size):
                    im.load()  # the end marker is missing: decode to tell a cut file from trailing data
        except FileNotFoundError:
            bad.append((i, "no such file"))
        except Exception as e:  # noqa: BLE001 - any reader error means an unusable image
            bad.append((i, f"unreadable image header ({type(e).__name__}: {e})"))
    return bad


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
    from geotrainr.files import atomic_path

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
    import shutil

    from geotrainr.files import replace_folder

    path = Path(path)
    folder = index_root(path)
    rel = os.path.relpath(os.path.realpath(image_root), os.path.realpath(folder)) if image_root is not None else "."

    def table(part: pd.DataFrame) -> pa.Table:
        t = _to_table(part)
        return t.replace_schema_metadata({**(t.schema.metadata or {}), IMAGE_ROOT_KEY: rel.encode("utf-8")})

    if not shard_rows or len(df) <= shard_rows:
        return write_parquet_atomic(table(df), path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        for n, start in enumerate(range(0, len(df), shard_rows)):
            pq.write_table(table(df.iloc[start : start + shard_rows]), tmp_dir / f"part-{n:05d}.parquet", compression="zstd")
        return replace_folder(tmp_dir, path)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise


# --- splits -----------------------------------------------------------------


def block_cells(lat: np.ndarray, lon: np.ndarray, block_km: float) -> np.ndarray:
    """Integer id of the roughly ``block_km`` x ``block_km`` cell each point falls in."""
    if block_km <= 0:
        raise IndexValidationError(f"--block-km must be positive, got {block_km}")
    dlat = block_km / km_per_degree_lat()
    row = np.floor((np.asarray(lat) + 90.0) / dlat).astype(np.int64)
    band_centre = np.clip(-90.0 + (row + 0.5) * dlat, -89.9, 89.9)
    dlon = dlat / np.cos(np.deg2rad(band_centre))
    col = np.floor((np.asarray(lon) + 180.0) / dlon).astype(np.int64)
    return row * 1_000_000 + col


#: Columns whose equal values mark views of one place (one panorama, one capture sequence, a user's group).
GROUP_KEYS = ("group", "pano_id", "sequence")


def location_groups(df: pd.DataFrame, radius_m: float = 10.0) -> np.ndarray:
    """Integer group id per row: rows sharing a ``group``, ``pano_id`` or ``sequence`` value, or lying
    within ``radius_m`` metres of each other (transitively), get the same id.

    Built as the connected components of a graph whose nodes are the rows plus one node per key value,
    with an edge from each row to its key values and between rows closer than ``radius_m``.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    from geotrainr.geo import EARTH_RADIUS_KM

    n = len(df)
    if n == 0:
        return np.zeros(0, np.int64)
    src, dst, nodes = [], [], n
    for col in GROUP_KEYS:
        if col not in df.columns:
            continue
        values = df[col]
        present = values.notna().to_numpy() & (values.astype(str).str.strip() != "").to_numpy()
        if not present.any():
            continue
        codes, uniques = pd.factorize(values[present].astype(str))
        src.append(np.flatnonzero(present))
        dst.append(nodes + codes)
        nodes += len(uniques)
    if radius_m > 0:
        lat, lon = np.deg2rad(df["lat"].to_numpy(float)), np.deg2rad(df["lon"].to_numpy(float))
        xyz = np.stack((np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)), axis=-1)
        pairs = cKDTree(xyz).query_pairs(radius_m / 1000.0 / EARTH_RADIUS_KM, output_type="ndarray")
        if len(pairs):
            src.append(pairs[:, 0])
            dst.append(pairs[:, 1])
    if not src:
        return np.arange(n, dtype=np.int64)
    s, d = np.concatenate(src), np.concatenate(dst)
    graph = coo_matrix((np.ones(len(s), np.int8), (s, d)), shape=(nodes, nodes))
    _, labels = connected_components(graph, directed=False)
    return labels[:n].astype(np.int64)


def straddling_groups(df: pd.DataFrame, radius_m: float = 10.0) -> int:
    """How many places (see :func:`location_groups`) have views in more than one split: leaked places."""
    if "split" not in df.columns or len(df) == 0:
        return 0
    groups = location_groups(df, radius_m)
    per = pd.Series(df["split"].to_numpy()).groupby(groups).nunique()
    return int((per > 1).sum())


def _fractions_by_unit(units: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Per row, the position in [0, 1) of its unit in a random order of units weighted by their size."""
    uniq, inverse, counts = np.unique(units, return_inverse=True, return_counts=True)
    perm = rng.permutation(len(uniq))
    cum = np.cumsum(counts[perm]) - counts[perm] / 2.0
    unit_frac = np.empty(len(uniq))
    unit_frac[perm] = cum / len(units)
    return unit_frac[inverse]


def check_split_settings(val: float, test: float, block_km: float = 50.0, radius_m: float = PLACE_RADIUS_M) -> None:
    """Refuse split settings that cannot work (checked before any data is read)."""
    if not (0 <= val < 1 and 0 <= test < 1 and val + test < 1):
        raise IndexValidationError(f"split fractions must satisfy 0 <= val, test and val + test < 1 (got {val}, {test})")
    if not block_km > 0:
        raise IndexValidationError(f"--block-km must be positive, got {block_km}")
    if not radius_m > 0:
        raise IndexValidationError(f"--radius-m must be positive, got {radius_m} (views this close are one place; "
                                   f"the default is {PLACE_RADIUS_M:g} m)")


def assign_splits(
    df: pd.DataFrame,
    method: str = "group",
    val: float = 0.2,
    test: float = 0.0,
    seed: int = 0,
    block_km: float = 50.0,
    radius_m: float = 10.0,
    keep_test: bool = False,
) -> pd.DataFrame:
    """Add a ``split`` column: ``group`` per place (default), ``random`` per row, or ``block`` per geographic cell.

    ``group`` keeps the views of one place (same ``group``, ``pano_id`` or ``sequence``, or within
    ``radius_m`` metres) in one split; ``block`` keeps whole cells of about ``block_km`` km together,
    so that near-duplicates never straddle train and val. With ``keep_test`` the rows the source marks
    ``test`` (a published test set) stay there and the others are split.
    """
    check_split_settings(val, test, block_km, radius_m)
    rng = np.random.default_rng(seed)
    fixed = (df["split"] == "test").to_numpy() if keep_test and "split" in df.columns else np.zeros(len(df), bool)
    rest = df[~fixed]
    n = len(rest)
    if method == "random":
        order = rng.permutation(n)
        rank = np.empty(n, np.int64)
        rank[order] = np.arange(n)
        frac = (rank + 0.5) / max(n, 1)
    elif method == "block":
        frac = _fractions_by_unit(block_cells(rest["lat"].to_numpy(float), rest["lon"].to_numpy(float), block_km), rng)
    elif method == "group":
        frac = _fractions_by_unit(location_groups(rest, radius_m), rng) if n else np.zeros(0)
    else:
        raise IndexValidationError(f"unknown split method {method!r} (use group, random or block)")
    out = df.copy()
    split = np.full(len(df), "test", dtype=object)
    split[~fixed] = np.where(frac < test, "test", np.where(frac < test + val, "val", "train"))
    out["split"] = split
    return out


# --- building an index from sources ------------------------------------------

_SEED_NAME = re.compile(r"^(?P<cc>[A-Za-z]{2})_(?P<lat>[-+]?\d+(?:\.\d+)?),(?P<lon>[-+]?\d+(?:\.\d+)?)(?:[_\-].*)?$")


def parse_seed_name(name: str) -> tuple[str, float, float]:
    """``DE_52.52,13.40.png`` -> ("DE", 52.52, 13.40). Raises on any other name."""
    m = _SEED_NAME.match(Path(name).stem)
    if not m:
        raise IndexValidationError(f"{name}: file name does not follow the CC_lat,lon.ext pattern (e.g. DE_52.52,13.40.png)")
    return m["cc"].upper(), float(m["lat"]), float(m["lon"])


def index_from_folder(folder: str | os.PathLike, index_dir: str | os.PathLike) -> pd.DataFrame:
    """Rows for every image under ``folder`` named ``CC_lat,lon.ext``; paths relative to ``index_dir``.

    Raises on the first image that is not inside ``folder`` (a symlink out); ``geotrainr index`` skips and lists them
    (:func:`geotrainr.data.sources.common.read_folder`).
    """
    from geotrainr.data.sources.common import read_folder

    return _refuse_skipped(read_folder(folder, index_dir))


def index_from_csv(
    csv_path: str | os.PathLike,
    index_dir: str | os.PathLike,
    columns: dict[str, str] | None = None,
    images: str | os.PathLike | None = None,
) -> pd.DataFrame:
    """Rows from a CSV with path, lat, lon[, country][, extra columns kept] (see
    :func:`geotrainr.data.sources.common.read_csv_source`); raises on the first path outside the image folder."""
    from geotrainr.data.sources.common import read_csv_source

    return _refuse_skipped(read_csv_source(csv_path, index_dir, columns=columns, images=images))


def _refuse_skipped(rows) -> pd.DataFrame:
    if rows.skipped:
        item, reason = rows.skipped[0]
        raise IndexValidationError(f"{item}: {reason}")
    return rows.frame


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

"""Packed sets: an index whose images are embedded in parquet shards, read lazily one row group at a time.

A packed set (written by ``geotrainr pack``) is a folder, local or on object storage (``s3://``,
``gs://``, any URL fsspec opens: :func:`filesystem`), holding::

    DIR/_geotrainr_pack.json      manifest: shards, rows per row group, split counts, classes, settings
    DIR/part-00000.parquet        image (JPEG bytes, uncompressed), lat, lon, country, split, origin, provenance
    DIR/part-00001.parquet        ...

It is also a plain index (a shard folder with an ``image`` column), so ``report``, ``export-dataset``
and pandas read it as any other. Rows are stored split by split, each split shuffled once when packing,
so that a row group mixes places and countries.

Training reads it without holding it: the main process keeps only NumPy columns (coordinates, class
codes, split codes, row numbers: about 30 bytes per row), and each loader process keeps at most ``buffer`` row
groups of image bytes. The train loader streams whole batches (:class:`ShardStream`): per epoch, a
seeded permutation of the row groups, a shuffle within windows of ``buffer`` row groups, then
contiguous shares for every DDP rank and, within a rank, for every loader worker. Every rank gets the
same number of batches, and the union over ranks is the split, each row once. Which batches of an
epoch were trained on travels in the checkpoint (:meth:`ShardStream.resume`), so a run resumed from
``last.ckpt`` mid-epoch continues with the batches it had not seen.

Why our own reader rather than litdata or webdataset: measured side by side (docs/performance.md), the
three read at the speed of JPEG decoding; the parquet set stays an index every verb reads, needs no
second copy of the data, and lets us guarantee an exact once-per-epoch cover with equal batch counts
per rank, which the other two give only up to whole shards or by dropping/duplicating samples.
"""

from __future__ import annotations

import functools
import importlib
import io
import json
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from geotrainr.data.index import PACK_MANIFEST as MANIFEST
from geotrainr.data.index import PACK_PARTIAL as PARTIAL  # written when a pack starts, removed when it ends
from geotrainr.data.dataset import DecodedRows
from geotrainr.data.index import SPLITS, IndexValidationError, unfinished_pack
FORMAT = "geotrainr-pack"
VERSION = 1
#: columns the training path reads (besides the images)
META_COLUMNS = ["lat", "lon", "country", "split"]


class PackError(IndexValidationError):
    """A packed set that cannot be read or written as asked."""


# --- where the set lives ------------------------------------------------------------------------


def _is_url(location: str) -> bool:
    return "://" in location


#: URL query parameters through which pyarrow would take credentials
_SECRET_QUERY = ("access_key", "secret_key", "session_token", "credentials")


def check_no_credentials(location: str) -> None:
    """Refuse a URL that carries credentials: it would be written to run configs, checkpoints and records.

    The message names only the scheme and host, never the URL itself.
    """
    from urllib.parse import parse_qs, urlsplit

    parts = urlsplit(location)
    if parts.username or parts.password or any(k.lower() in _SECRET_QUERY for k in parse_qs(parts.query)):
        raise PackError(f"a {parts.scheme}:// URL for {parts.hostname or 'a bucket'} carries credentials; give them "
                        "through the environment (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, GOOGLE_APPLICATION_CREDENTIALS) "
                        "instead: a URL is written to run configs and checkpoints")


def filesystem(location: str | os.PathLike) -> tuple[pa.fs.FileSystem, str]:
    """(file system, path on it) for a local folder or a URL.

    Local folders and ``file://`` URLs go through pyarrow's local file system (whose renames make writes
    atomic); every other scheme (``s3://``, ``gs://``, ``az://``, ``memory://``, ...) through fsspec, wrapped
    for pyarrow, so that the rest of this module has one code path. Credentials, endpoint and region come
    from the environment as the scheme's library reads them (for s3fs: botocore's ``AWS_ACCESS_KEY_ID``,
    ``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``, ``AWS_ENDPOINT_URL_S3``/``AWS_ENDPOINT_URL``,
    ``AWS_DEFAULT_REGION``). The bucket must exist: it is checked here, and never created.
    """
    location = os.fspath(location)
    if not _is_url(location):
        return pa.fs.LocalFileSystem(), os.path.abspath(location)
    check_no_credentials(location)  # (from here on the URL may be quoted)
    scheme = location.split("://", 1)[0].lower()
    if scheme == "file":
        from urllib.parse import urlsplit
        from urllib.request import url2pathname

        return pa.fs.LocalFileSystem(), os.path.abspath(url2pathname(urlsplit(location).path))
    import fsspec

    try:
        fs, path = fsspec.core.url_to_fs(location)
    except (ImportError, ValueError) as e:  # an unknown scheme, or its package is not installed
        raise PackError(f"{location}: cannot open this location ({_first_line(e)})") from None
    path = path.rstrip("/")
    bucket = path.lstrip("/").split("/", 1)[0]
    guarded = _Guarded(fs, location)
    try:
        guarded.info(bucket)
    except FileNotFoundError:
        raise PackError(f"{location}: no such bucket {bucket!r} (or no access to it); geotrainr never creates "
                        "buckets: create it first") from None
    return pa.fs.PyFileSystem(_Handler(guarded)), path


def _first_line(error: BaseException, limit: int = 300) -> str:
    """``Type: message`` on one line, without any credential the environment holds."""
    text = " ".join(str(error).split()) or "no details"
    for name in _SECRET_ENV:
        value = os.environ.get(name)
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    return f"{type(error).__name__}: {text[:limit]}"


#: environment variables holding credentials, kept out of every message
_SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "AWS_SESSION_TOKEN", "AZURE_STORAGE_KEY",
               "AZURE_STORAGE_SAS_TOKEN", "AZURE_STORAGE_CONNECTION_STRING", "GOOGLE_OAUTH_ACCESS_TOKEN")


@functools.cache
def _storage_errors() -> tuple[tuple[type[BaseException], ...], tuple[type[BaseException], ...],
                               tuple[type[BaseException], ...]]:
    """(errors an object store's client raises, those s3fs has retried already, those of a connection).

    s3fs retries its list with backoff (``retries`` tries) for every request and for the body of every
    ranged read before they reach us; botocore retries a refused connection on its own.
    """
    import http.client

    errors: list[type[BaseException]] = [OSError, ValueError, http.client.HTTPException]
    retried: list[type[BaseException]] = []
    connection: list[type[BaseException]] = [TimeoutError, ConnectionError, http.client.HTTPException]
    for module, names in (("botocore.exceptions", ("BotoCoreError", "ClientError")), ("aiohttp", ("ClientError",))):
        try:
            mod = importlib.import_module(module)
        except ImportError:
            continue
        errors += [getattr(mod, n) for n in names]
    try:
        from botocore.exceptions import ConnectionError as BotoConnectionError
        from s3fs.core import S3_RETRYABLE_ERRORS

        retried += list(S3_RETRYABLE_ERRORS)
        connection += [BotoConnectionError, *S3_RETRYABLE_ERRORS]
    except ImportError:
        pass
    return tuple(errors), tuple(retried), tuple(connection)


#: errors that pyarrow's fsspec handler turns into "not found" and its like: passed through unchanged
_NOT_FOUND = (FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError)


def storage_error(location: str, error: BaseException, tries: int | None = None) -> PackError:
    """One line for a failed request to an object store: where, what, and what to check; never a credential."""
    _, retried, connection = _storage_errors()
    if isinstance(error, PermissionError):
        return PackError(f"{location}: access denied ({_first_line(error)}); check the credentials the environment "
                         "gives (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE for s3://)")
    if isinstance(error, connection):
        after = f" after {tries} tries" if tries and isinstance(error, retried) else ""
        return PackError(f"{location}: the connection to the storage server failed{after} ({_first_line(error)}); "
                         "check the endpoint (AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL for s3://) and the network")
    return PackError(f"{location}: {_first_line(error)}")


def _storage_cause(error: BaseException, errors: tuple) -> BaseException | None:
    """The storage error behind ``error``: itself, or one it was raised while handling (s3fs, handling a read
    timeout, can fail with an IndexError of its own), the one with a message preferred."""
    found, seen = None, set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, errors):
            if str(error):
                return error
            found = found or error
        error = error.__cause__ or error.__context__
    return found


class _Guarded:
    """An fsspec file system, or a file it opened, whose failures become one-line :class:`PackError` s naming the
    location. Not-found errors pass unchanged (pyarrow's handler reports them as missing files)."""

    def __init__(self, target, location: str, tries: int | None = None):
        self._target, self._location = target, location
        self._tries = tries if tries is not None else getattr(target, "retries", None)

    def __getattr__(self, name: str):
        attr = getattr(self._target, name)
        if not callable(attr):
            return attr
        errors = _storage_errors()[0]

        @functools.wraps(attr)
        def guarded(*args, **kwargs):
            try:
                out = attr(*args, **kwargs)
            except (*_NOT_FOUND, PackError):
                raise
            except Exception as e:
                cause = _storage_cause(e, errors)
                if cause is None:
                    raise
                raise storage_error(self._location, cause, self._tries) from None
            return _Guarded(out, self._location, self._tries) if name == "open" else out

        return guarded

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Handler(pa.fs.FSSpecHandler):
    """pyarrow's handler for fsspec file systems, reading with ranged requests of exactly what pyarrow asks for
    (fsspec's default read-ahead would fetch 50 MB past every row group)."""

    def open_input_file(self, path: str):
        return pa.PythonFile(self.fs.open(path, mode="rb", cache_type="none"), mode="r")

    def open_input_stream(self, path: str):
        return self.open_input_file(path)


def is_packed(location: str | os.PathLike) -> bool:
    """Whether ``location`` is a finished packed set (raises :class:`PackError` for an unfinished one)."""
    location = os.fspath(location)
    if _is_url(location):
        check_no_credentials(location)  # before any message could quote the URL
    if not _is_url(location) and not os.path.isdir(location):
        return False
    fs, base = filesystem(location)
    info = fs.get_file_info([f"{base}/{MANIFEST}", f"{base}/{PARTIAL}"])
    if info[0].type == pa.fs.FileType.File:
        return True
    if info[1].type == pa.fs.FileType.File:
        raise PackError(unfinished_pack(location))
    if _is_url(location):
        if fs.get_file_info(base).type == pa.fs.FileType.NotFound:
            raise PackError(f"{location}: nothing there (no such prefix); pack a set there first with geotrainr pack")
        raise PackError(f"{location}: no {MANIFEST} there, so not a packed set; only sets written by geotrainr pack "
                        "are read from URLs")
    return False


def read_json(fs: pa.fs.FileSystem, path: str) -> dict:
    """A pack's JSON sidecar, bounded (a regular file of at most MAX_MANIFEST_BYTES)."""
    from geotrainr.data.index import read_json_bounded

    try:
        return read_json_bounded(fs, path)
    except IndexValidationError as e:
        raise PackError(str(e)) from None


@contextmanager
def reading(location: str, name: str) -> Iterator[None]:
    """A shard that cannot be read (cut short, not parquet, or a lost connection) is one line naming it."""
    try:
        yield
    except PackError:
        raise
    except (pa.ArrowException, OSError) as e:
        raise PackError(f"{location}/{name}: cannot be read ({_first_line(e)}); pack the set again") from None


def read_columns(fs: pa.fs.FileSystem, base: str, name: str, columns: list[str], location: str) -> pa.Table:
    """``columns`` of one shard. Through :class:`pyarrow.parquet.ParquetFile`, not ``read_table``, whose
    dataset scanner can abort the interpreter at exit when it has read Python file objects (apache/arrow#39162)."""
    with reading(location, name), fs.open_input_file(f"{base}/{name}") as f:
        return pq.ParquetFile(f).read(columns=columns)


# --- the set ------------------------------------------------------------------------------------


class PackedSet:
    """A packed set's manifest and light columns; images are read on demand, a row group at a time.

    Safe to send to worker processes: open files and the row-group buffer are per process.
    """

    def __init__(self, location: str | os.PathLike, buffer: int = 4):
        self.location = os.fspath(location)
        if buffer < 1:
            raise PackError(f"stream_buffer {buffer}: at least one row group must fit in memory")
        self.buffer = buffer
        from geotrainr.data.index import check_pack

        fs, self._base = filesystem(self.location)
        try:
            self.manifest = read_json(fs, f"{self._base}/{MANIFEST}")
        except PackError:
            raise
        except (OSError, ValueError) as e:
            raise PackError(f"{self.location}: no readable {MANIFEST} ({e})") from None
        if self.manifest.get("format") != FORMAT or self.manifest.get("version") != VERSION:
            raise PackError(f"{self.location}: {MANIFEST} is not a geotrainr pack of version {VERSION}")
        try:  # every shard whole and as the manifest says (footers only), before anything is written
            check_pack(fs, self._base, self.location)
        except IndexValidationError as e:
            raise PackError(str(e)) from None
        self.shards = [s["file"] for s in self.manifest["shards"]]
        groups = [n for s in self.manifest["shards"] for n in s["row_groups"]]
        #: first global row of every row group, and the (shard, group in shard) it is
        self.group_start = np.concatenate([[0], np.cumsum(groups)]).astype(np.int64)
        self.group_where = np.array([(i, g) for i, s in enumerate(self.manifest["shards"]) for g in range(len(s["row_groups"]))],
                                    np.int64).reshape(-1, 2)
        self.rows = int(self.group_start[-1])
        self.rows_per_group = int(max(groups)) if groups else 0
        self._columns: dict[str, np.ndarray] | None = None
        self._state_pid: int | None = None
        self._lock = threading.Lock()

    # light columns ---------------------------------------------------------------------------

    @property
    def countries(self) -> list[str]:
        """Countries of the training split (all rows when the source had no split), sorted: the default class list."""
        return list(self.manifest["train_countries"])

    @property
    def split_rows(self) -> dict[str, int]:
        return {k: int(v) for k, v in self.manifest["splits"].items()}

    def columns(self) -> dict[str, np.ndarray]:
        """lat, lon (float64), country (ISO codes, a small string array per code), split (codes into SPLITS).

        Read once, column by column, shard by shard: no image bytes and no pandas objects per row.
        """
        if self._columns is not None:
            return self._columns
        fs, base = filesystem(self.location)
        lat, lon, country, split = [], [], [], []
        for name in self.shards:
            t = read_columns(fs, base, name, META_COLUMNS, self.location)
            lat.append(t.column("lat").to_numpy())
            lon.append(t.column("lon").to_numpy())
            country.append(t.column("country").combine_chunks().dictionary_encode())
            split.append(t.column("split").combine_chunks().dictionary_encode())
        codes = sorted({c for d in country for c in d.dictionary.to_pylist()})
        self.country_codes = np.array(codes, dtype=object)
        to_code = {c: i for i, c in enumerate(codes)}
        split_code = {s: i for i, s in enumerate(SPLITS)}

        def recode(chunks, table) -> np.ndarray:
            out = []
            for d in chunks:
                lut = np.array([table[v] for v in d.dictionary.to_pylist()], np.int16)
                out.append(lut[d.indices.to_numpy(zero_copy_only=False)])
            return np.concatenate(out) if out else np.zeros(0, np.int16)

        self._columns = {"lat": np.concatenate(lat), "lon": np.concatenate(lon),
                         "country": recode(country, to_code), "split": recode(split, split_code).astype(np.int8)}
        return self._columns

    def split_index(self, split: str) -> np.ndarray:
        """Global row numbers of ``split`` (``all`` for every row), in stored order."""
        if split == "all":
            return np.arange(self.rows, dtype=np.int64)
        return np.flatnonzero(self.columns()["split"] == SPLITS.index(split)).astype(np.int64)

    def group_of(self, rows: np.ndarray) -> np.ndarray:
        """Row group number of each global row."""
        return np.searchsorted(self.group_start, rows, side="right") - 1

    def frame(self, rows: np.ndarray) -> pd.DataFrame:
        """A small DataFrame of ``rows`` for reports: lat, lon, country (categorical), plus origin and source."""
        cols = self.columns()
        df = pd.DataFrame({"lat": cols["lat"][rows], "lon": cols["lon"][rows],
                           "country": pd.Categorical.from_codes(cols["country"][rows], self.country_codes.tolist())})
        for extra in ("origin", "source"):
            if extra in self.manifest.get("columns", []):
                df[extra] = self._column(extra)[rows]
        return df

    def _column(self, name: str) -> np.ndarray:
        fs, base = filesystem(self.location)
        parts = []
        for shard in self.shards:
            parts.append(read_columns(fs, base, shard, [name], self.location).column(name).to_numpy(zero_copy_only=False))
        return np.concatenate(parts)

    # images ----------------------------------------------------------------------------------

    def _state(self) -> tuple[dict, OrderedDict]:
        """This process's open shard files and row-group buffer (a forked worker starts with empty ones)."""
        with self._lock:
            if self._state_pid != os.getpid():
                self._files: dict[int, pq.ParquetFile] = {}
                self._cache: OrderedDict = OrderedDict()
                self._state_pid = os.getpid()
            return self._files, self._cache

    def _group_images(self, group: int) -> pa.BinaryArray:
        files, cache = self._state()
        hit = cache.get(group)
        if hit is not None:
            cache.move_to_end(group)
            return hit
        shard, g = (int(x) for x in self.group_where[group])
        with reading(self.location, self.shards[shard]):
            if shard not in files:
                fs, base = filesystem(self.location)
                files[shard] = pq.ParquetFile(fs.open_input_file(f"{base}/{self.shards[shard]}"))
            images = files[shard].read_row_group(g, columns=["image"]).column("image").combine_chunks()
        cache[group] = images
        while len(cache) > self.buffer:
            cache.popitem(last=False)
        return images

    def image_bytes(self, row: int) -> bytes | None:
        """The encoded image of global ``row`` (its row group is read and kept in this process's buffer)."""
        group = int(self.group_of(np.array([row]))[0])
        return self._group_images(group)[row - int(self.group_start[group])].as_py()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        for k in ("_files", "_cache", "_lock"):
            state.pop(k, None)
        state["_state_pid"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()


# --- datasets -----------------------------------------------------------------------------------


@dataclass
class PackedDataset(DecodedRows):
    """Map-style view of one split of a packed set: the same samples as :class:`~geotrainr.data.dataset.GeoDataset`.

    Random access reads a whole row group per miss: fine for evaluation and reports, which go in order;
    training goes through :class:`ShardStream`, which reads each row group once per epoch.
    """

    packed: PackedSet
    rows: np.ndarray
    transform: Callable
    classes: list[str]
    strict: bool = False
    draft_size: int | None = None

    def __post_init__(self):
        cols = self.packed.columns()
        lut = pd.Index(list(self.classes)).get_indexer(self.packed.country_codes).astype(np.int16)
        self._country = lut[cols["country"]]  # class number per global row, -1 outside the class list
        self._lat, self._lon = cols["lat"], cols["lon"]

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def frame(self) -> pd.DataFrame:
        """lat, lon, country (and origin, source) of this split's rows, for reports and prediction records."""
        return self.packed.frame(self.rows)

    def label(self, i: int) -> str:
        """How row ``i``'s image is named: where it came from when packed (path or archive:member), else its row."""
        if getattr(self, "_origins", None) is None:
            self._origins = self.packed._column("origin") if "origin" in self.packed.manifest.get("columns", []) else None
        row = int(self.rows[i])
        origin = self._origins[row] if self._origins is not None else None
        return origin if isinstance(origin, str) and origin else f"{self.packed.location}#{row}"

    def source(self, i: int) -> bytes | None:
        return self.packed.image_bytes(int(self.rows[i]))

    def target(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        row = int(self.rows[i])
        return torch.tensor(int(self._country[row])), torch.tensor((self._lat[row], self._lon[row]), dtype=torch.float32)


def batch_bounds(n: int, batch_size: int, batches: int) -> np.ndarray:
    """``batches + 1`` boundaries cutting ``n`` rows into exactly ``batches`` non-empty batches, each near ``batch_size``."""
    bounds = list(range(0, n, batch_size)) + [n]
    if len(bounds) > 2 and bounds[-1] - bounds[-2] == 1:
        del bounds[-2]  # no batch of one image (BatchNorm cannot train on it): the last batch takes it
    while len(bounds) - 1 > batches:  # more than the other ranks: merge the last two
        del bounds[-2]
    while len(bounds) - 1 < batches:  # fewer: split the largest batch
        sizes = np.diff(bounds)
        k = int(np.argmax(sizes))
        bounds.insert(k + 1, bounds[k] + int(sizes[k]) // 2)
    return np.asarray(bounds, np.int64)


def natural_batches(n: int, batch_size: int) -> int:
    """Batches of ``n`` rows cut every ``batch_size``, a last batch of one image joined to the one before."""
    k = -(-n // batch_size)
    return k - 1 if k > 1 and n % batch_size == 1 else k


def batches_per_rank(n: int, world: int, batch_size: int) -> int:
    """The batch count every rank gets: what the largest share needs, or fewer when the smallest share has fewer rows.

    Equal counts keep DDP's collectives in step; no row is dropped or repeated to get them.
    """
    small, large = n // world, -(-n // world)
    if small == 0:
        raise PackError(f"{n} rows cannot be shared among {world} processes: every process needs at least one")
    return min(natural_batches(large, batch_size), small)


class ShardStream(IterableDataset):
    """Whole training batches from a packed split, disjoint across DDP ranks and loader workers.

    Set :attr:`epoch`, :attr:`rank`, :attr:`world` and :attr:`skip` before iterating (``StreamLoader`` does).
    """

    def __init__(self, dataset: PackedDataset, batch_size: int, seed: int, shuffle: bool = True):
        self.dataset, self.batch_size, self.seed, self.shuffle = dataset, batch_size, seed, shuffle
        self.epoch, self.rank, self.world = 0, 0, 1
        self.skip: frozenset[int] = frozenset()
        self._prepared: tuple | None = None

    def __len__(self) -> int:
        """Batches this rank yields per epoch (the same on every rank)."""
        return batches_per_rank(len(self.dataset), self.world, self.batch_size)

    def order(self, epoch: int) -> np.ndarray:
        """Positions (into the split) in this epoch's order: row groups permuted, then shuffled within windows."""
        n = len(self.dataset)
        if not self.shuffle:
            return np.arange(n, dtype=np.int64)
        rng = np.random.default_rng([self.seed, epoch])
        groups = self.dataset.packed.group_of(self.dataset.rows)
        uniq, inverse = np.unique(groups, return_inverse=True)
        rank_of_group = np.empty(len(uniq), np.int64)
        rank_of_group[rng.permutation(len(uniq))] = np.arange(len(uniq))
        pos = np.argsort(rank_of_group[inverse], kind="stable")
        # a window of (buffer - 1) row groups' rows spans at most `buffer` row groups: each worker's reads fit its buffer
        window = max(1, (self.dataset.packed.buffer - 1) * self.dataset.packed.rows_per_group)
        key = (np.arange(n) // window) + rng.random(n)
        return pos[np.argsort(key, kind="stable")]

    def plan(self, epoch: int) -> list[np.ndarray]:
        """This rank's batches of ``epoch``, as positions into the split."""
        rows, bounds = self._plan_arrays(epoch)
        return [rows[a:b] for a, b in zip(bounds[:-1], bounds[1:])]

    def _plan_arrays(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """This rank's positions of ``epoch`` in batch order, and the batch boundaries."""
        if self._prepared is not None and self._prepared[0] == (epoch, self.rank, self.world):
            return self._prepared[1], self._prepared[2]
        n = len(self.dataset)
        order = self.order(epoch)
        mine = order[self.rank * n // self.world:(self.rank + 1) * n // self.world].copy()
        return mine, batch_bounds(len(mine), self.batch_size, len(self))

    def prepare(self) -> None:
        """Compute this epoch's plan once, in the loader's own process: forked workers share it instead of each
        sorting the whole split again (a million rows cost about 50 MB of temporaries per sort)."""
        self._prepared = None
        self._prepared = ((self.epoch, self.rank, self.world), *self._plan_arrays(self.epoch))

    def worker_blocks(self, batches: int, workers: int) -> list[range]:
        """Contiguous runs of batch numbers per loader worker (each worker reads its own row groups)."""
        edges = [batches * w // workers for w in range(workers + 1)]
        return [range(edges[w], edges[w + 1]) for w in range(workers)]

    def __iter__(self) -> Iterator[dict]:
        from geotrainr.data.dataset import collate_skip

        info = get_worker_info()
        wid, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        rows, bounds = self._plan_arrays(self.epoch)
        for b in self.worker_blocks(len(bounds) - 1, workers)[wid]:
            if b in self.skip:
                continue
            batch = collate_skip([self.dataset[int(i)] for i in rows[bounds[b]:bounds[b + 1]]])
            batch["stream_batch"] = b
            yield batch


class StreamLoader(DataLoader):
    """The train loader of a packed set: sets the stream's epoch, rank and resume point before each pass.

    Workers are started afresh every epoch (``persistent_workers`` off) so that each sees its epoch's plan.
    Its state is which batches of the epoch the model has had, counted by the datamodule as batches reach
    the model (not as workers prefetch them); the checkpoint carries it (the datamodule's and this loader's
    ``state_dict``, one state) and a resumed run leaves those batches out.
    """

    def __init__(self, stream: ShardStream, epoch: Callable[[], int], resume: Callable[[int, int], frozenset],
                 state: Callable[[], dict], restore: Callable[[dict], None], **kwargs):
        super().__init__(stream, batch_size=None, persistent_workers=False, **kwargs)
        self._epoch, self._resume, self._state, self._restore = epoch, resume, state, restore

    def __iter__(self):
        stream = self.dataset
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            stream.rank, stream.world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        stream.epoch = int(self._epoch())
        stream.skip = self._resume(stream.epoch, stream.world)
        stream.prepare()
        return super().__iter__()

    def __len__(self) -> int:
        stream = self.dataset
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            stream.world = torch.distributed.get_world_size()
        return len(stream)

    def state_dict(self) -> dict:
        return self._state()

    def load_state_dict(self, state_dict: dict) -> None:
        self._restore(state_dict)


# --- packing ------------------------------------------------------------------------------------


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

    from geotrainr.preprocess import decode

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

    from geotrainr.preprocess import register_image_openers

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
    from geotrainr.data.index import open_image_source

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
    from geotrainr.files import atomic_path

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
    from geotrainr.files import write_text_atomic

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
    progress: Callable[[int, int], None] | None = None,
) -> PackResult:
    """Write ``index`` (files, zip members or embedded bytes) as a packed set at ``out`` (a folder or a URL).

    Resumable: shards are written one by one, each whole or not at all; a rerun with the same index
    and settings keeps the finished ones. The manifest is written last, so a reader never takes an
    unfinished pack for a finished one. ``max_side`` re-encodes larger images as JPEGs of ``quality``.
    """
    from geotrainr.data.datamodule import resolve_index
    from geotrainr.data.index import assign_splits, index_root, read_index, rows_outside, validate_index

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
    if not _is_url(out) and Path(out).resolve() == src.resolve():
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


_CTX: dict | None = None


def _write_shard_forked(job: tuple) -> tuple:
    """A pool worker's shard: the context is inherited through fork, not pickled per task."""
    k, rows = job
    return _write_shard((k, rows, _CTX))

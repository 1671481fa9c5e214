"""Where a packed set lives: a local folder or an object-storage URL opened through fsspec, with storage errors
turned into one line that never carries a credential."""

from __future__ import annotations

import functools
import importlib
import os
from collections.abc import Iterator
from contextlib import contextmanager

import pyarrow as pa
import pyarrow.parquet as pq

from geotrainr.data.packed.manifest import PACK_MANIFEST as MANIFEST
from geotrainr.data.packed.manifest import PACK_PARTIAL as PARTIAL
from geotrainr.data.schema import IndexValidationError
from geotrainr.data.packed.manifest import unfinished_pack
from geotrainr.data.packed.manifest import read_json_bounded


FORMAT = "geotrainr-pack"


VERSION = 1


#: columns the training path reads (besides the images)
META_COLUMNS = ["lat", "lon", "country", "split"]


class PackError(IndexValidationError):
    """A packed set that cannot be read or written as asked."""


def is_url(location: str) -> bool:
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
    if not is_url(location):
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
    if is_url(location):
        check_no_credentials(location)  # before any message could quote the URL
    if not is_url(location) and not os.path.isdir(location):
        return False
    fs, base = filesystem(location)
    info = fs.get_file_info([f"{base}/{MANIFEST}", f"{base}/{PARTIAL}"])
    if info[0].type == pa.fs.FileType.File:
        return True
    if info[1].type == pa.fs.FileType.File:
        raise PackError(unfinished_pack(location))
    if is_url(location):
        if fs.get_file_info(base).type == pa.fs.FileType.NotFound:
            raise PackError(f"{location}: nothing there (no such prefix); pack a set there first with geotrainr pack")
        raise PackError(f"{location}: no {MANIFEST} there, so not a packed set; only sets written by geotrainr pack "
                        "are read from URLs")
    return False


def read_json(fs: pa.fs.FileSystem, path: str) -> dict:
    """A pack's JSON sidecar, bounded (a regular file of at most MAX_MANIFEST_BYTES)."""

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

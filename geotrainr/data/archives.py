"""Images inside zip archives, read in place (OSV-5M ships about 5 M images as zip files of ``{id}.jpg``).

An index row names the archive (``archive``, relative to the index folder) and the
``member`` inside it. Each process keeps its own open :class:`zipfile.ZipFile` per
archive: opening one reads its central directory (tens of thousands of entries), so
it is done once per worker, not once per image. A forked worker inherits the parent's
file objects, whose file offset it would share: the cache is keyed by process id and
starts empty in every new process.
"""

from __future__ import annotations

import os
import threading
import zipfile
from pathlib import Path

from geotrainr.errors import GeotrainrError


class ArchiveError(GeotrainrError, OSError):
    """An archive or one of its members cannot be read."""


_lock = threading.Lock()
_pid: int | None = None
_open: dict[str, zipfile.ZipFile] = {}


def open_archive(path: str | os.PathLike) -> zipfile.ZipFile:
    """The open archive at ``path`` for this process (opened on first use, reopened after a fork)."""
    global _pid
    key = os.path.normpath(os.fspath(path))
    with _lock:
        if _pid != os.getpid():  # a fresh process (or a forked worker): never reuse the parent's handles
            _open.clear()
            _pid = os.getpid()
        zf = _open.get(key)
        if zf is None:
            try:
                zf = zipfile.ZipFile(key)
            except FileNotFoundError:
                raise ArchiveError(f"{key}: no such archive") from None
            except (zipfile.BadZipFile, OSError) as e:
                raise ArchiveError(f"{key}: not a readable zip archive ({e})") from None
            _open[key] = zf
        return zf


def read_member(archive: str | os.PathLike, member: str) -> bytes:
    """The bytes of ``member`` in ``archive``."""
    zf = open_archive(archive)
    try:
        return zf.read(member)
    except KeyError:
        raise ArchiveError(f"{archive}: no member {member!r}") from None


def member_size(archive: str | os.PathLike, member: str) -> int:
    """Uncompressed size of ``member`` (from the central directory, nothing decompressed)."""
    try:
        return open_archive(archive).getinfo(member).file_size
    except KeyError:
        raise ArchiveError(f"{archive}: no member {member!r}") from None


def list_members(archive: str | os.PathLike, extensions: tuple[str, ...]) -> list[str]:
    """Names of the files in ``archive`` whose extension is one of ``extensions`` (lower case, with dot)."""
    return [n for n in open_archive(archive).namelist() if not n.endswith("/") and Path(n).suffix.lower() in extensions]


def close_all() -> None:
    """Close this process's open archives (tests, or before rewriting an archive)."""
    with _lock:
        if _pid == os.getpid():
            for zf in _open.values():
                zf.close()
        _open.clear()

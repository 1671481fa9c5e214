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
import zlib
from pathlib import Path

from geotrainr.data.trust import MAX_COMPRESSION_RATIO, MAX_IMAGE_BYTES, RATIO_CHECK_BYTES, regular_file_size
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
                regular_file_size(key, what="zip archive")  # a FIFO would block open()
                zf = zipfile.ZipFile(key)
            except FileNotFoundError:
                raise ArchiveError(f"{key}: no such archive") from None
            except (zipfile.BadZipFile, OSError) as e:
                raise ArchiveError(f"{key}: not a readable zip archive ({e})") from None
            _open[key] = zf
        return zf


def member_info(archive: str | os.PathLike, member: str) -> zipfile.ZipInfo:
    """``member``'s directory entry, refused when its declared size exceeds what an image may hold or it is
    compressed absurdly well (a bomb: a small image followed by gigabytes of zeros).

    The declared size is a hard cap: :mod:`zipfile` never inflates a member past it (and fails its CRC).
    """
    try:
        info = open_archive(archive).getinfo(member)
    except KeyError:
        raise ArchiveError(f"{archive}: no member {member!r}") from None
    if info.file_size > MAX_IMAGE_BYTES:
        raise ArchiveError(f"{archive}: member {member!r} declares {info.file_size:,} bytes, more than an image may "
                           f"hold ({MAX_IMAGE_BYTES:,})")
    if info.file_size > RATIO_CHECK_BYTES and info.file_size > MAX_COMPRESSION_RATIO * max(info.compress_size, 1):
        raise ArchiveError(f"{archive}: member {member!r} is compressed {info.file_size / max(info.compress_size, 1):,.0f} "
                           f"times (an image compresses far less): refused as a zip bomb")
    return info


def open_member(archive: str | os.PathLike, member: str):
    """A seekable stream of ``member`` (inflated as it is read, never whole), after :func:`member_info`'s checks."""
    info = member_info(archive, member)
    try:
        return open_archive(archive).open(info)
    except (zipfile.BadZipFile, NotImplementedError, RuntimeError) as e:
        raise ArchiveError(f"{archive}: member {member!r} cannot be read ({e})") from None


def read_member(archive: str | os.PathLike, member: str) -> bytes:
    """The bytes of ``member`` in ``archive`` (at most :data:`~geotrainr.data.trust.MAX_IMAGE_BYTES`)."""
    with open_member(archive, member) as f:
        try:
            return f.read()
        except (zipfile.BadZipFile, EOFError, OSError, zlib.error) as e:
            raise ArchiveError(f"{archive}: member {member!r} cannot be read ({e})") from None


def member_size(archive: str | os.PathLike, member: str) -> int:
    """Uncompressed size of ``member`` (from the central directory, nothing decompressed; refused when absurd)."""
    return member_info(archive, member).file_size


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

"""Files: atomic writes, and bounded reads of files that come from somewhere else.

Atomic writes: a reader never sees half a file, and a failed write leaves the old one.

``durable=True`` also survives a power cut: the data is flushed to the disk
(fsync) before the rename, and the folder after it, so that after a crash the
name points at either the old file or the whole new one, never at a torn or
empty file. It costs a disk flush per write (see docs/performance.md).
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from geotrainr.errors import GeotrainrError


def fsync_dir(path: str | os.PathLike) -> None:
    """Flush a folder's entries (a rename or a new file in it) to the disk; a no-op where folders cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # pragma: no cover - Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some file systems refuse fsync on folders
        pass
    finally:
        os.close(fd)


def fsync_file(path: str | os.PathLike) -> None:
    """Flush an already written file's data to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _tmp_name(path: Path) -> Path:
    import threading

    return path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")


def write_bytes_atomic(path: str | os.PathLike, data: bytes, durable: bool = False) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder, then rename."""
    with atomic_path(path, durable) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text_atomic(path: str | os.PathLike, text: str, durable: bool = False) -> Path:
    """Write ``text`` (UTF-8) to ``path`` through a temporary file in the same folder, then rename."""
    return write_bytes_atomic(path, text.encode("utf-8"), durable)


def replace_folder(tmp: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Move a finished folder ``tmp`` to ``out``, replacing any folder or file there, so ``out`` is never half-written."""
    tmp, out = Path(tmp), Path(out)
    if out.exists():
        old = out.with_name(f".{out.name}.{os.getpid()}.old")
        os.replace(out, old)
        os.replace(tmp, out)
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)
    else:
        os.replace(tmp, out)
    return out


@contextmanager
def staged_folder(out: str | os.PathLike) -> Iterator[Path]:
    """A fresh folder beside ``out`` to fill; it replaces ``out`` when the block succeeds and is removed when it fails,
    so ``out`` is either what was there or the whole new folder (exports, demo data, sharded indexes).

    Its permissions are an ordinary folder's (``mkdtemp`` alone makes it private).
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)
    try:
        yield tmp
        replace_folder(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class atomic_path:  # noqa: N801 - used as a context manager, like open()
    """A temporary path beside ``path`` for a writer that wants a file name (pyarrow, zipfile, PIL).

    ``with atomic_path(out) as tmp: write(tmp)`` renames ``tmp`` to ``out`` when the block succeeds
    and removes it when it fails, so ``out`` is either the old file or the whole new one.
    """

    def __init__(self, path: str | os.PathLike, durable: bool = False):
        self.path, self.durable = Path(path), durable
        self.tmp = _tmp_name(self.path)

    def __enter__(self) -> Path:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                if self.durable:
                    fsync_file(self.tmp)
                os.replace(self.tmp, self.path)
                if self.durable:
                    fsync_dir(self.path.parent)
        finally:
            self.tmp.unlink(missing_ok=True)


# --- bounded reading --------------------------------------------------------------------------------


class UnreadableFileError(GeotrainrError, OSError):
    """A file that is not a regular file, or larger than what it may be."""


def _a(what: str) -> str:
    return f"{'an' if what[:1].lower() in 'aeiou' else 'a'} {what}"


def regular_file(path: str | os.PathLike, what: str = "file", limit: int | None = None,
                 error: type[GeotrainrError] = UnreadableFileError) -> os.stat_result:
    """``os.stat`` of ``path`` (symlinks followed), before anything opens it: a regular file of at most ``limit`` bytes.

    Opening a FIFO would block and ``/dev/zero`` never ends, so both are one ``error`` line here. A missing
    file raises ``error`` too ("no such ...") unless ``error`` is None-like for callers that list it themselves.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise error(f"{path}: no such {what}") from None
    except OSError as e:
        raise error(f"{path}: cannot read this {what} ({e.strerror or e})") from None
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{path}: not a regular file ({_a(what)} must be one)")
    if limit is not None and st.st_size > limit:
        raise error(f"{path}: {st.st_size:,} bytes, more than {_a(what)} may hold ({limit:,}); refused")
    return st


def open_limited(path: str | os.PathLike, limit: int, what: str = "file", error: type[GeotrainrError] = UnreadableFileError):
    """A binary file object of a regular file of at most ``limit`` bytes, opened non-blocking and checked again
    on the open descriptor (the path may have been swapped for a FIFO in between)."""
    regular_file(path, what, limit, error)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as e:
        raise error(f"{path}: cannot read this {what} ({e.strerror or e})") from None
    f = os.fdopen(fd, "rb")
    if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
        f.close()
        raise error(f"{path}: not a regular file ({_a(what)} must be one)")
    return f


def read_limited(path: str | os.PathLike, limit: int, what: str = "file",
                 error: type[GeotrainrError] = UnreadableFileError) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes (also when it grew since it was checked)."""
    with open_limited(path, limit, what, error) as f:
        size = os.fstat(f.fileno()).st_size
        chunks, total = [], 0
        while total <= limit:  # in chunks: read(limit) would allocate the whole limit at once
            chunk = f.read(min(limit + 1 - total, max(size, 1 << 16)))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    if total > limit:
        raise error(f"{path}: more than {_a(what)} may hold ({limit:,} bytes); refused")
    return b"".join(chunks)

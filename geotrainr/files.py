"""Atomic file writes: a reader never sees half a file, and a failed write leaves the old one.

``durable=True`` also survives a power cut: the data is flushed to the disk
(fsync) before the rename, and the folder after it, so that after a crash the
name points at either the old file or the whole new one, never at a torn or
empty file. It costs a disk flush per write (see docs/performance.md).
"""

from __future__ import annotations

import os
from pathlib import Path


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
    import shutil

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

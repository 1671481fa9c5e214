"""Bounded reading of files that come from somewhere else: regular files only, a size limit per kind.

``os.stat`` comes before ``open``: opening a FIFO would block and ``/dev/zero`` never ends. The
file is opened non-blocking and checked again on the open descriptor (it may have been swapped
in between), then read up to its limit and no further.
"""

from __future__ import annotations

import os
import stat

from geotrainr.artifact.record import CheckpointError

KIB, MIB, GIB = 1 << 10, 1 << 20, 1 << 30
#: config.json of an exported model: its record, hyper-parameters and geocells (a few MB for 10^4 cells)
CONFIG_LIMIT = 64 * MIB
#: a checkpoint or weights file: the largest timm backbones with optimiser states stay well below it
WEIGHTS_LIMIT = 32 * GIB
#: the pickle inside a checkpoint: the record, hyper-parameters and the structure of the states, no tensor data
PICKLE_LIMIT = 256 * MIB
#: a safetensors header (JSON naming every tensor); the safetensors library refuses larger ones too
SAFETENSORS_HEADER_LIMIT = 100 * MIB


def regular_file(path: str | os.PathLike, what: str) -> os.stat_result:
    """``os.stat`` of ``path`` (symlinks followed), which must be a regular file; one line otherwise."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such {what}") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read this {what} ({e.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        raise CheckpointError(f"{path}: not a regular file (a {what} must be one)")
    return st


def check_size(path: str | os.PathLike, size: int, limit: int, what: str) -> None:
    if size > limit:
        raise CheckpointError(f"{path}: {size:,} bytes, more than a {what} may hold ({limit:,}); refused")


def read_limited(path: str | os.PathLike, limit: int, what: str) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes."""
    st = regular_file(path, what)
    check_size(path, st.st_size, limit, what)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read this {what} ({e.strerror})") from None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise CheckpointError(f"{path}: not a regular file (a {what} must be one)")
        chunks, total = [], 0
        while total <= limit:  # in chunks: read(limit) would allocate the whole limit at once
            chunk = f.read(min(limit + 1 - total, max(st.st_size, 1 << 16)))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    check_size(path, total, limit, what)
    return b"".join(chunks)


def open_limited(path: str | os.PathLike, limit: int, what: str):
    """A binary file object of a regular file of at most ``limit`` bytes (for readers that stream)."""
    st = regular_file(path, what)
    check_size(path, st.st_size, limit, what)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    f = os.fdopen(fd, "rb")
    if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
        f.close()
        raise CheckpointError(f"{path}: not a regular file (a {what} must be one)")
    return f


__all__ = ["CONFIG_LIMIT", "PICKLE_LIMIT", "SAFETENSORS_HEADER_LIMIT", "WEIGHTS_LIMIT", "check_size", "open_limited",
           "read_limited", "regular_file"]

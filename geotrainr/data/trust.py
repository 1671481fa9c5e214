"""What importing trusts: the two checks every data door makes (see docs/index-format.md, "What importing trusts").

1. Containment: an image named by a source (a path column, an id, a folder entry, a symlink) must lie
   inside the dataset it came from: not an absolute path, not a path whose ``..`` leaves the root, not a
   symlink whose target (its realpath) leaves it. :func:`outside_reason` is the one test every reader,
   ``pack`` and ``export-dataset`` apply.
2. Bounded reading: a file is opened only once ``os.stat`` says it is a regular file (a FIFO would block
   ``open``; ``/dev/zero`` never ends), and only up to a size suited to what it is.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from geotrainr.files import UnreadableFileError, read_limited, regular_file

#: the largest image (a file, a zip member's declared size, embedded bytes) any importer reads
MAX_IMAGE_BYTES = 64 * 2**20
#: a zip member larger than this must not be compressed more than MAX_COMPRESSION_RATIO times (images barely compress)
RATIO_CHECK_BYTES = 2**20
MAX_COMPRESSION_RATIO = 100
#: a manifest or other JSON sidecar of a data set
MAX_MANIFEST_BYTES = 16 * 2**20

_SEPARATORS = re.compile(r"[\\/]")


class UntrustedInputError(UnreadableFileError):
    """A file an importer was asked to read is not a regular file, or is larger than what it may be."""


def regular_file_size(path: str | os.PathLike, limit: int | None = None, what: str = "file") -> int:
    """Size of ``path`` after checking (``os.stat``, before any open) that it is a regular file of at most ``limit`` bytes.

    A missing file raises :class:`FileNotFoundError` (readers list it as "no such file")."""
    os.stat(path)
    return regular_file(path, what, limit, UntrustedInputError).st_size


def read_bounded(path: str | os.PathLike, limit: int, what: str = "file") -> bytes:
    """The bytes of regular file ``path``, refusing one over ``limit`` bytes (also if it grew since the check)."""
    return read_limited(path, limit, what, UntrustedInputError)


def within(path: str | os.PathLike, root: str | os.PathLike) -> bool:
    """Whether ``path``, symlinks followed, lies inside ``root`` (symlinks followed too)."""
    real, base = os.path.realpath(path), os.path.realpath(root)
    return real == base or real.startswith(base.rstrip(os.sep) + os.sep)


def outside_reason(root: str | os.PathLike, given: str) -> str | None:
    """Why ``given`` (a path as a source writes it, relative to ``root``) is not inside ``root``; None when it is.

    Absolute paths are refused outright; ``..`` is allowed only while it stays inside; the realpath
    (every symlink on the way followed) must stay inside too.
    """
    if not isinstance(given, str) or not given:
        return "no path"
    if os.path.isabs(given) or given.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", given):
        return "absolute path (outside the dataset)"
    parts = [p for p in _SEPARATORS.split(given) if p not in ("", ".")]
    depth = 0
    for p in parts:
        depth += -1 if p == ".." else 1
        if depth < 0:
            return "path leaves the dataset (..)"
    if not within(Path(root, *parts), root):
        return "symlink leading outside the dataset"
    return None

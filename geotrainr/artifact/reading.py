"""How much of each model file is read: limits per kind of file, with :mod:`geotrainr.files`' bounded reading.

Every file is checked to be a regular file before it is opened (a FIFO would block, ``/dev/zero``
never ends) and read up to its limit and no further; failures are one :class:`CheckpointError` line.
"""

from __future__ import annotations

import os
from functools import partial

from geotrainr import files
from geotrainr.artifact.record import CheckpointError

MIB, GIB = 1 << 20, 1 << 30
#: config.json of an exported model: its record, hyper-parameters and geocells (a few MB for 10^4 cells)
CONFIG_LIMIT = 64 * MIB
#: a checkpoint or weights file: the largest timm backbones with optimiser states stay well below it
WEIGHTS_LIMIT = 32 * GIB
#: the pickle inside a checkpoint: the record, hyper-parameters and the structure of the states, no tensor data
PICKLE_LIMIT = 256 * MIB
#: a safetensors header (JSON naming every tensor); the safetensors library refuses larger ones too
SAFETENSORS_HEADER_LIMIT = 100 * MIB

regular_file = partial(files.regular_file, error=CheckpointError)
open_limited = partial(files.open_limited, error=CheckpointError)
read_limited = partial(files.read_limited, error=CheckpointError)


def check_size(path: str | os.PathLike, size: int, limit: int, what: str) -> None:
    if size > limit:
        raise CheckpointError(f"{path}: {size:,} bytes, more than {files._a(what)} may hold ({limit:,}); refused")


__all__ = ["CONFIG_LIMIT", "PICKLE_LIMIT", "SAFETENSORS_HEADER_LIMIT", "WEIGHTS_LIMIT", "check_size", "open_limited",
           "read_limited", "regular_file"]

"""Readers of public dataset layouts, each returning index rows (the contract in ``geotrainr.data.index``).

Every reader takes the source, the folder the index will live in (paths are written
relative to it) and an optional column mapping, and returns :class:`SourceRows`: the
rows plus the items it skipped with the reason (a photo without GPS, an id without
an image). ``geotrainr index --from FORMAT`` and the benchmark commands call them.
"""

from __future__ import annotations

from collections.abc import Callable

from geotrainr.data.sources.common import SourceRows, parse_columns
from geotrainr.data.schema import IndexValidationError

#: format name -> module:function; imported on use so that ``--help`` stays fast.
FORMATS: dict[str, tuple[str, str]] = {
    "csv": ("geotrainr.data.sources.folders", "read_csv_source"),
    "osv5m": ("geotrainr.data.sources.osv5m", "read_osv5m"),
    "exif": ("geotrainr.data.sources.exif", "read_exif"),
    "im2gps3k": ("geotrainr.data.sources.benchmarks", "read_im2gps3k"),
    "yfcc4k": ("geotrainr.data.sources.benchmarks", "read_yfcc4k"),
    "hf": ("geotrainr.data.sources.hf", "read_hf"),
}


def reader(name: str) -> Callable[..., SourceRows]:
    """The reader function of format ``name``."""
    import importlib

    if name not in FORMATS:
        raise IndexValidationError(f"unknown format {name!r}; use one of {', '.join(FORMATS)}")
    module, func = FORMATS[name]
    return getattr(importlib.import_module(module), func)


__all__ = ["FORMATS", "SourceRows", "parse_columns", "reader"]

"""Data: the parquet index, the dataset, the datamodule and the offline demo data."""

from typing import Any

__all__ = ["GeoDataModule"]


def __getattr__(name: str) -> Any:
    # Lazy: importing Lightning costs seconds, and `geotrainr index`/`scrape` do not need it.
    if name == "GeoDataModule":
        from geotrainr.data.datamodule import GeoDataModule

        return GeoDataModule
    raise AttributeError(f"module 'geotrainr.data' has no attribute {name!r}")

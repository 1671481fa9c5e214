"""Data: the parquet index, the dataset, the datamodule and the offline demo data."""

from geotrainr.data.datamodule import GeoDataModule

__all__ = ["GeoDataModule"]

"""Compatibility imports: the inference API now lives in one module per concept.

- :mod:`geotrainr.checkpoints`: reading, checking and loading checkpoints;
- :mod:`geotrainr.preprocess`: decoding, transform and normalisation of photos;
- :mod:`geotrainr.locator`: :class:`Locator`, batched prediction from photos;
- :mod:`geotrainr.predictions`: :class:`Guess`, the one prediction record, and its writers;
- :mod:`geotrainr.multiview`: combining several views of a place;
- :mod:`geotrainr.photos`: photo lists and CSV listings with truth.

Existing code that imports these names from ``geotrainr.inference`` keeps working.
"""

from geotrainr.checkpoints import CheckpointError, copy_backbone_weights, load_model, read_checkpoint
from geotrainr.locator import DeviceError, Locator, auto_device, resolve_device
from geotrainr.multiview import auto_group_key, group
from geotrainr.photos import ImageListError, attach_truth, collect_images, match_listing, read_listing
from geotrainr.predictions import CountryProb, Guess, PredictionRecord, make_guesses, write_records
from geotrainr.preprocess import IMAGE_SUFFIXES, ImageReadError, Preprocessor, image_label

__all__ = [
    "CheckpointError", "copy_backbone_weights", "load_model", "read_checkpoint", "DeviceError", "Locator",
    "auto_device", "resolve_device", "auto_group_key", "group", "ImageListError", "attach_truth", "collect_images",
    "match_listing", "read_listing", "CountryProb", "Guess", "PredictionRecord", "make_guesses", "write_records",
    "IMAGE_SUFFIXES", "ImageReadError", "Preprocessor", "image_label",
]

"""The model artifact: what a trained model is on disk, read as plain data and checked, knowing no task.

- :mod:`geotrainr.artifact.record`: the ``geotrainr`` record (format version, task kind, class list,
  backbone, preprocessing, geocells) and its schema, checked before anything is built from it;
- :mod:`geotrainr.artifact.reading`: bounded reading: regular files only, a size limit per kind of file;
- :mod:`geotrainr.artifact.storage`: a checkpoint (``.ckpt``) or an exported folder (``config.json`` +
  ``model.safetensors``) read into one :class:`Artifact`.

Turning an artifact into a model is :func:`geotrainr.loading.load_model`'s (above the tasks).
"""

from geotrainr.artifact.storage import Artifact, copy_backbone_weights, read_checkpoint, read_exported, read_weights
from geotrainr.artifact.record import (
    CONFIG_NAME,
    FORMAT_VERSION,
    TASK_CLASSES,
    TASK_KINDS,
    WEIGHTS_NAME,
    CheckpointError,
    check_countries,
    validate_record,
)

__all__ = ["Artifact", "CONFIG_NAME", "FORMAT_VERSION", "TASK_CLASSES", "TASK_KINDS", "WEIGHTS_NAME", "CheckpointError",
           "check_countries", "copy_backbone_weights", "read_checkpoint", "read_exported", "read_weights", "validate_record"]

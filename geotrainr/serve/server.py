"""The HTTP server: LitServe's inference workers (:class:`LocateAPI`) and API-server endpoints (:class:`PhotoSpec`),
its settings, and a clean stop on SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import io
import math
import os
import signal
import subprocess
import time
import urllib.request
import uuid
from dataclasses import dataclass
from typing import Any

import litserve as ls
from litserve.specs.base import LitSpec
from litserve.utils import LitAPIStatus, ResponseBufferItem
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from geotrainr.locator import resolve_device
from geotrainr.serve.answers import answer, load_locator, model_card
from geotrainr.serve.page import WEB_FILES, basemap_jpeg, has_basemap, web_file
from geotrainr.serve.uploads import Limits, Refused, ServeError, first_line, read_photos

#: LitServe binds only these addresses.
HOSTS = ("127.0.0.1", "0.0.0.0", "::")


# --- reading and checking uploads (API server side) ---------------------------------------------------


# --- the inference worker ---------------------------------------------------------------------------------


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
                    out.append({"status": 500, "error": f"The model failed on this request ({first_line(e)})."})
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


def wait_until_healthy(url: str, timeout: float, process: subprocess.Popen | None = None) -> bool:
    """Whether the server at ``url`` answers ``GET /health`` with 200 within ``timeout`` seconds; False as soon as
    ``process`` (the server's own) has exited. For scripts and tests that start ``geotrainr serve`` themselves."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return True
        except OSError:  # refused while it starts, an HTTP error, a slow answer: ask again
            pass
        time.sleep(0.3)
    return False


"""A fake Street View Static API on 127.0.0.1 for tests: metadata JSON, real JPEGs, injected faults.

It answers like Google's service: ``<base>/metadata?location=..&key=..`` gives
``{"status": "OK", "pano_id", "location": {"lat", "lng"}, "date", "copyright"}``
or ``ZERO_RESULTS``; ``<base>?pano=..&size=..&heading=..`` gives a JPEG of the
requested size, or HTTP 404 with ``return_error_code=true`` where there is no
imagery. A wrong key or signature gives REQUEST_DENIED (HTTP 403 for images).

Coverage is deterministic: the world is cut into cells of ``cell_deg``; a
cell has one panorama (or none, or only an indoor one that ``source=outdoor``
leaves out), so the expected rows of any list of places can be computed with
:meth:`FakeStreetView.truth`. Faults are injected by request count, per kind:
``faults={"metadata": ["ok", "oql"], "image": ["ok", "429", "truncated"]}``
makes request n of a kind answer ``pattern[(n - 1) % len(pattern)]``.

Run it by hand: ``python tests/fake_streetview.py --key K`` prints its URL.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import io
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

BASE_PATH = "/maps/api/streetview"
FAULTS = ("ok", "429", "500", "503", "oql", "unknown", "slow", "truncated", "cut", "denied",
          # hostile answers: a drip of one byte per drip_s, a huge body announced, wrong types and sizes
          "drip", "huge", "int_date", "object_date", "long_pano", "gif", "bomb_png", "big_jpeg", "png", "html")


class FakeStreetView:
    """The server; use as a context manager or call :meth:`start` / :meth:`stop`."""

    def __init__(
        self,
        key: str,
        secret: str | None = None,
        faults: dict[str, list[str]] | None = None,
        slow_s: float = 1.0,
        image_latency_s: float = 0.0,
        miss_every: int = 5,
        indoor_every: int = 7,
        cell_deg: float = 0.001,
        denied_after: int | None = None,
        port: int = 0,
        drip_s: float = 1.0,
    ):
        self.key = key
        self.secret = base64.urlsafe_b64decode(secret) if secret else None
        self.faults = {k: list(v) for k, v in (faults or {}).items()}
        for pattern in self.faults.values():
            for f in pattern:
                if f not in FAULTS:
                    raise ValueError(f"unknown fault {f!r}; known: {FAULTS}")
        self.slow_s = slow_s
        self.image_latency_s = image_latency_s
        self.miss_every = miss_every
        self.indoor_every = indoor_every
        self.cell_deg = cell_deg
        self.denied_after = denied_after
        self.drip_s = drip_s
        self.dripped = 0  # bytes sent by "drip" answers, all requests together
        self.drips_started = 0
        self.long_ids: set[str] = set()
        self.log: list[dict] = []
        self.counts = {"metadata": 0, "image": 0, "other": 0}
        self._lock = threading.Lock()
        self._jpegs: dict[tuple, bytes] = {}
        self._httpd = ThreadingHTTPServer(("127.0.0.1", port), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.fake = self  # type: ignore[attr-defined]
        self._thread: threading.Thread | None = None

    # --- lifecycle -----------------------------------------------------------

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{BASE_PATH}"

    def start(self) -> FakeStreetView:
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> FakeStreetView:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- ground truth --------------------------------------------------------

    def _cell(self, lat: float, lon: float) -> tuple[int, int]:
        return round(lat / self.cell_deg), round(lon / self.cell_deg)

    def truth(self, lat: float, lon: float, source: str = "outdoor") -> dict | None:
        """The panorama the metadata reports for a location, or None (ZERO_RESULTS)."""
        ci, cj = self._cell(lat, lon)
        h = int.from_bytes(hashlib.sha1(f"cell:{ci},{cj}".encode()).digest()[:8], "big")
        if h % self.miss_every == 0:
            return None
        indoor = h % self.indoor_every == 1
        if indoor and source == "outdoor":
            return None
        prefix = b"indoor" if indoor else b"pano"
        pano_id = base64.urlsafe_b64encode(hashlib.sha1(prefix + f"{ci},{cj}".encode()).digest()).decode()[:22]
        if indoor:
            pano_id = "IN" + pano_id[2:]
        off_lat = ((h >> 8) % 100 - 50) / 200 * self.cell_deg
        off_lon = ((h >> 16) % 100 - 50) / 200 * self.cell_deg
        return {
            "pano_id": pano_id,
            "lat": round(ci * self.cell_deg + off_lat, 7),
            "lng": round(cj * self.cell_deg + off_lon, 7),
            "date": f"{2008 + h % 16}-{1 + (h >> 24) % 12:02d}",
            "indoor": indoor,
        }

    def pano_by_id(self, pano_id: str) -> bool:
        return len(pano_id) == 22 or pano_id in self.long_ids

    def long_pano_id(self, pano_id: str) -> str:
        """A 300+ character id for the same panorama (the "long_pano" fault)."""
        long_id = pano_id + "." + "x" * 300
        with self._lock:
            self.long_ids.add(long_id)
        return long_id

    def jpeg(self, pano_id: str, heading: float, width: int, height: int, fov: float, pitch: float) -> bytes:
        """A real JPEG that differs by panorama and heading."""
        key = (pano_id, heading, width, height, fov, pitch)
        with self._lock:
            if key in self._jpegs:
                return self._jpegs[key]
        from PIL import Image, ImageDraw

        d = hashlib.sha1(f"{pano_id}:{heading:g}".encode()).digest()
        im = Image.new("RGB", (width, height), (d[0], d[1], d[2]))
        draw = ImageDraw.Draw(im)
        draw.rectangle([width // 4, height // 2, 3 * width // 4, height - 1], fill=(d[3], d[4], d[5]))
        draw.line([0, height // 2, width, height // 2 - int(pitch)], fill=(255, 255, 255), width=2)
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=85)
        data = buf.getvalue()
        with self._lock:
            self._jpegs[key] = data
        return data

    # --- faults --------------------------------------------------------------

    def next_request(self, kind: str) -> tuple[int, str]:
        with self._lock:
            self.counts[kind] = self.counts.get(kind, 0) + 1
            n = self.counts[kind]
            total = self.counts["metadata"] + self.counts["image"]
        if self.denied_after is not None and kind != "other" and total > self.denied_after:
            return n, "denied"
        pattern = self.faults.get(kind)
        return n, (pattern[(n - 1) % len(pattern)] if pattern else "ok")

    def record(self, entry: dict) -> None:
        with self._lock:
            self.log.append(entry)

    def requests(self, kind: str, status: int | None = None) -> list[dict]:
        with self._lock:
            return [e for e in self.log if e["kind"] == kind and (status is None or e["status"] == status)]

    def check_auth(self, raw_path: str, params: dict) -> str | None:
        """None when key and signature are right, else the REQUEST_DENIED message."""
        if params.get("key") != self.key:
            return "The provided API key is invalid."
        if self.secret is not None:
            if "signature" not in params or "&signature=" not in raw_path:
                return "This request must be signed."
            unsigned, _, sig = raw_path.rpartition("&signature=")
            want = base64.urlsafe_b64encode(hmac.new(self.secret, unsigned.encode(), hashlib.sha1).digest()).decode()
            if not hmac.compare_digest(want, sig):
                return "Unable to authenticate the request. The signature is invalid."
        return None


class _Handler(BaseHTTPRequestHandler):
    server_version = "FakeStreetView/1.0"

    def log_message(self, *args) -> None:  # quiet: tests read fake.log instead
        pass

    def _send(self, status: int, body: bytes, ctype: str, fault: str = "ok", extra: dict | None = None) -> None:
        fake: FakeStreetView = self.server.fake  # type: ignore[attr-defined]
        try:
            if fault == "drip":  # headers and body one byte at a time, forever as far as a client can tell
                with fake._lock:
                    fake.drips_started += 1
                self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: " + ctype.encode() + b"\r\n")
                self.wfile.flush()
                for _ in range(100_000):
                    self.wfile.write(b"X")
                    self.wfile.flush()
                    with fake._lock:
                        fake.dripped += 1
                    time.sleep(fake.drip_s)
                return
            if fault == "huge":  # 300 MB announced; a client that reads it all waits and swells
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(300_000_000))
                self.end_headers()
                for _ in range(300):
                    self.wfile.write(b" " * 1_000_000)
                return
            if fault == "slow":
                time.sleep(fake.slow_s)
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            for k, v in (extra or {}).items():
                self.send_header(k, v)
            if fault == "truncated":
                body = body[: len(body) // 2]
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if fault == "cut":
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError, OSError):
            pass  # the client gave up (timeout): fine

    def _json(self, data: dict, fault: str = "ok") -> None:
        self._send(200, json.dumps(data).encode(), "application/json; charset=UTF-8", fault)

    def do_GET(self) -> None:  # noqa: N802 - http.server API
        fake: FakeStreetView = self.server.fake  # type: ignore[attr-defined]
        parts = urlsplit(self.path)
        params = dict(parse_qsl(parts.query, keep_blank_values=True))
        kind = {BASE_PATH + "/metadata": "metadata", BASE_PATH: "image"}.get(parts.path, "other")
        n, fault = fake.next_request(kind)
        public = {k: v for k, v in params.items() if k not in ("key", "signature")}
        entry = {"kind": kind, "n": n, "fault": fault, "params": public, "status": 200}
        try:
            if kind == "other":
                entry["status"] = 404
                self._send(404, b"<html><body>Not Found</body></html>", "text/html")
                return
            denied = fake.check_auth(self.path, params)
            if fault == "denied" and denied is None:
                denied = "This API project is not authorized to use this API."
            if kind == "metadata":
                self._metadata(fake, params, fault, denied, entry)
            else:
                self._image(fake, params, fault, denied, entry)
        finally:
            fake.record(entry)

    def _metadata(self, fake: FakeStreetView, params: dict, fault: str, denied: str | None, entry: dict) -> None:
        if denied:
            entry["status"] = "REQUEST_DENIED"
            return self._json({"error_message": denied, "status": "REQUEST_DENIED"})
        if fault in ("429", "500", "503"):
            entry["status"] = int(fault)
            extra = {"Retry-After": "0"} if fault == "429" else None
            return self._send(int(fault), b'{"error": "temporary"}', "application/json", extra=extra)
        if fault == "oql":
            entry["status"] = "OVER_QUERY_LIMIT"
            return self._json({"error_message": "You have exceeded your rate-limit for this API.", "status": "OVER_QUERY_LIMIT"})
        if fault == "unknown":
            entry["status"] = "UNKNOWN_ERROR"
            return self._json({"status": "UNKNOWN_ERROR"})
        try:
            lat, lon = (float(x) for x in params["location"].split(","))
        except (KeyError, ValueError):
            entry["status"] = "INVALID_REQUEST"
            return self._json({"status": "INVALID_REQUEST"})
        pano = fake.truth(lat, lon, params.get("source", "default"))
        if pano is None:
            entry["status"] = "ZERO_RESULTS"
            return self._json({"status": "ZERO_RESULTS"}, fault)
        entry["status"] = "OK"
        answer = {
            "copyright": "© Google",
            "date": pano["date"],
            "location": {"lat": pano["lat"], "lng": pano["lng"]},
            "pano_id": pano["pano_id"],
            "status": "OK",
        }
        if fault == "int_date":
            answer["date"] = 2015
        elif fault == "object_date":
            answer["date"] = {"year": 2015}
        elif fault == "long_pano":
            answer["pano_id"] = fake.long_pano_id(pano["pano_id"])
        self._json(answer, fault)

    def _image(self, fake: FakeStreetView, params: dict, fault: str, denied: str | None, entry: dict) -> None:
        if denied:
            entry["status"] = 403
            return self._send(403, denied.encode(), "text/plain; charset=UTF-8")
        if fault in ("429", "500", "503", "oql", "unknown"):
            code = {"oql": 429, "unknown": 500}.get(fault, None) or int(fault)
            entry["status"] = code
            return self._send(code, b"temporary error", "text/plain", extra={"Retry-After": "0"} if code == 429 else None)
        try:
            w, h = (int(x) for x in params.get("size", "").lower().split("x"))
            heading = float(params.get("heading", "0"))
            fov = float(params.get("fov", "90"))
            pitch = float(params.get("pitch", "0"))
        except ValueError:
            entry["status"] = 400
            return self._send(400, b"invalid size", "text/plain")
        if not (0 < w <= 640 and 0 < h <= 640) or not (0 < fov <= 120):
            entry["status"] = 400
            return self._send(400, b"invalid request", "text/plain")
        if "pano" in params:
            pano_id = params["pano"] if fake.pano_by_id(params["pano"]) else None
        else:
            try:
                lat, lon = (float(x) for x in params["location"].split(","))
            except (KeyError, ValueError):
                entry["status"] = 400
                return self._send(400, b"invalid location", "text/plain")
            found = fake.truth(lat, lon, params.get("source", "default"))
            pano_id = found["pano_id"] if found else None
        if fake.image_latency_s:
            time.sleep(fake.image_latency_s)
        if pano_id is None:
            entry["status"] = 404
            return self._send(404 if params.get("return_error_code") == "true" else 200,
                              fake.jpeg("none", 0, w, h, 90, 0), "image/jpeg")
        entry["status"] = 200
        if fault in ("gif", "bomb_png", "big_jpeg", "png", "html"):
            body, ctype = hostile_image(fault, fake.jpeg(pano_id, heading, w, h, fov, pitch))
            return self._send(200, body, ctype)
        self._send(200, fake.jpeg(pano_id, heading, w, h, fov, pitch), "image/jpeg", fault)


_BIG_JPEG: list[bytes] = []


def hostile_image(kind: str, jpeg: bytes) -> tuple[bytes, str]:
    """An image answer a careless server could send instead of ``jpeg`` (body, content type)."""
    from PIL import Image

    if kind == "html":
        return b"<html><body>Sorry, something went wrong</body></html>", "text/html"
    if kind == "bomb_png":  # 13000 x 13000 = 169 megapixels in a few hundred bytes
        return png_header_only(13000, 13000), "image/png"
    with Image.open(io.BytesIO(jpeg)) as im:
        im = im.convert("RGB")
    buf = io.BytesIO()
    if kind == "gif":
        frames = [im, im.point(lambda v: 255 - v)]
        frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
        return buf.getvalue(), "image/jpeg"  # a GIF under an image/jpeg label
    if kind == "png":
        im.save(buf, "PNG")
        return buf.getvalue(), "image/png"
    if not _BIG_JPEG:  # "big_jpeg": 4000 x 3000 whatever size was asked
        Image.new("RGB", (4000, 3000), (90, 120, 150)).save(buf, "JPEG", quality=50)
        _BIG_JPEG.append(buf.getvalue())
    return _BIG_JPEG[0], "image/jpeg"


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header announces ``width`` x ``height`` (an image too large to decode safely)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    row = b"\0" + b"\0" * width
    idat = zlib.compress(row * 4, 9)  # a few rows only: enough for a header check, not for a decode
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def main() -> None:
    p = argparse.ArgumentParser(description="Serve a fake Street View Static API on 127.0.0.1.")
    p.add_argument("--key", required=True)
    p.add_argument("--secret", default=None)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--faults", default="", help="e.g. 'metadata=ok,oql;image=ok,429,truncated'")
    p.add_argument("--image-latency", type=float, default=0.0)
    a = p.parse_args()
    faults = {}
    for part in filter(None, a.faults.split(";")):
        kind, _, pattern = part.partition("=")
        faults[kind.strip()] = [x.strip() for x in pattern.split(",") if x.strip()]
    fake = FakeStreetView(a.key, a.secret, faults, image_latency_s=a.image_latency, port=a.port)
    print(fake.url, flush=True)
    try:
        fake._httpd.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()

"""A fake Mapillary API v4 on 127.0.0.1 for tests: image search by bbox, paging, thumbnails, injected faults.

``GET /images?bbox=minLon,minLat,maxLon,maxLat&fields=..&limit=N`` with the
header ``Authorization: OAuth <token>`` answers ``{"data": [...], "paging":
{"next": URL}}`` over a fixed, seeded set of images around given places
(``page_size`` entries a page, so that paging is exercised). A wrong or
missing token gives HTTP 401 whose body echoes the token it got (the client
must redact it). ``/thumbs/<id>.jpg?sig=..`` gives a 4:3 JPEG; it must not
carry the Authorization header.

Around place ``i`` lie: a panorama 2 m away (left out unless panoramas are
asked for), the nearest flat photo 8-14 m away, a second flat photo of the same
sequence 30 m away, and a flat photo 400 m away (outside a 50 m radius);
every ``miss_every``-th place has none. With ``shared_sequences`` places
``2k`` and ``2k+1`` share their sequence. :meth:`truth` says which photo a
place should get. Faults by request count per kind (``search``, ``thumb``):
``pattern[(n - 1) % len(pattern)]``.
"""

from __future__ import annotations

import io
import json
import math
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlencode, urlsplit

FAULTS = ("ok", "429", "500", "503", "malformed", "wrong_types", "truncated", "drip", "html")
EARTH_M = 6_371_008.8


def _offset(lat: float, lon: float, north_m: float, east_m: float) -> tuple[float, float]:
    dlat = math.degrees(north_m / EARTH_M)
    dlon = math.degrees(east_m / (EARTH_M * math.cos(math.radians(lat))))
    return round(lat + dlat, 7), round(lon + dlon, 7)


def _dist_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    a = math.sin((p2 - p1) / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(math.radians(lon2 - lon1) / 2) ** 2
    return 2 * EARTH_M * math.asin(math.sqrt(a))


class FakeMapillary:
    """The server; use as a context manager."""

    def __init__(self, token: str, places: list[tuple[float, float]], faults: dict[str, list[str]] | None = None,
                 page_size: int = 2, miss_every: int = 6, shared_sequences: bool = False, drip_s: float = 0.5,
                 thumb_base: str | None = None):
        self.token = token
        self.faults = {k: list(v) for k, v in (faults or {}).items()}
        self.page_size = page_size
        self.drip_s = drip_s
        self.thumb_base = thumb_base
        self.log: list[dict] = []
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()
        self.images: list[dict] = []
        for i, (lat, lon) in enumerate(places):
            if miss_every and i % miss_every == miss_every - 1:
                continue
            seq = f"seq{i // 2}" if shared_sequences else f"seq{i}"
            near = 8 + i % 7
            for k, (north, east, pano) in enumerate([(2, 0, True), (near, 3, False), (30, -4, False), (400, 0, False)]):
                ilat, ilon = _offset(lat, lon, north, east)
                self.images.append({
                    "id": str(1_000_000_000 + i * 10 + k), "lat": ilat, "lon": ilon, "is_pano": pano,
                    "compass_angle": float((i * 37 + k * 90) % 360) + 0.5, "sequence": seq,
                    "captured_at": 1_600_000_000_000 + i * 86_400_000, "creator": f"user_{i % 5}",
                })
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    # --- ground truth ---------------------------------------------------------

    def truth(self, lat: float, lon: float, radius_m: float = 50, panoramas: bool = False) -> dict | None:
        best = None
        for im in self.images:
            if im["is_pano"] and not panoramas:
                continue
            d = _dist_m(lat, lon, im["lat"], im["lon"])
            if d <= radius_m and (best is None or (d, im["id"]) < best[0]):
                best = ((d, im["id"]), im)
        return None if best is None else best[1]

    def requests(self, kind: str, status: int | None = None) -> list[dict]:
        with self._lock:
            return [r for r in self.log if r["kind"] == kind and (status is None or r["status"] == status)]

    # --- server ---------------------------------------------------------------

    def _fault(self, kind: str) -> str:
        with self._lock:
            n = self._counts[kind] = self._counts.get(kind, 0) + 1
        pattern = self.faults.get(kind)
        return pattern[(n - 1) % len(pattern)] if pattern else "ok"

    def _entry(self, im: dict, fault: str) -> dict:
        base = self.thumb_base or self.url
        return {
            "id": [im["id"]] if fault == "wrong_types" else im["id"],
            "geometry": {"type": "Point", "coordinates": [im["lon"], im["lat"]]},
            "captured_at": im["captured_at"], "compass_angle": im["compass_angle"], "is_pano": im["is_pano"],
            "thumb_1024_url": f"{base}/thumbs/{im['id']}.jpg?" + urlencode({"sig": "cdn-signature-" + im["id"], "exp": "1"}),
            "creator": {"id": "9" + im["creator"][-1], "username": im["creator"]},
            "sequence": im["sequence"],
        }

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _send(self, status: int, body: bytes, ctype: str = "application/json", length: int | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body) if length is None else length))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                parts = urlsplit(self.path)
                params = dict(parse_qsl(parts.query))
                auth = self.headers.get("Authorization")
                kind = "thumb" if parts.path.startswith("/thumbs/") else "search" if parts.path == "/images" else "other"
                fault = fake._fault(kind) if kind != "other" else "ok"
                record = {"kind": kind, "path": self.path, "auth": auth, "fault": fault, "status": 200}
                try:
                    if kind == "search":
                        record["status"] = self._search(params, auth, fault)
                    elif kind == "thumb":
                        record["status"] = self._thumb(parts.path, fault)
                    else:
                        record["status"] = 404
                        self._send(404, b'{"error": {"message": "unknown path"}}')
                finally:
                    with fake._lock:
                        fake.log.append(record)

            def _common(self, fault: str) -> int | None:
                if fault in ("429", "500", "503"):
                    self._send(int(fault), b'{"error": {"message": "try later"}}')
                    return int(fault)
                if fault == "drip":
                    self.send_response(200)
                    self.send_header("Content-Length", "100000")
                    self.end_headers()
                    try:
                        for _ in range(1000):
                            self.wfile.write(b" ")
                            self.wfile.flush()
                            time.sleep(fake.drip_s)
                    except OSError:
                        pass
                    return 200
                if fault == "html":
                    self._send(200, b"<html>maintenance</html>", "text/html")
                    return 200
                return None

            def _search(self, params: dict, auth: str | None, fault: str) -> int:
                if auth != f"OAuth {fake.token}":
                    got = (auth or "").removeprefix("OAuth ")
                    self._send(401, json.dumps({"error": {"message": f"Invalid OAuth access token {got}"}}).encode())
                    return 401
                status = self._common(fault)
                if status is not None:
                    return status
                if fault == "malformed":
                    self._send(200, b'{"data": [{"id": "1", ')
                    return 200
                west, south, east, north = (float(x) for x in params["bbox"].split(","))
                hits = sorted((im for im in fake.images if south <= im["lat"] <= north and west <= im["lon"] <= east),
                              key=lambda im: im["id"])
                after = params.get("after")
                if after:
                    hits = [im for im in hits if im["id"] > after]
                size = min(int(params.get("limit", 100)), fake.page_size)
                page = hits[:size]
                body: dict = {"data": [fake._entry(im, fault) for im in page]}
                if len(hits) > size:
                    body["paging"] = {"next": f"{fake.url}/images?" + urlencode({**params, "after": page[-1]["id"]})}
                self._send(200, json.dumps(body).encode())
                return 200

            def _thumb(self, path: str, fault: str) -> int:
                status = self._common(fault)
                if status is not None:
                    return status
                image_id = path.rsplit("/", 1)[-1].removesuffix(".jpg")
                if not any(im["id"] == image_id for im in fake.images):
                    self._send(404, b"not found", "text/plain")
                    return 404
                from PIL import Image

                v = int(image_id) % 200
                buf = io.BytesIO()
                Image.new("RGB", (96, 72), (v, 255 - v, (v * 7) % 256)).save(buf, "JPEG", quality=90)
                data = buf.getvalue()
                if fault == "truncated":
                    self._send(200, data[: len(data) // 2], "image/jpeg", length=len(data) // 2)
                    return 200
                if fault == "wrong_types":
                    self._send(200, b"GIF89a" + b"\0" * 20, "image/gif")
                    return 200
                self._send(200, data, "image/jpeg")
                return 200

        return Handler

    def start(self) -> FakeMapillary:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FakeMapillary:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

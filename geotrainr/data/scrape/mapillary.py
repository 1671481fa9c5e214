"""Mapillary API v4 as a collection source: openly licensed (CC-BY-SA 4.0) street photos.

The scheduler of :mod:`geotrainr.data.scrape.scheduler` is the same as for
Street View; this client answers its questions differently. ``metadata(lat,
lon)`` searches ``GET <api>/images?bbox=..`` (paged, each page one
"metadata" request) and picks the nearest flat photo within the radius (ties
by id); ``fetch`` downloads its ``thumb_1024_url`` (one "image" request),
checked and normalised like a Street View image.

The access token comes from ``MAPILLARY_ACCESS_TOKEN`` only and travels only
in the ``Authorization: OAuth`` header of search requests: never in a URL,
never to the thumbnail CDN, never in a file or a message (every message is
redacted, and URL query strings are cut from them).
"""

from __future__ import annotations

import datetime
import json
import math
import re
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING
from urllib.parse import urlencode, urljoin, urlsplit

from geotrainr.data.scrape.backends import Backend, Response
from geotrainr.data.scrape.client import SNIPPET_CHARS, ImageSpec, StreetViewClient, _Retry, _retry_after
from geotrainr.data.scrape.exceptions import (
    InvalidAnswer,
    RequestDeniedError,
    ScrapeError,
    redact,
)
from geotrainr.data.scrape.records import (
    MAX_PANO_ID,
    Panorama,
    _number,
    _text,
)
from geotrainr.data.scrape.limits import Budget, RateLimiter, RetryPolicy
from geotrainr.geo import haversine_km, offset_latlon

if TYPE_CHECKING:
    from geotrainr.data.scrape.config import ScrapeConfig

MAPILLARY_API_URL = "https://graph.mapillary.com"
TOKEN_ENV = "MAPILLARY_ACCESS_TOKEN"
LICENCE = "CC-BY-SA 4.0"
SOURCE_LABEL = "mapillary"
FIELDS = "id,geometry,computed_geometry,captured_at,compass_angle,is_pano,thumb_1024_url,creator,sequence"
#: Images asked per search page (the API's maximum is 2000) and pages read per place at most.
PAGE_LIMIT = 100
MAX_PAGES = 5

_URL_QUERY = re.compile(r"(https?://[^\s?'\"<>]+)\?[^\s'\"<>]*")


class MapillaryToken:
    """The client access token; never printed, never pickled."""

    __slots__ = ("_token",)

    def __init__(self, token: str):
        token = token.strip()
        if not token:
            raise ScrapeError(f"the access token is empty: set {TOKEN_ENV}")
        if not token.isprintable() or any(c.isspace() for c in token):
            raise ScrapeError(f"{TOKEN_ENV} holds spaces or control characters (copy it again from Mapillary)")
        self._token = token

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> MapillaryToken:
        token = env.get(TOKEN_ENV, "")
        if not token.strip():
            raise ScrapeError(
                f"no access token: set {TOKEN_ENV} to a Mapillary client token "
                "(mapillary.com/dashboard/developers; or use --dry-run to see the plan without one)"
            )
        return cls(token)

    def header(self) -> dict[str, str]:
        return {"Authorization": f"OAuth {self._token}"}

    def secrets(self) -> tuple[str, ...]:
        return (self._token,)

    def __repr__(self) -> str:
        return "MapillaryToken(REDACTED)"

    __str__ = __repr__

    def __reduce__(self):  # pragma: no cover - guard
        raise TypeError("tokens are not picklable")


def strip_queries(text: str) -> str:
    """URLs in ``text`` without their query strings (signed CDN URLs are opaque)."""
    return _URL_QUERY.sub(lambda m: f"{m.group(1)}?...", text)


def _point(value: object, name: str) -> tuple[float, float] | None:
    """(lat, lon) of a GeoJSON Point, None where absent; raises InvalidAnswer on a malformed one."""
    if value is None:
        return None
    if not isinstance(value, dict) or value.get("type") != "Point":
        raise InvalidAnswer(f"{name} is not a GeoJSON Point")
    coords = value.get("coordinates")
    if not isinstance(coords, list) or len(coords) < 2:
        raise InvalidAnswer(f"{name}.coordinates is not [lon, lat]")
    return _number(coords[1], f"{name} latitude", -90, 90), _number(coords[0], f"{name} longitude", -180, 180)


def image_from_entry(entry: object) -> Panorama:
    """A validated Mapillary image of one ``data`` entry; raises :class:`InvalidAnswer`."""
    if not isinstance(entry, dict):
        raise InvalidAnswer("an image entry is not an object")
    image_id = entry.get("id")
    if isinstance(image_id, int) and not isinstance(image_id, bool):
        image_id = str(image_id)
    image_id = _text(image_id, "id", MAX_PANO_ID)
    where = _point(entry.get("computed_geometry"), "computed_geometry") or _point(entry.get("geometry"), "geometry")
    if where is None:
        raise InvalidAnswer("an image has no geometry")
    captured = entry.get("captured_at")
    date = None
    if captured is not None:
        ms = _number(captured, "captured_at", 0, 4.1e12)  # epoch milliseconds, before year 2100
        date = datetime.datetime.fromtimestamp(ms / 1000, datetime.timezone.utc).strftime("%Y-%m-%d")
    angle = entry.get("compass_angle")
    heading = 0.0 if angle is None else _number(angle, "compass_angle", -360, 720) % 360
    is_pano = entry.get("is_pano", False)
    if not isinstance(is_pano, bool):
        raise InvalidAnswer("is_pano is not a boolean")
    creator = entry.get("creator")
    username = None
    if creator is not None:
        if not isinstance(creator, dict):
            raise InvalidAnswer("creator is not an object")
        username = _text(creator.get("username"), "creator.username", MAX_PANO_ID, required=False)
    sequence = entry.get("sequence")
    if isinstance(sequence, dict):  # some answers nest it as {"id": ...}
        sequence = sequence.get("id")
    sequence = _text(sequence, "sequence", MAX_PANO_ID, required=False)
    thumb = _text(entry.get("thumb_1024_url"), "thumb_1024_url", 4096, required=False)
    if thumb is not None and not thumb.startswith(("http://", "https://")):
        raise InvalidAnswer("thumb_1024_url is not an http(s) URL")
    return Panorama(pano_id=image_id, lat=where[0], lon=where[1], date=date, copyright=None,  # type: ignore[arg-type]
                    heading=round(heading, 6) % 360, sequence=sequence, creator=username, thumb_url=thumb,
                    is_pano=is_pano)


class MapillaryClient(StreetViewClient):
    """Search and thumbnail requests with the Street View client's retries, budget, deadlines and byte limits."""

    SOURCES = ("mapillary",)
    NAME = SOURCE_LABEL
    API_URL = MAPILLARY_API_URL
    NOUN = "photo"

    @classmethod
    def credentials_from_env(cls, env: Mapping[str, str]) -> MapillaryToken:  # type: ignore[override]
        return MapillaryToken.from_env(env)

    @classmethod
    def from_config(cls, backend: Backend, credentials: MapillaryToken, cfg: ScrapeConfig,  # type: ignore[override]
                    budget: Budget, limiter: RateLimiter, stop: threading.Event) -> MapillaryClient:
        return cls(backend, credentials, cfg.spec, cfg.endpoint, cfg.retry, budget, limiter, stop, cfg.panoramas)

    @classmethod
    def check_config(cls, cfg: ScrapeConfig) -> None:
        if cfg.backend != "http":
            raise ScrapeError("--source mapillary works with --backend http only")

    @classmethod
    def settings(cls, cfg: ScrapeConfig) -> dict:
        s = cfg.spec
        return {"collector": cls.NAME, "size": s.size, "radius": s.radius, "panoramas": cfg.panoramas,
                "one_per_sequence": cfg.one_per_sequence,
                "jitter_m": cfg.jitter_m, "jitter_seed": cfg.seed if cfg.jitter_m else None}

    @classmethod
    def headings_to_collect(cls, headings: list[float]) -> list[float]:
        """None: one photo per place, so a finished place is done whatever the headings."""
        return []

    @classmethod
    def plan_lines(cls, cfg: ScrapeConfig, places_to_do: int, views_on_record: int) -> list[str]:
        s = cfg.spec
        kind = "photos and panoramas" if cfg.panoramas else "flat photos (no panoramas)"
        per = ", one per sequence" if cfg.one_per_sequence else ""
        lines = [f"views: Mapillary {kind}, the nearest within {s.radius} m of each place{per}, stored at {s.size}; "
                 "licence CC-BY-SA 4.0 (attribution: the creator column)",
                 f"requests: at most {places_to_do} thumbnail requests and {places_to_do} to "
                 f"{places_to_do * MAX_PAGES} search requests (free of charge)"]
        if cfg.max_requests is not None:
            lines.append(f"budget: --max-requests {cfg.max_requests} caps this run at {cfg.max_requests} thumbnail "
                         "requests, retries included")
        if cfg.max_metadata is not None:
            lines.append(f"budget: --max-metadata {cfg.max_metadata} caps this run's search requests")
        return lines

    @classmethod
    def requests_line(cls, budget: Budget, price_per_1000: float) -> str:
        return (f"requests: {budget.images} thumbnail, {budget.metadata} search (free of charge), "
                f"{budget.retries} retries")

    def __init__(self, backend: Backend, token: MapillaryToken, spec: ImageSpec, api_url: str = MAPILLARY_API_URL,
                 retry: RetryPolicy | None = None, budget: Budget | None = None, limiter: RateLimiter | None = None,
                 stop: threading.Event | None = None, panoramas: bool = False):
        super().__init__(backend, token, spec, api_url, retry, budget, limiter, stop)  # type: ignore[arg-type]
        self.panoramas = panoramas

    def redact(self, text: str, limit: int | None = None) -> str:
        return redact(strip_queries(str(text)), self.credentials.secrets(), limit)

    def search_url(self, lat: float, lon: float) -> str:
        """The first search page of a box of ``radius`` metres around (lat, lon); the token is not in it."""
        r_km = self.spec.radius / 1000
        south, west = offset_latlon(lat, lon, -r_km, -r_km)
        north, east = offset_latlon(lat, lon, r_km, r_km)
        bbox = ",".join(f"{float(x):.6f}" for x in (west, south, east, north))
        return f"{self.api_url}/images?{urlencode({'bbox': bbox, 'fields': FIELDS, 'limit': PAGE_LIMIT})}"

    def _fatal(self, kind: str, what: str) -> RequestDeniedError:
        return RequestDeniedError(
            f"the Mapillary API refused a {kind} request: {self.redact(what)}; "
            f"check {TOKEN_ENV} and --api-url"
        )

    def _same_origin(self, url: str) -> bool:
        a, b = urlsplit(self.api_url), urlsplit(url)
        return (a.scheme, a.netloc) == (b.scheme, b.netloc)

    def _page(self, url: str) -> tuple[list[Panorama], str | None]:
        def interpret(r: Response) -> tuple[list[Panorama], str | None]:
            if r.status == 404:
                raise self._fatal("search", "HTTP 404 (is --api-url the Mapillary graph endpoint?)")
            self._common_http("search", r)  # 401/403: refused, with the server's reason (redacted)
            try:
                data = json.loads(r.body.decode("utf-8"))
                entries = data["data"]
                paging = data.get("paging") or {}
            except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
                raise _Retry("undecodable search answer") from None
            if not isinstance(entries, list) or not isinstance(paging, dict):
                raise _Retry("search answer of the wrong shape")
            try:
                images = [image_from_entry(e) for e in entries]
            except InvalidAnswer as e:
                raise InvalidAnswer(f"search answer refused: {self.redact(str(e), SNIPPET_CHARS)}") from None
            nxt = paging.get("next")
            if nxt is not None:
                if not isinstance(nxt, str):
                    raise InvalidAnswer("paging.next is not a URL")
                nxt = urljoin(url, nxt)
                if not self._same_origin(nxt):  # the token goes to --api-url's host only
                    raise InvalidAnswer("paging.next points to another host")
            return images, nxt

        return self._send("metadata", url, interpret, headers=self.credentials.header())  # type: ignore[return-value]

    def metadata(self, lat: float, lon: float) -> Panorama | None:
        """The photo nearest to (lat, lon) within the radius (ties by id), or None where there is none."""
        url: str | None = self.search_url(lat, lon)
        found: dict[str, Panorama] = {}
        for _ in range(MAX_PAGES):
            if url is None:
                break
            images, url = self._page(url)
            for im in images:
                found.setdefault(im.pano_id, im)
        best: tuple[float, str, Panorama] | None = None
        for im in found.values():
            if (im.thumb_url is None) or (im.is_pano and not self.panoramas):
                continue
            d = float(haversine_km(lat, lon, im.lat, im.lon)) * 1000
            if not math.isfinite(d) or d > self.spec.radius:
                continue
            key = (d, im.pano_id, im)
            if best is None or key[:2] < best[:2]:
                best = key
        return None if best is None else best[2]

    def views(self, pano: Panorama, headings: list[float]) -> list[float]:
        """One view per photo, stored under its compass angle."""
        return [float(pano.heading or 0.0)]

    def fetch(self, pano: Panorama, heading: float) -> bytes | None:
        """The thumbnail, checked and normalised; the token is never sent to the CDN."""
        assert pano.thumb_url is not None

        def interpret(r: Response) -> bytes | None:
            if r.status == 429 or r.status == 408 or r.status >= 500:
                raise _Retry(f"HTTP {r.status}", _retry_after(r.headers))
            if r.status == 404:
                return None
            if r.status != 200:
                raise InvalidAnswer(f"thumbnail HTTP {r.status}")
            return self._image_body(r)

        return self._send("image", pano.thumb_url, interpret)  # type: ignore[return-value]

    def row_fields(self, pano: Panorama) -> dict:
        return {"pitch": None, "fov": None, "source": SOURCE_LABEL, "sequence": pano.sequence,
                "creator": pano.creator, "licence": LICENCE}


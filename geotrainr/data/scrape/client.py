"""Street View Static API client: URLs, signing, retries, rate limit and budget.

The client knows the API's rules and nothing about transport: a backend
(``backends.py``) turns a URL into a :class:`Response`, the client decides
what the answer means. Metadata requests (free of charge) come first; image
requests (billed) are sent only for panoramas the metadata found.

Secrets: the key and the signing secret live in :class:`Credentials` only.
Every message that may carry a URL goes through :func:`redact`, and errors are
raised ``from None`` so that no chained exception text reaches the user.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlencode, urlsplit

from geotrainr.data.scrape.backends import Backend, Response
from geotrainr.data.scrape.exceptions import (
    InvalidAnswer,
    RequestDeniedError,
    ResponseTooLarge,
    RetriesExhaustedError,
    ScrapeError,
    Stopped,
    TornImage,
    TransportError,
    redact,
)
from geotrainr.data.scrape.limits import Budget, RateLimiter, RetryPolicy
from geotrainr.data.scrape.records import Panorama, normalise_image, panorama_from_metadata

if TYPE_CHECKING:
    from geotrainr.data.scrape.config import ScrapeConfig

GOOGLE_API_URL = "https://maps.googleapis.com/maps/api/streetview"
KEY_ENV = "GOOGLE_MAPS_API_KEY"
SECRET_ENV = "GOOGLE_MAPS_URL_SIGNING_SECRET"
MAX_SIZE = 640  # Street View Static API: images up to 640x640
MAX_FOV = 120.0

#: Metadata statuses (Street View Static API documentation).
MISS_STATUSES = {"ZERO_RESULTS", "NOT_FOUND"}
TRANSIENT_STATUSES = {"OVER_QUERY_LIMIT", "UNKNOWN_ERROR"}
FATAL_STATUSES = {"REQUEST_DENIED", "INVALID_REQUEST"}

#: Byte limits per answer: metadata is a few hundred bytes, a 640x640 image well under a megabyte.
MAX_METADATA_BYTES = 256 * 1024
MAX_IMAGE_BYTES = 8 * 1024 * 1024
#: Characters of a server's error text shown in a message (after redaction).
SNIPPET_CHARS = 200


class Credentials:
    """API key and optional URL-signing secret; never printed, never pickled into results."""

    __slots__ = ("_key", "_secret", "_secret_text")

    def __init__(self, key: str, secret: str | None = None):
        key = key.strip()
        if not key:
            raise ScrapeError(f"the API key is empty: set {KEY_ENV}")
        self._key = key
        self._secret_text = (secret or "").strip() or None
        self._secret: bytes | None = None
        if self._secret_text:
            try:
                self._secret = base64.urlsafe_b64decode(self._secret_text + "=" * (-len(self._secret_text) % 4))
            except (binascii.Error, ValueError):
                raise ScrapeError(f"{SECRET_ENV} is not a URL-safe base64 signing secret (copy it again from the Cloud console)") from None
            if not self._secret:
                raise ScrapeError(f"{SECRET_ENV} is empty after base64 decoding")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Credentials:
        env = os.environ if env is None else env
        key = env.get(KEY_ENV, "")
        if not key.strip():
            raise ScrapeError(
                f"no API key: set {KEY_ENV} to a Google Maps Platform key with the Street View Static API enabled "
                "(or use --dry-run to see the plan and cost without one)"
            )
        return cls(key, env.get(SECRET_ENV))

    @property
    def key(self) -> str:
        return self._key

    @property
    def signed(self) -> bool:
        return self._secret is not None

    def sign(self, url: str) -> str:
        """Append ``&signature=`` (HMAC-SHA1 over ``path?query``) when a signing secret is set."""
        if self._secret is None:
            return url
        parts = urlsplit(url)
        digest = hmac.new(self._secret, f"{parts.path}?{parts.query}".encode(), hashlib.sha1).digest()
        return f"{url}&signature={base64.urlsafe_b64encode(digest).decode()}"

    def secrets(self) -> tuple[str, ...]:
        return tuple(s for s in (self._key, self._secret_text) if s)

    def __repr__(self) -> str:
        return f"Credentials(key=REDACTED, signed={self.signed})"

    __str__ = __repr__

    def __reduce__(self):  # pragma: no cover - guard
        raise TypeError("Credentials are not picklable")


def sign_url(url: str, secret: str) -> str:
    """Sign ``url`` with a URL-safe base64 secret (Google's documented URL-signing scheme)."""
    return Credentials("unused", secret).sign(url)


@dataclass(frozen=True)
class ImageSpec:
    """What every image request asks for; fixed for one output folder."""

    width: int = 640
    height: int = 640
    fov: float = 90.0
    pitch: float = 0.0
    radius: int = 50
    #: ``--source``: ``outdoor`` or ``default`` (Street View panoramas), ``mapillary``; it picks the client.
    source: str = "outdoor"

    def validate(self) -> ImageSpec:
        if not (1 <= self.width <= MAX_SIZE and 1 <= self.height <= MAX_SIZE):
            raise ScrapeError(f"--size {self.width}x{self.height}: the Street View Static API allows at most {MAX_SIZE}x{MAX_SIZE}")
        if not (0 < self.fov <= MAX_FOV):
            raise ScrapeError(f"--fov {self.fov:g}: must be in (0, {MAX_FOV:g}] degrees")
        if not (-90 <= self.pitch <= 90):
            raise ScrapeError(f"--pitch {self.pitch:g}: must be in [-90, 90] degrees")
        if self.radius < 1:
            raise ScrapeError(f"--radius {self.radius}: must be at least 1 metre")
        return self

    @property
    def size(self) -> str:
        return f"{self.width}x{self.height}"


def parse_size(text: str) -> tuple[int, int]:
    """``"640x640"`` or ``"256"`` -> (width, height)."""
    m = re.fullmatch(r"\s*(\d+)\s*(?:[xX]\s*(\d+))?\s*", text)
    if not m:
        raise ScrapeError(f"--size {text!r}: expected WIDTHxHEIGHT, e.g. 640x640")
    w = int(m.group(1))
    return w, int(m.group(2) or w)


def money(requests: int, price_per_1000: float) -> str:
    return f"{requests * price_per_1000 / 1000:.2f} USD"


class _Retry(Exception):
    def __init__(self, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


def _retry_after(headers: Mapping[str, str]) -> float | None:
    value = headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


class StreetViewClient:
    """Metadata and image requests with retries, rate limit and budget.

    Thread-safe: several threads share one client (the budget, the rate
    limiter and the backend are thread-safe). The class attributes and
    class methods are what a run asks of its source before and after
    collecting: every difference between sources lives in the client classes.
    """

    #: the ``--source`` values this client serves
    SOURCES: tuple[str, ...] = ("outdoor", "default")
    #: the ``source`` column of its rows
    NAME = "streetview"
    API_URL = GOOGLE_API_URL
    #: What one collected item is called in messages.
    NOUN = "panorama"

    # --- what a run asks of its source -------------------------------------------

    @classmethod
    def credentials_from_env(cls, env: Mapping[str, str]) -> Credentials:
        return Credentials.from_env(env)

    @classmethod
    def from_config(cls, backend: Backend, credentials: Credentials, cfg: ScrapeConfig, budget: Budget,
                    limiter: RateLimiter, stop: threading.Event) -> StreetViewClient:
        return cls(backend, credentials, cfg.spec, cfg.endpoint, cfg.retry, budget, limiter, stop)

    @classmethod
    def check_config(cls, cfg: ScrapeConfig) -> None:
        """Refuse settings this source cannot honour (one line, exit 2)."""
        if cfg.panoramas or cfg.one_per_sequence:
            raise ScrapeError("--panoramas and --one-per-sequence apply to --source mapillary only")

    @classmethod
    def settings(cls, cfg: ScrapeConfig) -> dict:
        """Settings that must stay the same for every run writing into one folder."""
        s = cfg.spec
        return {"size": s.size, "fov": s.fov, "pitch": s.pitch, "radius": s.radius, "source": s.source,
                "jitter_m": cfg.jitter_m, "jitter_seed": cfg.seed if cfg.jitter_m else None}

    @classmethod
    def headings_to_collect(cls, headings: list[float]) -> list[float]:
        """The headings a finished place must have on record (new headings reopen it)."""
        return [float(h) for h in headings]

    @classmethod
    def plan_lines(cls, cfg: ScrapeConfig, places_to_do: int, views_on_record: int) -> list[str]:
        """What will be fetched and what it may cost, before anything is sent."""
        s = cfg.spec
        headings = ",".join(f"{h:g}" for h in cfg.headings)
        worst = places_to_do * len(cfg.headings) - views_on_record
        lines = [f"views: headings {headings} at {s.size}, fov {s.fov:g}, pitch {s.pitch:g}, "
                 f"source={s.source}, radius {s.radius} m",
                 f"cost: at most {worst} billable image requests (if every place has a panorama) = "
                 f"{money(worst, cfg.price_per_1000)} at {cfg.price_per_1000:g} USD per 1000; "
                 f"{places_to_do} metadata requests (free of charge)"]
        if cfg.max_requests is not None:
            lines.append(f"budget: --max-requests {cfg.max_requests} caps this run at {cfg.max_requests} image requests "
                         f"= {money(cfg.max_requests, cfg.price_per_1000)}, retries included")
        if cfg.max_metadata is not None:
            lines.append(f"budget: --max-metadata {cfg.max_metadata} caps this run's metadata requests")
        return lines

    @classmethod
    def requests_line(cls, budget: Budget, price_per_1000: float) -> str:
        """The summary's count of requests sent."""
        return (f"requests: {budget.images} image (billable, = {money(budget.images, price_per_1000)}), "
                f"{budget.metadata} metadata (free), {budget.retries} retries")

    def __init__(
        self,
        backend: Backend,
        credentials: Credentials,
        spec: ImageSpec,
        api_url: str = GOOGLE_API_URL,
        retry: RetryPolicy | None = None,
        budget: Budget | None = None,
        limiter: RateLimiter | None = None,
        stop: threading.Event | None = None,
        on_retry: Callable[[str, str], None] | None = None,
    ):
        self.backend = backend
        self.credentials = credentials
        self.spec = spec
        self.api_url = api_url.rstrip("/")
        self.retry = retry or RetryPolicy()
        self.budget = budget or Budget()
        self.limiter = limiter or RateLimiter()
        self.stop = stop or threading.Event()
        self.on_retry = on_retry

    # --- URLs ----------------------------------------------------------------

    def _url(self, path: str, params: dict[str, str]) -> str:
        query = urlencode({**params, "key": self.credentials.key})
        return self.credentials.sign(f"{self.api_url}{path}?{query}")

    def metadata_url(self, lat: float, lon: float) -> str:
        return self._url(
            "/metadata",
            {"location": f"{lat:.6f},{lon:.6f}", "radius": str(self.spec.radius), "source": self.spec.source},
        )

    def image_url(self, pano_id: str, heading: float) -> str:
        s = self.spec
        return self._url(
            "",
            {
                "size": s.size,
                "pano": pano_id,
                "heading": f"{heading:g}",
                "fov": f"{s.fov:g}",
                "pitch": f"{s.pitch:g}",
                "return_error_code": "true",
            },
        )

    def redact(self, text: str, limit: int | None = None) -> str:
        """``text`` without the key or the signing secret, then cut to ``limit`` characters."""
        return redact(text, self.credentials.secrets(), limit)

    # --- requests ------------------------------------------------------------

    def _send(self, kind: str, url: str, interpret: Callable[[Response], object],
              headers: Mapping[str, str] | None = None) -> object:
        """Send with retries; a temporary failure is retried, :class:`InvalidAnswer` fails the place at once."""
        extra = {"headers": headers} if headers else {}
        limit = MAX_IMAGE_BYTES if kind == "image" else MAX_METADATA_BYTES
        for attempt in range(self.retry.attempts):
            if self.stop.is_set():
                raise Stopped()
            self.limiter.wait(self.stop)
            self.budget.reserve(kind)
            if attempt:
                self.budget.count_retry()
            try:
                return interpret(self.backend.get(url, self.retry.timeout, max_bytes=limit, **extra))
            except ResponseTooLarge as e:
                # Same answer on every try (and an image is billed each time): fail the place now.
                raise InvalidAnswer(f"{kind} answer refused: {self.redact(str(e), SNIPPET_CHARS)}") from None
            except TornImage as e:
                failure = _Retry(str(e))
            except RequestDeniedError:
                self.stop.set()  # no other worker sends another request that cannot succeed
                raise
            except TransportError as e:
                failure = _Retry("timeout" if e.timeout else f"network error ({self.redact(str(e))})")
            except _Retry as e:
                failure = e
            if self.on_retry is not None:
                self.on_retry(kind, failure.reason)
            if attempt + 1 < self.retry.attempts and self.stop.wait(self.retry.delay(attempt, failure.retry_after)):
                raise Stopped()
        raise RetriesExhaustedError(
            f"{kind} request still failing after {self.retry.attempts} tries (last: {failure.reason})"
        ) from None

    def _fatal(self, kind: str, what: str) -> RequestDeniedError:
        return RequestDeniedError(
            f"the Street View API refused a {kind} request: {self.redact(what)}; "
            "check the key, that the Street View Static API is enabled for it, the signing secret and --api-url"
        )

    def _common_http(self, kind: str, r: Response) -> None:
        if r.status == 429 or r.status == 408 or r.status >= 500:
            raise _Retry(f"HTTP {r.status}", _retry_after(r.headers))
        if r.status != 200 and not (kind == "image" and r.status == 404):
            # Redact the whole body first, then cut: a cut could split the key and hide it from redaction.
            snippet = self.redact(" ".join(r.body.decode("utf-8", "replace").split()), SNIPPET_CHARS)
            raise self._fatal(kind, f"HTTP {r.status}" + (f" ({snippet})" if snippet else ""))

    def metadata(self, lat: float, lon: float) -> Panorama | None:
        """The panorama nearest to (lat, lon) within the radius, or None where there is none."""

        def interpret(r: Response) -> Panorama | None:
            if r.status == 404:
                raise self._fatal("metadata", "HTTP 404 (is --api-url the Street View endpoint?)")
            self._common_http("metadata", r)
            try:
                data = json.loads(r.body.decode("utf-8"))
                status = str(data["status"])
            except (ValueError, KeyError, TypeError, RecursionError):  # RecursionError: JSON nested too deep
                raise _Retry("undecodable metadata") from None
            if status in FATAL_STATUSES:
                reason = self.redact(" ".join(str(data.get("error_message") or "").split()), SNIPPET_CHARS)
                raise self._fatal("metadata", status + (f" ({reason})" if reason else ""))
            if status in TRANSIENT_STATUSES:
                raise _Retry(status)
            if status in MISS_STATUSES:
                return None
            if status != "OK":
                raise _Retry(f"unexpected status {self.redact(status, 40)!r}")
            try:
                return panorama_from_metadata(data)
            except InvalidAnswer as e:
                raise InvalidAnswer(f"metadata refused: {self.redact(str(e), SNIPPET_CHARS)}") from None

        return self._send("metadata", self.metadata_url(lat, lon), interpret)  # type: ignore[return-value]

    def image(self, pano_id: str, heading: float) -> bytes | None:
        """A JPEG of the asked size for one view (see :func:`normalise_image`), or None on HTTP 404."""

        def interpret(r: Response) -> bytes | None:
            self._common_http("image", r)
            if r.status == 404:
                return None
            return self._image_body(r)

        return self._send("image", self.image_url(pano_id, heading), interpret)  # type: ignore[return-value]

    def _image_body(self, r: Response) -> bytes:
        """An image answer's body, checked and normalised to the asked size (an image source's last step)."""
        ctype = r.headers.get("content-type", "")
        if ctype and not ctype.startswith("image/"):
            raise InvalidAnswer(f"not an image ({self.redact(ctype, 40)})")
        try:
            return normalise_image(r.body, self.spec.width, self.spec.height)
        except InvalidAnswer as e:
            raise type(e)(f"image refused: {self.redact(str(e), SNIPPET_CHARS)}") from None

    # --- what the scheduler asks per place (one answer per source) -------------------

    def views(self, pano: Panorama, headings: list[float]) -> list[float]:
        """The headings to store for one panorama: every asked heading."""
        return [float(h) for h in headings]

    def fetch(self, pano: Panorama, heading: float) -> bytes | None:
        """The normalised JPEG of one view, or None where there is none."""
        return self.image(pano.pano_id, heading)

    def row_fields(self, pano: Panorama) -> dict:
        """Source-specific columns of a stored view."""
        return {"pitch": float(self.spec.pitch), "fov": float(self.spec.fov), "source": self.NAME}

"""Exceptions of ``geotrainr scrape`` and the redaction every message passes through.

User-facing ones subclass :class:`GeotrainrError` (the CLI prints one line,
exit 2); ``BudgetReached`` and ``Stopped`` are control flow inside a run.
"""

from __future__ import annotations

import re

from geotrainr.errors import GeotrainrError

_SECRET_PARAM = re.compile(r"(?i)\b(key|signature|client)=[^&\s'\"<>]*")


class ScrapeError(GeotrainrError):
    """A problem that stops ``geotrainr scrape`` (bad settings, a denied request, a broken server)."""


class RequestDeniedError(ScrapeError):
    """The API refused the request (REQUEST_DENIED, INVALID_REQUEST, HTTP 4xx): retrying cannot help."""


class RetriesExhaustedError(ScrapeError):
    """A request kept failing with temporary errors after every retry."""


class BackendError(ScrapeError):
    """A backend cannot start (selenium or the browser missing, a bad path)."""


class TransportError(Exception):
    """The request got no complete HTTP answer (timeout, reset, cut-off body); worth a retry."""

    def __init__(self, message: str, timeout: bool = False):
        super().__init__(message)
        self.timeout = timeout


class ResponseTooLarge(TransportError):
    """The body is longer than the request's byte limit (announced or counted while reading)."""


class InvalidAnswer(Exception):
    """A server answer or a record that fails validation: the place fails (counted) and is retried later."""


class TornImage(InvalidAnswer):
    """An image body that is cut off or does not decode: worth another try."""


class BudgetReached(Exception):
    """Control flow: the request budget of this run is spent."""


class Stopped(Exception):
    """Control flow: the run is stopping (fatal error elsewhere, interrupt)."""


def redact(text: object, secrets: tuple[str, ...] = (), limit: int | None = None) -> str:
    """``text`` with ``key=``, ``signature=`` and ``client=`` values and any literal secret removed.

    ``limit`` shortens the result to that many characters, always after the
    redaction: cutting first could split a secret and leave its first
    characters unrecognised.
    """
    out = str(text)
    for s in secrets:
        if s:
            out = out.replace(s, "REDACTED")
    out = _SECRET_PARAM.sub(lambda m: f"{m.group(1)}=REDACTED", out)
    if limit is not None and len(out) > limit:
        out = out[:limit] + "..."
    return out

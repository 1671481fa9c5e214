"""Transports for the Street View client: plain HTTP (stdlib) or a headless browser (Selenium).

Both turn a URL into a :class:`Response` with the status, the body bytes and
the headers, so the client treats their answers the same way and both
produce identical rows. The browser backend loads the API's origin once and
then fetches each URL from that page with ``fetch()``: a same-origin request
whose exact bytes come back base64-encoded, status and headers included.
"""

from __future__ import annotations

import base64
import http.client
import logging
import os
import queue
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Mapping
from typing import Protocol
from urllib.parse import urlsplit

from geotrainr.version import __version__
from geotrainr.data.scrape.exceptions import BackendError, ResponseTooLarge, TransportError

USER_AGENT = f"geotrainr/{__version__} (+street view dataset collection)"
#: Body limit of a request unless the caller gives one.
DEFAULT_MAX_BYTES = 8 * 1024 * 1024
CHROME_BINARY = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROME_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    # No history or cache on disk: URLs carry the API key.
    "--incognito",
    "--disable-extensions",
    "--disable-crash-reporter",
    # chromedriver talks to the browser over a pipe: when chromedriver dies, the browser exits too.
    "--remote-debugging-pipe",
)


def _die_with_parent() -> None:  # pragma: no cover - runs in the forked child
    """Linux: chromedriver gets SIGTERM when this process dies, even by kill -9 (no orphaned browsers)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - best effort, not available off Linux
        pass


@dataclass(frozen=True)
class Response:
    """An HTTP answer: status, body and lower-cased headers."""

    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


class Backend(Protocol):
    """Fetches URLs; must be safe to call from several threads.

    ``timeout`` is an overall deadline for the whole request (connect, headers
    and body), not a per-read timeout; a body longer than ``max_bytes`` is
    refused (:class:`ResponseTooLarge`) without reading it all.
    """

    name: str

    def get(self, url: str, timeout: float, max_bytes: int = DEFAULT_MAX_BYTES) -> Response: ...

    def close(self) -> None: ...


class _Watchdog:
    """Shuts a connection's socket down at the request's deadline: unblocks any read, however slow the drip."""

    def __init__(self, conn: http.client.HTTPConnection, seconds: float):
        self.conn = conn
        self.sock: socket.socket | None = None  # kept: http.client hands the socket to the response
        self.fired = False
        self._timer = threading.Timer(max(0.0, seconds), self._fire)
        self._timer.daemon = True
        self._timer.start()

    def _fire(self) -> None:
        self.fired = True
        sock = self.sock or self.conn.sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cancel(self) -> None:
        self._timer.cancel()


class HttpBackend:
    """http.client from the standard library: one connection per request, proxies from the environment.

    Every request has one monotonic deadline over connect, headers and body: a
    server that answers one byte a second is cut off at the deadline, and the
    body is read in chunks up to ``max_bytes``.
    """

    name = "http"

    def _connection(self, url: str, timeout: float) -> tuple[http.client.HTTPConnection, str]:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise TransportError("not an http(s) URL")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        proxy = None if urllib.request.proxy_bypass(parts.hostname) else urllib.request.getproxies().get(parts.scheme)
        cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        if not proxy:
            return cls(parts.hostname, port, timeout=timeout), target
        p = urlsplit(proxy if "://" in proxy else "http://" + proxy)
        if parts.scheme == "https":
            conn = cls(p.hostname, p.port or 8080, timeout=timeout)
            conn.set_tunnel(parts.hostname, port)
            return conn, target
        return http.client.HTTPConnection(p.hostname, p.port or 8080, timeout=timeout), f"http://{parts.netloc}{target}"

    def get(self, url: str, timeout: float, max_bytes: int = DEFAULT_MAX_BYTES,
            headers: Mapping[str, str] | None = None) -> Response:
        """``headers`` carry a credential (Mapillary's Authorization) outside the URL."""
        deadline = time.monotonic() + timeout
        conn, target = self._connection(url, timeout)
        watchdog = _Watchdog(conn, timeout)
        r: http.client.HTTPResponse | None = None
        try:
            conn.request("GET", target, headers={"User-Agent": USER_AGENT, "Accept": "*/*", "Connection": "close",
                                                **(headers or {})})
            sock = watchdog.sock = conn.sock
            if watchdog.fired:
                raise TransportError("timed out", timeout=True)
            r = conn.getresponse()
            headers = {k.lower(): v for k, v in r.getheaders()}
            announced = headers.get("content-length", "")
            if announced.isdigit() and int(announced) > max_bytes:
                raise ResponseTooLarge(f"the server announced {int(announced)} bytes (at most {max_bytes} accepted)")
            chunks, size = [], 0
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TransportError("timed out", timeout=True)
                if sock is not None:
                    sock.settimeout(left)
                chunk = r.read1(min(65536, max_bytes + 1 - size)) if size <= max_bytes else b""
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
                if size > max_bytes:
                    raise ResponseTooLarge(f"the body is longer than {max_bytes} bytes")
            if watchdog.fired or time.monotonic() > deadline:
                raise TransportError("timed out", timeout=True)
            return Response(r.status, b"".join(chunks), headers)
        except (ResponseTooLarge, TransportError):
            raise
        except (socket.timeout, TimeoutError):
            raise TransportError("timed out", timeout=True) from None
        except http.client.IncompleteRead as e:
            if watchdog.fired:
                raise TransportError("timed out", timeout=True) from None
            raise TransportError(f"body cut off after {len(e.partial)} bytes") from None
        except (http.client.HTTPException, OSError, ValueError) as e:
            if watchdog.fired:
                raise TransportError("timed out", timeout=True) from None
            raise TransportError(f"{type(e).__name__}: {e}") from None
        finally:
            watchdog.cancel()
            if r is not None:
                r.close()
            conn.close()
            if watchdog.sock is not None:
                watchdog.sock.close()

    def close(self) -> None:
        pass


_FETCH_SCRIPT = """
const url = arguments[0], ms = arguments[1], maxBytes = arguments[2], done = arguments[arguments.length - 1];
const ctrl = new AbortController();
const timer = setTimeout(() => ctrl.abort(), ms);
fetch(url, {signal: ctrl.signal, cache: "no-store", credentials: "omit"})
  .then(async (r) => {
    const headers = {};
    r.headers.forEach((v, k) => { headers[k.toLowerCase()] = v; });
    const announced = parseInt(headers["content-length"] || "0", 10);
    if (announced > maxBytes) { ctrl.abort(); clearTimeout(timer); done({error: "TooLarge", tooLarge: true}); return; }
    const reader = r.body ? r.body.getReader() : null;
    const parts = [];
    let size = 0;
    while (reader) {
      const {done: end, value} = await reader.read();
      if (end) break;
      size += value.length;
      if (size > maxBytes) { ctrl.abort(); clearTimeout(timer); done({error: "TooLarge", tooLarge: true}); return; }
      parts.push(value);
    }
    clearTimeout(timer);
    let bin = "";
    for (const buf of parts) {
      for (let i = 0; i < buf.length; i += 0x8000) {
        bin += String.fromCharCode.apply(null, buf.subarray(i, i + 0x8000));
      }
    }
    done({status: r.status, headers: headers, body: btoa(bin)});
  })
  .catch((e) => {
    clearTimeout(timer);
    const name = (e && e.name) || "Error";
    done({error: name, timeout: name === "AbortError"});
  });
"""


PROFILE_PREFIX = "geotrainr-chromium-"


def _remove_stale_profiles() -> None:
    """Profile folders left by a killed run (their owner process is gone)."""
    for d in Path(tempfile.gettempdir()).glob(PROFILE_PREFIX + "*"):
        try:
            pid = int((d / "owner.pid").read_text())
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)
        except (OSError, ValueError):
            continue  # unreadable, or a process of another user: leave it


class _Browser:
    """One headless Chromium with its own throw-away profile folder."""

    def __init__(self, chrome_binary: str, chromedriver: str):
        from selenium import webdriver
        from selenium.common.exceptions import WebDriverException
        from selenium.webdriver.chrome.service import Service

        _remove_stale_profiles()
        self.profile = tempfile.mkdtemp(prefix=PROFILE_PREFIX)
        Path(self.profile, "owner.pid").write_text(str(os.getpid()))
        options = webdriver.ChromeOptions()
        options.binary_location = chrome_binary
        for flag in CHROME_FLAGS:
            options.add_argument(flag)
        options.add_argument(f"--user-data-dir={self.profile}")
        popen_kw = {"preexec_fn": _die_with_parent} if sys.platform.startswith("linux") else {}
        service = Service(executable_path=chromedriver, log_output=subprocess.DEVNULL, popen_kw=popen_kw)
        try:
            self.driver = webdriver.Chrome(service=service, options=options)
        except WebDriverException as e:
            shutil.rmtree(self.profile, ignore_errors=True)
            lines = (e.msg or "").strip().splitlines()
            raise BackendError(f"headless Chromium did not start ({(lines[0] if lines else type(e).__name__)[:200]})") from None
        self.origin: str | None = None
        self.script_timeout: float | None = None

    def fetch(self, url: str, timeout: float, max_bytes: int = DEFAULT_MAX_BYTES) -> Response:
        parts = urlsplit(url)
        origin = f"{parts.scheme}://{parts.netloc}"
        if origin != self.origin:
            # A page of the API's own origin: the fetches below are then same-origin (no CORS).
            self.driver.set_page_load_timeout(max(timeout, 5.0))
            self.driver.get(origin + "/")
            self.origin = origin
        if self.script_timeout != timeout:
            self.driver.set_script_timeout(timeout + 10.0)
            self.script_timeout = timeout
        result = self.driver.execute_async_script(_FETCH_SCRIPT, url, int(timeout * 1000), int(max_bytes))
        if not isinstance(result, dict):
            raise TransportError("the browser returned no result")
        if result.get("tooLarge"):
            raise ResponseTooLarge(f"the body is longer than {max_bytes} bytes")
        if "error" in result:
            raise TransportError("timed out" if result.get("timeout") else f"browser fetch failed ({result['error']})",
                                 timeout=bool(result.get("timeout")))
        headers = {str(k).lower(): str(v) for k, v in (result.get("headers") or {}).items()}
        return Response(int(result["status"]), base64.b64decode(result["body"]), headers)

    def close(self) -> None:
        try:
            self.driver.quit()
        except Exception:  # noqa: BLE001 - best effort at shutdown
            pass
        shutil.rmtree(self.profile, ignore_errors=True)


class SeleniumBackend:
    """Headless Chromium through Selenium and chromedriver, as the study collected its data.

    A WebDriver session is not thread-safe, so each concurrent request holds a
    browser of its own: up to ``max_browsers`` start on demand and are reused.
    """

    name = "selenium"

    def __init__(self, chrome_binary: str = CHROME_BINARY, chromedriver: str = CHROMEDRIVER, max_browsers: int = 1):
        try:
            import selenium  # noqa: F401
        except ImportError:
            raise BackendError("--backend selenium needs the selenium package: pip install 'geotrainr[scrape]'") from None
        for what, path, hint in (
            ("Chromium", chrome_binary, "--chrome-binary"),
            ("chromedriver", chromedriver, "--chromedriver"),
        ):
            if not Path(path).is_file():
                raise BackendError(
                    f"--backend selenium: {what} not found at {path} (Debian/Ubuntu: apt-get install chromium "
                    f"chromium-driver; or pass {hint} PATH)"
                )
        # Selenium's debug log would print every command, URL (and so the key) included.
        logging.getLogger("selenium.webdriver.remote.remote_connection").setLevel(logging.INFO)
        self.chrome_binary = chrome_binary
        self.chromedriver = chromedriver
        self.max_browsers = max(1, max_browsers)
        self._idle: queue.Queue[_Browser] = queue.Queue()
        self._all: list[_Browser] = []
        self._lock = threading.Lock()
        self._closed = False

    def _acquire(self) -> _Browser:
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            pass
        with self._lock:
            if self._closed:
                raise TransportError("backend closed")
            if len(self._all) < self.max_browsers:
                browser = _Browser(self.chrome_binary, self.chromedriver)
                self._all.append(browser)
                return browser
        return self._idle.get()

    def start(self) -> None:
        """Start one browser now, so that a broken installation fails before any request."""
        self._idle.put(self._acquire())

    def get(self, url: str, timeout: float, max_bytes: int = DEFAULT_MAX_BYTES) -> Response:
        from selenium.common.exceptions import TimeoutException, WebDriverException

        browser = self._acquire()
        healthy = True
        try:
            return browser.fetch(url, timeout, max_bytes)
        except TimeoutException:
            browser.origin = None
            raise TransportError("timed out", timeout=True) from None
        except WebDriverException as e:
            # The session may be gone (crashed renderer): replace the browser on the next request.
            healthy = False
            raise TransportError(f"browser error ({type(e).__name__})") from None
        finally:
            if healthy:
                self._idle.put(browser)
            else:
                with self._lock:
                    if browser in self._all:
                        self._all.remove(browser)
                browser.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            browsers, self._all = self._all, []
        for b in browsers:
            b.close()


def make_backend(name: str, workers: int = 1, chrome_binary: str = CHROME_BINARY, chromedriver: str = CHROMEDRIVER) -> Backend:
    """The backend called ``name`` (``http`` or ``selenium``)."""
    if name == "http":
        return HttpBackend()
    if name == "selenium":
        backend = SeleniumBackend(chrome_binary, chromedriver, max_browsers=workers)
        backend.start()
        return backend
    raise BackendError(f"unknown backend {name!r}: use http or selenium")

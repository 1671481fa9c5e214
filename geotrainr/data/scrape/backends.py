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
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

from geotrainr import __version__
from geotrainr.data.scrape.errors import BackendError, TransportError

USER_AGENT = f"geotrainr/{__version__} (+street view dataset collection)"
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
    """Fetches URLs; must be safe to call from several threads."""

    name: str

    def get(self, url: str, timeout: float) -> Response: ...

    def close(self) -> None: ...


class HttpBackend:
    """urllib from the standard library: one connection per request, proxies from the environment."""

    name = "http"

    def __init__(self) -> None:
        self._opener = urllib.request.build_opener()

    def get(self, url: str, timeout: float) -> Response:
        request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, "Accept": "*/*"})
        try:
            with self._opener.open(request, timeout=timeout) as r:
                body = r.read()
                return Response(r.status, body, {k.lower(): v for k, v in r.headers.items()})
        except urllib.error.HTTPError as e:
            try:
                body = e.read()
            except (OSError, http.client.HTTPException):
                body = b""
            return Response(e.code, body, {k.lower(): v for k, v in (e.headers or {}).items()})
        except urllib.error.URLError as e:
            reason = e.reason
            if isinstance(reason, (socket.timeout, TimeoutError)):
                raise TransportError("timed out", timeout=True) from None
            raise TransportError(f"{type(reason).__name__}: {reason}") from None
        except (socket.timeout, TimeoutError):
            raise TransportError("timed out", timeout=True) from None
        except http.client.IncompleteRead as e:
            raise TransportError(f"body cut off after {len(e.partial)} bytes") from None
        except (http.client.HTTPException, OSError) as e:
            raise TransportError(f"{type(e).__name__}: {e}") from None

    def close(self) -> None:
        pass


_FETCH_SCRIPT = """
const url = arguments[0], ms = arguments[1], done = arguments[arguments.length - 1];
const ctrl = new AbortController();
const timer = setTimeout(() => ctrl.abort(), ms);
fetch(url, {signal: ctrl.signal, cache: "no-store", credentials: "omit"})
  .then(async (r) => {
    const buf = new Uint8Array(await r.arrayBuffer());
    clearTimeout(timer);
    let bin = "";
    for (let i = 0; i < buf.length; i += 0x8000) {
      bin += String.fromCharCode.apply(null, buf.subarray(i, i + 0x8000));
    }
    const headers = {};
    r.headers.forEach((v, k) => { headers[k.toLowerCase()] = v; });
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

    def fetch(self, url: str, timeout: float) -> Response:
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
        result = self.driver.execute_async_script(_FETCH_SCRIPT, url, int(timeout * 1000))
        if not isinstance(result, dict):
            raise TransportError("the browser returned no result")
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

    def get(self, url: str, timeout: float) -> Response:
        from selenium.common.exceptions import TimeoutException, WebDriverException

        browser = self._acquire()
        healthy = True
        try:
            return browser.fetch(url, timeout)
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

"""Limits every request of a run shares: retries with backoff, the rate limit, the request budget.

All three are thread-safe: the scheduler's threads share one of each through the client.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass

from geotrainr.data.scrape.exceptions import BudgetReached, Stopped


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter; ``attempts`` counts the first try."""

    attempts: int = 6
    base_delay: float = 0.5
    max_delay: float = 30.0
    timeout: float = 20.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait after failed try number ``attempt`` (0-based): half fixed, half random."""
        d = min(self.max_delay, self.base_delay * (2**attempt))
        d = d / 2 + random.uniform(0, d / 2)
        if retry_after is not None:
            d = max(d, min(retry_after, self.max_delay))
        return d


class Budget:
    """Counts requests (thread-safe) and refuses the ones over the caps.

    Image requests are billed; metadata requests are free but counted on their
    own. Every try counts, retries included: the cap is a hard upper bound on
    what Google can bill for this run.
    """

    def __init__(self, max_images: int | None = None, max_metadata: int | None = None):
        self.max_images = max_images
        self.max_metadata = max_metadata
        self.images = 0
        self.metadata = 0
        self.retries = 0
        self.reached: str | None = None
        self._lock = threading.Lock()

    def reserve(self, kind: str) -> None:
        with self._lock:
            if kind == "image":
                if self.max_images is not None and self.images >= self.max_images:
                    self.reached = self.reached or "image"
                    raise BudgetReached(kind)
                self.images += 1
            else:
                if self.max_metadata is not None and self.metadata >= self.max_metadata:
                    self.reached = self.reached or "metadata"
                    raise BudgetReached(kind)
                self.metadata += 1

    def count_retry(self) -> None:
        with self._lock:
            self.retries += 1


class RateLimiter:
    """At most ``rate`` requests per second over all threads (0: no limit)."""

    def __init__(self, rate: float = 0.0):
        self.interval = 1.0 / rate if rate and rate > 0 else 0.0
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self, stop: threading.Event | None = None) -> None:
        if not self.interval:
            return
        with self._lock:
            now = time.monotonic()
            slot = max(now, self._next)
            self._next = slot + self.interval
        if slot > now:
            if stop is not None:
                if stop.wait(slot - now):
                    raise Stopped()
            else:
                time.sleep(slot - now)

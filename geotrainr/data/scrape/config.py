"""The settings of one ``geotrainr scrape`` run, typed, checked, and which client serves them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from geotrainr.data.scrape.backends import CHROME_BINARY, CHROMEDRIVER
from geotrainr.data.scrape.client import ImageSpec, StreetViewClient
from geotrainr.data.scrape.exceptions import ScrapeError, redact
from geotrainr.data.scrape.limits import RetryPolicy
from geotrainr.data.scrape.mapillary import MapillaryClient

#: ``--source`` value -> the client class that collects from it
CLIENTS: dict[str, type[StreetViewClient]] = {
    source: client for client in (StreetViewClient, MapillaryClient) for source in client.SOURCES
}
#: how the collected rows are split: ``group`` keeps every view of one panorama (or photo) in one split,
#: ``block`` keeps whole geographic cells of ``block_km`` together
SPLIT_METHODS = ("group", "block")


@dataclass
class ScrapeConfig:
    """Everything one run needs; the command fills it from its flags (or a ``--config`` file)."""

    out: Path
    countries: list[str]
    per_country: int | None = None
    places: int | None = None
    geonames: Path | None = None
    #: GeoNames feature classes kept from a dump file; None: all
    feature_classes: list[str] | None = field(default_factory=lambda: ["P"])
    min_population: int = 0
    seed: int = 0
    jitter_m: float = 0.0
    headings: list[float] = field(default_factory=lambda: [0.0])
    #: the images asked for; ``spec.source`` (``--source``) picks the client
    spec: ImageSpec = field(default_factory=ImageSpec)
    #: None: the client's public endpoint
    api_url: str | None = None
    backend: str = "http"
    chrome_binary: str = CHROME_BINARY
    chromedriver: str = CHROMEDRIVER
    #: concurrent requests (threads)
    threads: int = 4
    #: requests per second over all threads, 0: no limit
    rate: float = 20.0
    max_requests: int | None = None
    max_metadata: int | None = None
    price_per_1000: float = 7.0
    dry_run: bool = False
    exclude: list[Path] = field(default_factory=list)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    shard_rows: int = 500
    flush_seconds: float = 30.0
    split_by: str = "group"
    val: float = 0.2
    test: float = 0.0
    block_km: float = 50.0
    progress: bool = True
    max_consecutive_failures: int = 20
    #: resume although the folder's recorded settings are unreadable or missing
    force: bool = False
    #: Mapillary: take 360-degree panoramas too; never two photos of one capture sequence
    panoramas: bool = False
    one_per_sequence: bool = False

    def __post_init__(self) -> None:
        if self.api_url is None and self.spec.source in CLIENTS:
            self.api_url = self.client_class.API_URL

    @property
    def client_class(self) -> type[StreetViewClient]:
        return CLIENTS[self.spec.source]

    @property
    def endpoint(self) -> str:
        """The API URL in use (the client's public one unless ``--api-url`` says otherwise)."""
        return self.api_url or self.client_class.API_URL

    def validate(self) -> None:
        """Raise :class:`ScrapeError` (one line naming the flag) on a setting no run can honour."""
        if self.spec.source not in CLIENTS:
            raise ScrapeError(f"--source {self.spec.source!r}: expected {', '.join(CLIENTS)}")
        self.spec.validate()
        if not self.headings:
            raise ScrapeError("--headings: give at least one heading, e.g. 0 or 0,90,180,270")
        for h in self.headings:
            if not (0 <= h <= 360):
                raise ScrapeError(f"--headings {h:g}: headings are compass degrees in [0, 360]")
        if len(set(self.headings)) != len(self.headings):
            raise ScrapeError("--headings: a heading is listed twice")
        if self.threads < 1:
            raise ScrapeError("--threads must be at least 1")
        if self.rate < 0:
            raise ScrapeError("--rate must be 0 (no limit) or positive")
        for name, value in (("--max-requests", self.max_requests), ("--max-metadata", self.max_metadata)):
            if value is not None and value < 0:
                raise ScrapeError(f"{name} must be 0 or more")
        if self.retry.attempts < 1:
            raise ScrapeError("--retries must be at least 1 (the first try counts)")
        if self.jitter_m < 0:
            raise ScrapeError("--jitter-m must be 0 or more")
        if self.split_by not in SPLIT_METHODS:
            raise ScrapeError(f"--split-by {self.split_by!r}: expected {' or '.join(SPLIT_METHODS)}")
        if not (0 <= self.val < 1 and 0 <= self.test < 1 and self.val + self.test < 1):
            raise ScrapeError("--val and --test must be fractions with val + test < 1")
        url = self.endpoint
        if not url.startswith(("http://", "https://")):
            raise ScrapeError(f"--api-url {redact(url)!r}: expected an http:// or https:// URL")
        if "?" in url:
            raise ScrapeError("--api-url must not carry a query string (credentials come from the environment)")
        self.client_class.check_config(self)

    def settings(self) -> dict:
        """Settings that must stay the same for every run writing into one folder."""
        return self.client_class.settings(self)

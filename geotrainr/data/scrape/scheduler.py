"""The scheduler of a run: threads, the stop signal and Ctrl-C, one place per task.

One place at a time per thread: a metadata request (free), then the image
requests of every heading not collected yet. A thread journals each view as
soon as its image is in place; the main thread records a place as finished
only after that, so a place counts as done only once all its views are on
record, and a stopped place is picked up again by the next run. The rate
limit, the retries and the budget are the client's (see ``limits``), shared
by all threads.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from tqdm.auto import tqdm

from geotrainr.data.scrape.client import StreetViewClient
from geotrainr.data.scrape.config import ScrapeConfig
from geotrainr.data.scrape.exceptions import (
    BudgetReached,
    InvalidAnswer,
    RequestDeniedError,
    RetriesExhaustedError,
    ScrapeError,
    Stopped,
    redact,
)
from geotrainr.data.scrape.limits import Budget
from geotrainr.data.scrape.places import Place
from geotrainr.data.scrape.records import Panorama
from geotrainr.data.scrape.writer import FINAL_OUTCOMES, DatasetStore, Loaded, image_name

MAX_FAILURE_WARNINGS = 10
#: CSV beside the index listing the places that failed in the last run, with the reason.
FAILED_LIST = "failed.csv"
#: Exit status after Ctrl-C (128 + SIGINT), as shells report it.
EXIT_INTERRUPTED = 130


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
    """What one place gave: its outcome (see writer.FINAL_OUTCOMES, or budget/stopped/denied/fatal/failed), its rows."""

    place: Place
    outcome: str = "failed"
    pano: Panorama | None = None
    rows: list[dict] = field(default_factory=list)
    error: str | None = None
    fatal: BaseException | None = None


class Registry:
    """Which place owns which panorama, and which views exist (shared by the threads)."""

    def __init__(self, loaded: Loaded):
        self.owner = loaded.owners()
        self.done = loaded.done_keys()
        self._lock = threading.Lock()
        if "sequence" in loaded.rows.columns:  # --one-per-sequence: sequences on record are taken
            for seq, place in zip(loaded.rows["sequence"], loaded.rows["place_id"]):
                if isinstance(seq, str) and seq:
                    self.owner.setdefault(sequence_key(seq), str(place))

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


def sequence_key(sequence: str) -> str:
    """Registry key of a capture sequence (never equal to an image id)."""
    return f"sequence\x00{sequence}"


class Scheduler:
    """Runs the places of one plan on ``cfg.threads`` threads; counts into ``stats``; ``fatal`` ends the run."""

    def __init__(self, cfg: ScrapeConfig, stats: Stats, budget: Budget, warn: Callable[[str], None], stderr: TextIO):
        self.cfg = cfg
        self.stats = stats
        self.budget = budget
        self.warn = warn
        self.stderr = stderr
        self.stop = threading.Event()
        self.interrupted = False
        self.fatal: BaseException | None = None

    # --- Ctrl-C ----------------------------------------------------------------

    def on_sigint(self, signum: int, frame: object) -> None:
        """First Ctrl-C: stop handing out work, let requests in flight end (within --timeout), write, summarise.

        Second Ctrl-C: exit at once. Everything on record is already on the
        disk (atomic, fsynced), so the next run resumes cleanly either way.
        """
        if self.interrupted:
            _write_stderr("\ninterrupted again: exiting now; run the same command again to continue\n")
            os._exit(EXIT_INTERRUPTED)
        self.interrupted = True
        self.stop.set()
        _write_stderr(f"\ninterrupted: finishing the requests in flight (at most {self.cfg.retry.timeout:g} s), "
                      "then writing the index; Ctrl-C again to quit at once\n")

    def install_sigint(self) -> Callable | int | None:
        """Our SIGINT handler while the run writes (main thread only); returns the one to restore."""
        if threading.current_thread() is not threading.main_thread():
            return None
        return signal.signal(signal.SIGINT, self.on_sigint)

    # --- collecting -----------------------------------------------------------

    def collect(self, todo: list[Place], client: StreetViewClient, store: DatasetStore, loaded: Loaded,
                excluded: set[str]) -> None:
        """Hand the places to the threads; record each as it finishes; stop on Ctrl-C, the budget or a fatal error."""
        cfg = self.cfg
        registry = Registry(loaded)
        bar = tqdm(total=len(todo), unit="place", desc="scrape", disable=not cfg.progress, file=self.stderr,
                   mininterval=0.5, dynamic_ncols=True)
        fatal: BaseException | None = None
        consecutive = 0
        places = iter(todo)
        inflight: set[Future] = set()
        stopping = False
        try:
            with ThreadPoolExecutor(max_workers=cfg.threads, thread_name_prefix="scrape") as pool:
                try:
                    while True:
                        if self.stop.is_set() and self.interrupted:
                            stopping = True  # Ctrl-C: no new work
                        while not stopping and len(inflight) < 2 * cfg.threads:
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
                    # Ctrl-C or a bug: let the threads stop, keep what they finished.
                    self.interrupted = self.interrupted or isinstance(e, KeyboardInterrupt)
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
        self.fatal = fatal

    def _work(self, place: Place, client: StreetViewClient, store: DatasetStore, registry: Registry,
              excluded: set[str]) -> PlaceResult:
        """Collect one place (in one of the threads); never raises."""
        res = PlaceResult(place)
        claimed = False
        taken_sequence: str | None = None
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
                if not registry.claim(sequence_key(pano.sequence), place.place_id):
                    res.outcome = "duplicate"
                    return res
                taken_sequence = sequence_key(pano.sequence)
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
                if taken_sequence is not None:
                    registry.release_key(taken_sequence, place.place_id)
        return res

    def _record(self, res: PlaceResult, store: DatasetStore, registry: Registry) -> None:
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


def _write_stderr(text: str) -> None:
    """Write from a signal handler: straight to file descriptor 2, no buffered stream to re-enter."""
    try:
        os.write(2, text.encode())
    except OSError:
        pass

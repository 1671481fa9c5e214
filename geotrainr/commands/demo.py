"""`geotrainr demo-data`: build (or reuse) the offline demo dataset and print its index path."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from geotrainr.commands import OutputExistsError, add_force, add_out, deprecated
from geotrainr.data.demo import DEMO_VERSION, SOURCES, default_demo_dir, demo_summary, ensure_demo


def build_parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Build an offline evaluation set: map patches around GeoNames places in Europe, labelled with "
        "their country and coordinates, from NASA Blue Marble (--source bluemarble, the index name 'demo') or the "
        "shaded relief (--source relief, the index name 'demo-relief'). Aerial stand-ins for street imagery.",
    )
    p.add_argument("--source", default="bluemarble", choices=sorted(SOURCES),
                   help="imagery: bluemarble (default, satellite colours, 100 km blocks) or relief (shaded relief, "
                   "another seed's places, 200 km blocks)")
    add_out(p, default=None, what=f"folder (default: $GEOTRAINR_DEMO_DIR or {default_demo_dir()}; "
                   "other sources in a sibling folder demo-SOURCE)")
    p.add_argument("--per-country", type=int, default=80, help="places per country at most (default 80)")
    p.add_argument("--seed", type=int, default=None, help="place sample and split seed (default: the source's, 0 or 1)")
    add_force(p, "a cached copy (build it again even if it matches)")
    deprecated(p, "--rebuild", "--force", store="force", flag=True)
    p.add_argument("--quiet", action="store_true", help="print only the index path")
    return p


def _reused(folder: Path, source: str, params: dict) -> bool:
    """Whether ``folder`` holds the set these settings build (reused as it is, so nothing is replaced)."""
    try:
        saved = json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    wanted = {"version": DEMO_VERSION, "source": source, **{k: v for k, v in params.items() if v is not None}}
    return (folder / "index.parquet").exists() and all(saved.get(k, "bluemarble" if k == "source" else None) == v
                                                       for k, v in wanted.items())


def run(args: argparse.Namespace) -> int:
    folder = Path(args.out) if args.out else default_demo_dir(args.source)
    params = {"per_country": args.per_country, "seed": args.seed}
    if not args.force and folder.is_dir() and any(folder.iterdir()) and not _reused(folder, args.source, params):
        raise OutputExistsError(f"--out {folder} holds another set (other source, settings or version); "
                                "add --force to build this one there")
    path = ensure_demo(args.out, rebuild=args.force, source=args.source, per_country=args.per_country, seed=args.seed)
    if not args.quiet:
        print(demo_summary(path))
        print(f"\nNote: aerial stand-in ({SOURCES[args.source].description}), not street imagery.")
    print(path)
    return 0

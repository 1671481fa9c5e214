"""`geotrainr demo-data`: build (or reuse) the offline demo dataset and print its index path."""

from __future__ import annotations

import argparse

from geotrainr.data.demo import default_demo_dir, demo_summary, ensure_demo


def build_parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Build the offline demo dataset: NASA Blue Marble patches around GeoNames places in Europe, "
        "labelled with their country and coordinates. An aerial stand-in for street imagery.",
    )
    p.add_argument("--out", default=None, help=f"folder (default: $GEOTRAINR_DEMO_DIR or {default_demo_dir()})")
    p.add_argument("--per-country", type=int, default=80, help="places per country at most (default 80)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rebuild", action="store_true", help="build again even if a matching copy is cached")
    p.add_argument("--quiet", action="store_true", help="print only the index path")
    return p


def run(args: argparse.Namespace) -> int:
    path = ensure_demo(args.out, rebuild=args.rebuild, per_country=args.per_country, seed=args.seed)
    if not args.quiet:
        print(demo_summary(path))
        print("\nNote: aerial stand-in (Blue Marble patches), not street imagery.")
    print(path)
    return 0

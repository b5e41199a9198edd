"""python -m jobs.pipeline: the whole flow end to end on the embedded default.

synthetic market (or --source) -> ingest -> print the data-version summary.
Runs directly or as ``ray job submit --working-dir . -- python -m jobs.pipeline``.
"""
from __future__ import annotations

import argparse
import sys

from cluster.lake.ingest import ingest
from jobs._cli import run


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m jobs.pipeline", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", default="synthetic")
    p.add_argument("--stocks", type=int, default=60)
    p.add_argument("--days", type=int, default=750)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--on-error", choices=["fail", "quarantine"], default=None)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    summary = {"ingest": ingest(args.source, on_error=args.on_error, stocks=args.stocks,
                                days=args.days, seed=args.seed, show_progress=True)}
    summary["data_version"] = summary["ingest"]["data_version"]
    return summary


if __name__ == "__main__":
    sys.exit(run(main))

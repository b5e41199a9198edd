"""python -m jobs.ingest --source PATH|synthetic [--format ...] [--on-error fail|quarantine]

Validates the source, commits one data version to lake/bars and publishes
``data_synced``. Prints a JSON summary as the last line of stdout.
"""
from __future__ import annotations

import argparse
import sys

from cluster.lake.ingest import ingest
from cluster.sources import FORMATS
from jobs._cli import run


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m jobs.ingest", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", required=True, help="a CSV/parquet file or folder, a Qlib "
                   "provider directory, or 'synthetic'")
    p.add_argument("--format", default="auto", choices=FORMATS)
    p.add_argument("--stocks", type=int, default=50, help="synthetic: number of stocks")
    p.add_argument("--days", type=int, default=500, help="synthetic: trading days")
    p.add_argument("--seed", type=int, default=0, help="synthetic: random seed")
    p.add_argument("--regime-shift-at", type=float, default=None, metavar="F",
                   help="synthetic: after fraction F of the days volatility doubles and the "
                   "learnable signal flips sign (summary: regime_shift_day)")
    p.add_argument("--signal-ic", type=float, default=None, metavar="X",
                   help="synthetic: plant a return component, predictable from past bars "
                   "only, of theoretical daily RankIC X (the weekly reversal is then off; "
                   "summary: planted_rank_ic)")
    p.add_argument("--on-error", choices=["fail", "quarantine"], default=None,
                   help="fail (default): refuse the input; quarantine: land good rows, "
                   "keep bad rows in the quarantine table")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    return ingest(args.source, args.format, args.on_error, stocks=args.stocks, days=args.days,
                  seed=args.seed, regime_shift_at=args.regime_shift_at,
                  signal_ic=args.signal_ic, show_progress=True)


if __name__ == "__main__":
    sys.exit(run(main))

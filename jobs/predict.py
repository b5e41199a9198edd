"""python -m jobs.predict --model NAME [--version V | --stage production]
                         [--start D] [--end D] [--instruments A,B] [--local]

Batch scoring on Ray Data: ``map_batches`` over the features table with an actor
pool (the model loaded once per actor), every prediction written to the
``predictions`` table with ``source=batch``. JSON last on stdout: model, version,
rows, days, seconds.
"""
from __future__ import annotations

import argparse
import sys

from cluster.monitoring.batch import score
from jobs._cli import run


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m jobs.predict", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="registered model name")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--version", help="registered version")
    g.add_argument("--stage", choices=["production", "staging", "validated", "trained"],
                   help="the newest version in this state (default production)")
    p.add_argument("--start", help="first day (YYYY-MM-DD)")
    p.add_argument("--end", help="last day (YYYY-MM-DD)")
    p.add_argument("--instruments", help="comma-separated instruments (default all)")
    p.add_argument("--concurrency", type=int, default=2, help="scoring actors")
    p.add_argument("--local", action="store_true", help="score in this process, no Ray")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    instruments = [i.strip() for i in args.instruments.split(",") if i.strip()] \
        if args.instruments else None
    out = score(args.model, args.version, args.stage, args.start, args.end, instruments,
                use_ray=not args.local, concurrency=args.concurrency)
    return {k: out[k] for k in ("model", "version", "rows", "days", "seconds",
                                "features_version", "run_id")}


if __name__ == "__main__":
    sys.exit(run(main))

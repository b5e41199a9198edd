"""python -m jobs.data versions | diff A B | show [--version V] [--instrument X]

Data versions of lake/bars: list them, diff two, or print bars as of a version.
"""
from __future__ import annotations

import argparse
import sys

from cluster.config import get_settings
from cluster.errors import MlopsError
from cluster.lake.bars import BarsTable
from jobs._cli import run


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m jobs.data", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("versions", help="list data versions as JSON")
    d = sub.add_parser("diff", help="what changed between two versions")
    d.add_argument("a", type=int)
    d.add_argument("b", type=int)
    s = sub.add_parser("show", help="bars as of a version, as JSON records")
    s.add_argument("--version", type=int, default=None)
    s.add_argument("--instrument", action="append", default=None)
    s.add_argument("--limit", type=int, default=20)
    return p.parse_args(argv)


def main(argv: list[str] | None = None):
    args = parse_args(argv)
    bars = BarsTable(get_settings().lake_dir)
    if args.command == "versions":
        return bars.versions()
    if args.command == "diff":
        return bars.diff(args.a, args.b)
    if args.limit < 0:
        raise ValueError(f"--limit must be >= 0, got {args.limit}")
    frame = bars.read(args.version, instruments=args.instrument)
    missing = sorted(set(args.instrument or []) - set(frame["instrument"].unique()))
    if missing:  # an instrument in a version's catalog always has bars in it
        at = "the latest data version" if args.version is None else \
            f"data version {args.version}"
        raise MlopsError(f"--instrument: {', '.join(missing)} not in the bars table as of "
                         f"{at} (`python -m jobs.data versions` lists the versions)")
    frame["date"] = frame["date"].dt.strftime("%Y-%m-%d")
    return frame.tail(args.limit).to_dict("records")


if __name__ == "__main__":
    sys.exit(run(main))

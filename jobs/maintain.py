"""python -m jobs.maintain [--table NAME ...] [--compact] [--zorder] [--checkpoint] [--vacuum]
                          [--dry-run] [--migrate]

Daily lake maintenance (no step flag: every step; no --table: every table): compact
small files, cluster by instrument, write Delta checkpoints, vacuum files no
protected version needs (a data version a registered model's lineage names, one a
live deployment uses, or one of the last lake.retain_versions). Maintenance changes
no data. --migrate first rewrites a lake written by an older release in this
layout (one atomic commit per table). Publishes ``lake_maintained``; prints a JSON
summary last: per table, files and bytes before and after, versions kept, seconds.
"""
from __future__ import annotations

import argparse
import sys

from cluster.config import get_settings
from cluster.lake.maintain import STEPS, maintain
from jobs._cli import run

_failed: list[str] = []


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m jobs.maintain", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--table", action="append", default=None, metavar="NAME",
                   help="a table under the lake (repeatable; default: every table)")
    p.add_argument("--compact", action="store_true", help="compact small files")
    p.add_argument("--zorder", action="store_true",
                   help="cluster by the registry's columns (sorted by instrument, date)")
    p.add_argument("--checkpoint", action="store_true", help="write a Delta checkpoint")
    p.add_argument("--vacuum", action="store_true",
                   help="delete files and log entries no protected version needs")
    p.add_argument("--dry-run", action="store_true", help="report what would be done")
    p.add_argument("--migrate", action="store_true",
                   help="rewrite tables in an older release's layout first")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    settings = get_settings()
    steps = [s for s in STEPS if getattr(args, s)]
    out = {}
    if args.migrate:
        from cluster.lake.migrate import migrate
        out["migrated"] = migrate(settings.lake_dir, dry_run=args.dry_run)
        if not steps:  # --migrate alone: only the migration
            return out
    summary = maintain(settings, args.table, steps or list(STEPS), dry_run=args.dry_run)
    _failed[:] = sorted(summary["errors"])
    return {**out, **summary}


if __name__ == "__main__":
    code = run(main, check_layout=False)
    sys.exit(code or (1 if _failed else 0))

"""Shared by the bench scripts: where the data is, timing, and the printed table."""
from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT))


def shared(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.exists():
        sys.exit(f"bench needs {path} (the shared market data beside the repo)")
    return path


def timed(fn, repeat: int = 3, setup=None) -> tuple[float, object]:
    """Median wall seconds of ``fn()`` over ``repeat`` runs (``setup()`` untimed before each)."""
    times, result = [], None
    for _ in range(repeat):
        if setup is not None:
            setup()
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def report(title: str, rows: list[dict]) -> None:
    """Print a readable table on stderr and the rows as JSON last on stdout."""
    print(f"\n== {title}", file=sys.stderr)
    for r in rows:
        print("  " + "  ".join(f"{k}={v}" for k, v in r.items()), file=sys.stderr)
    print(json.dumps({"bench": title, "rows": rows}))

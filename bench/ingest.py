"""Ingest of sp500_5yr_dev.parquet versus plain pandas read + pyarrow parquet write.

    python bench/ingest.py [--repeat 3]

Ours: read, validate every rule, adjust, quarantine the 4 bad rows, commit one
Delta version partitioned by instrument. Baseline: pd.read_parquet + pq.write_table
of the same frame. Same run, same machine; target: ours within 3x of the baseline.
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from _common import report, shared, timed


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    from cluster.config import load_settings
    from cluster.lake.ingest import ingest

    source = shared("sp500_5yr_dev.parquet")
    work = Path(tempfile.mkdtemp(prefix="bench_ingest_"))

    def baseline():
        frame = pd.read_parquet(source)
        pq.write_table(pa.Table.from_pandas(frame), work / "baseline.parquet")
        return len(frame)

    home = work / "home"

    def fresh():
        shutil.rmtree(home, ignore_errors=True)

    def ours():
        return ingest(str(source), on_error="quarantine", settings=load_settings(home=home))

    t_base, n = timed(baseline, args.repeat)
    t_ours, summary = timed(ours, args.repeat, setup=fresh)
    t_again, again = timed(ours, args.repeat)  # identical re-ingest: no new version
    shutil.rmtree(work, ignore_errors=True)
    report("ingest sp500_5yr_dev.parquet", [
        {"what": "baseline pandas read + pyarrow write", "rows": n, "seconds": round(t_base, 3)},
        {"what": "ours: validate + Delta commit", "rows": summary["rows_added"],
         "quarantined": summary["rows_quarantined"], "seconds": round(t_ours, 3),
         "ratio_vs_baseline": round(t_ours / t_base, 2), "target": "<= 3.0"},
        {"what": "ours: identical re-ingest (no new version)", "created": again["created"],
         "seconds": round(t_again, 3), "ratio_vs_baseline": round(t_again / t_base, 2)},
    ])


if __name__ == "__main__":
    main()

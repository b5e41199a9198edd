"""Daily operation of the lake, simulated in one run, with and without maintenance.

    python bench/lake.py                      # both scenarios below
    python bench/lake.py dev --days 250       # 241 shared tickers, 250 daily files
    python bench/lake.py synthetic --stocks 5000 --days 60 --history 250

A history is ingested, then D daily files one at a time; each day: the ingest of
that day's file (``cluster.lake.ingest.ingest``, what ``jobs.ingest --source
DAY.parquet`` runs, in process so Python's start-up is not timed) and an
incremental feature run (in process, as ``bench/features.py incremental``: no Ray
start). Two lakes take the same days interleaved: one never maintained, one with
``jobs.maintain`` (every step) every ``--maintain-every`` days.

Printed at day 1, D/2 and D for each lake (each figure also as the median of the
five days ending there: the machine is shared, so single days are noisy), and again
"replayed": at the end, day 1, D/2 and D are run three more times each, interleaved,
from copies of the lakes as they were before those days, so that the three are
measured under the same load (the ratios worth reading on a shared machine): ingest
seconds, incremental feature seconds (wall and CPU: the CPU time of this process
moves less with the other load on a shared machine), one-instrument bars read ms (what ``jobs.data
show --instrument X`` reads: open + pruned scan), table open ms per table, and
files and bytes in each table's latest snapshot. Baseline at day D: a full feature
recompute (in process). Targets, with maintenance: every per-day figure at day D
within 1.5x of day 1, incremental >= 50x faster than the full recompute (dev),
one-instrument read <= 20 ms.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, report, shared

TABLES = ("bars", "features", "events")


def day_files(frame, date_column: str, days: int, work: Path):
    """The source frame split into a history file and one file per trading day."""
    import pandas as pd
    dates = sorted(pd.Series(frame[date_column].unique()).tolist())
    cut = dates[-days]
    work.mkdir(parents=True, exist_ok=True)
    history = work / "history.parquet"
    frame[frame[date_column] < cut].to_parquet(history, index=False)
    out = []
    for i, d in enumerate(dates[-days:], start=1):
        path = work / f"day{i:04d}.parquet"
        frame[frame[date_column] == d].to_parquet(path, index=False)
        out.append(path)
    return history, out


class Lake:
    def __init__(self, root: Path, name: str, maintain_every: int | None,
                 home: Path | None = None):
        from cluster.config import load_settings
        from cluster.events import EventBus
        from cluster.features.pipeline import FeaturePipeline
        self.name, self.maintain_every = name, maintain_every
        self.settings = load_settings(home=home or root / name,
                                      tracking_uri=f"sqlite:///{root / 'registry.db'}")
        self.bus = EventBus(self.settings.lake_dir)
        self.pipe = FeaturePipeline(self.settings, self.bus)
        self.days: list[dict] = []
        self.maintenance: list[dict] = []

    def ingest(self, path: Path) -> dict:
        from cluster.lake.ingest import ingest
        return ingest(str(path), on_error="quarantine", settings=self.settings, bus=self.bus)

    def day(self, k: int, path: Path, probe: str, measure: bool) -> None:
        t0, c0 = time.perf_counter(), time.process_time()
        summary = self.ingest(path)
        t1, c1 = time.perf_counter(), time.process_time()
        features = self.pipe.run(incremental=True, use_ray=False)
        t2, c2 = time.perf_counter(), time.process_time()
        row = {"day": k, "ingest_s": t1 - t0, "features_s": t2 - t1,
               "ingest_cpu_s": c1 - c0, "features_cpu_s": c2 - c1,
               "computed_rows": features["computed_rows"], "created": summary["created"],
               "quarantined": summary.get("rows_quarantined", 0)}
        if measure:
            row.update(self.probe(probe))
        self.days.append(row)
        if self.maintain_every and k % self.maintain_every == 0:
            from cluster.lake.maintain import maintain
            t3 = time.perf_counter()
            out = maintain(self.settings)
            self.maintenance.append({"day": k, "seconds": round(time.perf_counter() - t3, 2),
                                     "errors": out["errors"],
                                     "tables": {n: r.get("seconds")
                                                for n, r in out["tables"].items()}})

    def probe(self, instrument: str) -> dict:
        """One-instrument read, table opens, and snapshot sizes (medians of 7)."""
        from deltalake import DeltaTable

        from cluster.lake import tables
        from cluster.lake.bars import BarsTable
        out = {}
        reads = []
        for _ in range(7):
            t0 = time.perf_counter()
            frame = BarsTable(self.settings.lake_dir).read(instruments=[instrument])
            reads.append(time.perf_counter() - t0)
        if frame.empty:
            sys.exit(f"bench: the probe instrument {instrument!r} has no bars in the lake")
        out["read_one_ms"] = statistics.median(reads) * 1000
        out["read_one_rows"] = len(frame)
        for name in TABLES:
            path = tables.table_path(self.settings.lake_dir, name)
            opens = []
            for _ in range(7):
                t0 = time.perf_counter()
                dt = DeltaTable(str(path))
                opens.append(time.perf_counter() - t0)
            actions = tables.add_actions(dt)
            out[f"{name}_open_ms"] = statistics.median(opens) * 1000
            out[f"{name}_files"] = actions.num_rows
            out[f"{name}_mb"] = sum(actions.column("size_bytes").to_pylist()) / 2**20
        return out


def summarise(lake: Lake, at: list[int]) -> list[dict]:
    rows = []
    by_day = {r["day"]: r for r in lake.days}
    for k in at:
        window = [by_day[d] for d in range(max(1, k - 4), k + 1) if d in by_day]
        here = by_day[k]
        row = {"lake": lake.name, "day": k}
        for key in ("ingest_s", "features_s", "ingest_cpu_s", "features_cpu_s"):
            row[key] = round(here[key], 3)
            row[f"{key}_med5"] = round(statistics.median(r[key] for r in window), 3)
        for key, value in here.items():
            if key.endswith("_ms"):
                row[key] = round(value, 1)
            elif key.endswith("_mb"):
                row[key] = round(value, 2)
            elif key.endswith("_files") or key in ("computed_rows", "quarantined"):
                row[key] = value
        rows.append(row)
    return rows


def ratios(rows: list[dict], first: int, last: int) -> dict:
    a = next(r for r in rows if r["day"] == first)
    b = next(r for r in rows if r["day"] == last)
    keys = ["ingest_s_med5", "features_s_med5", "ingest_cpu_s_med5", "features_cpu_s_med5",
            "read_one_ms", "bars_open_ms",
            "features_open_ms", "events_open_ms"]
    return {"lake": a["lake"], "what": f"day {last} / day {first}",
            **{k: round(b[k] / a[k], 2) if a[k] else None for k in keys}}


def run_scenario(title: str, source, date_column: str, days: int, maintain_every: int,
                 probe: str, work: Path) -> None:
    history, daily = day_files(source, date_column, days, work / "days")
    plain = Lake(work, "no-maintenance", None)
    kept = Lake(work, "maintained", maintain_every)
    for lake in (plain, kept):
        t0 = time.perf_counter()
        lake.ingest(history)
        lake.pipe.run(incremental=False, use_ray=False)
        print(f"[{title}] {lake.name}: history loaded in {time.perf_counter() - t0:.1f} s",
              file=sys.stderr, flush=True)
    at = sorted({1, days // 2, days})
    snaps = work / "snapshots"
    for k, path in enumerate(daily, start=1):
        for lake in (plain, kept):
            if k in at:  # the lake as it is before day k, to replay that day at the end
                snapshot(lake.settings.home, snaps / f"{lake.name}-{k}")
            lake.day(k, path, probe, measure=k in at)
        if k % 10 == 0 or k in at:
            print(f"[{title}] day {k}/{days}: ingest {kept.days[-1]['ingest_s']:.3f} s / "
                  f"{plain.days[-1]['ingest_s']:.3f} s, features {kept.days[-1]['features_s']:.3f}"
                  f" s / {plain.days[-1]['features_s']:.3f} s (maintained / not)",
                  file=sys.stderr, flush=True)
    rows = summarise(plain, at) + summarise(kept, at)
    # the baseline: a full recompute at day D, on the maintained lake
    t0, c0 = time.perf_counter(), time.process_time()
    full = kept.pipe.run(incremental=False, use_ray=False)
    t_full, c_full = time.perf_counter() - t0, time.process_time() - c0
    inc = statistics.median(r["features_s"] for r in kept.days[-5:])
    inc_cpu = statistics.median(r["features_cpu_s"] for r in kept.days[-5:])
    measured = list(rows)
    for name in ("no-maintenance", "maintained"):
        rows.append(ratios([r for r in measured if r.get("lake") == name], 1, days))
    replayed = replay(work, snaps, daily, at, probe, rounds=3)
    rows += replayed
    for name in ("no-maintenance", "maintained"):
        rows.append(ratios([r for r in replayed if r.get("lake") == f"{name} (replayed)"],
                           1, days))
    rows.append({"what": f"full recompute at day {days} (in process)",
                 "seconds": round(t_full, 2), "rows": full["rows"],
                 "incremental_med5_s": round(inc, 3),
                 "speedup_incremental_vs_full": round(t_full / inc, 1),
                 "cpu_seconds": round(c_full, 2), "incremental_cpu_med5_s": round(inc_cpu, 3),
                 "cpu_speedup": round(c_full / inc_cpu, 1), "target": ">= 50"})
    rows.append({"what": "maintenance runs (maintained lake)",
                 "seconds": [m["seconds"] for m in kept.maintenance],
                 "seconds_per_table": [m["tables"] for m in kept.maintenance],
                 "errors": [m["errors"] for m in kept.maintenance if m["errors"]]})
    # jobs.data show as a user runs it, at day D (process start-up included)
    for lake in (plain, kept):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "jobs.data", "show", "--instrument", probe],
                       cwd=ROOT, env={"MLOPS_HOME": str(lake.settings.home),
                                      "PATH": "/usr/bin:/bin", "TQDM_DISABLE": "1"},
                       check=True, capture_output=True)
        rows.append({"lake": lake.name, "what": f"`jobs.data show --instrument {probe}` at "
                     f"day {days}, whole process", "seconds": round(time.perf_counter() - t0, 2)})
    report(f"lake: daily operation, {title}", rows)


def snapshot(src: Path, dst: Path) -> None:
    """A copy of a lake made of hard links: Delta data files, log entries and the
    factor cache are never changed in place (new files replace them), so the copy
    stays as it was while the original moves on, at no disk cost."""
    shutil.copytree(src, dst, copy_function=os.link)


def replay(work: Path, snaps: Path, daily: list[Path], at: list[int], probe: str,
           rounds: int) -> list[dict]:
    """Day 1, D/2 and D again, interleaved, from copies of the lakes as they were
    before those days: the three days' figures are then measured under the same load
    (this machine is shared; the live run's day 1 and day D are far apart in time)."""
    runs: dict[tuple[str, int], list[dict]] = {}
    for _ in range(rounds):
        for name in ("no-maintenance", "maintained"):
            for k in at:
                home = work / "replay"
                shutil.rmtree(home, ignore_errors=True)
                snapshot(snaps / f"{name}-{k}", home)
                lake = Lake(work, name, None, home=home)
                lake.day(k, daily[k - 1], probe, measure=True)
                runs.setdefault((name, k), []).append(lake.days[-1])
                shutil.rmtree(home, ignore_errors=True)
    out = []
    for (name, k), rs in runs.items():
        row = {"lake": f"{name} (replayed)", "day": k}
        for key in rs[0]:
            if key.endswith(("_s", "_ms")):
                row[key] = round(statistics.median(r[key] for r in rs), 3)
                if key in ("ingest_s", "features_s", "ingest_cpu_s", "features_cpu_s"):
                    row[f"{key}_med5"] = row[key]  # (median of the rounds)
            elif key.endswith("_files") or key in ("computed_rows", "quarantined"):
                row[key] = rs[0][key]
        out.append(row)
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("which", nargs="?", choices=["dev", "synthetic", "both"], default="both")
    p.add_argument("--days", type=int, default=None, help="daily files (dev 250, synthetic 60)")
    p.add_argument("--stocks", type=int, default=5000, help="synthetic: stocks")
    p.add_argument("--history", type=int, default=250, help="synthetic: days before the D")
    p.add_argument("--maintain-every", type=int, default=20)
    p.add_argument("--keep", action="store_true", help="keep the work folder")
    args = p.parse_args()
    import pandas as pd
    work = Path(tempfile.mkdtemp(prefix="bench_lake_"))
    try:
        if args.which in ("dev", "both"):
            source = pd.read_parquet(shared("sp500_5yr_dev.parquet"))
            # the probe: an instrument with bars on the last day (AAPL is not among them)
            probe = str(source.loc[source["Date"] == source["Date"].max(), "Name"].min())
            run_scenario("241 shared tickers", source, "Date", args.days or 250,
                         args.maintain_every, probe, work / "dev")
        if args.which in ("synthetic", "both"):
            from cluster.sources.synthetic import synthetic_market
            days = args.days or 60
            source = synthetic_market(n_stocks=args.stocks, n_days=args.history + days, seed=7)
            column = "Date" if "Date" in source else "date"
            name = str(source["Name" if "Name" in source else "instrument"].iloc[0])
            run_scenario(f"{args.stocks} synthetic stocks", source, column, days,
                         args.maintain_every, name, work / "synthetic")
    finally:
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

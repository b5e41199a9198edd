"""Feature pipeline benchmarks, each against a baseline measured in the same run.

    python bench/features.py qlib          # ours (Ray Data) vs Qlib's Alpha158 handler
    python bench/features.py incremental   # one new day: incremental vs full recompute
    python bench/features.py scale [--stocks 500,5000] [--days 1260]

qlib: the 241 dev stocks x 5 years (sp500_5yr_dev.parquet, ingested with the 4
bad rows quarantined). Ours: the full pipeline (indicators + Alpha158 + label,
written to the Delta features table) on a local Ray with 2 CPUs; Ray start-up is
timed and reported apart. Baseline: Qlib 0.9.7's own ``Alpha158`` handler (raw
values, no processors, ``kernels=2``) over a provider directory of the same bars,
built by the bench. Target: >= 20x. Also printed: ours in process, and ours in
process computing only (the same blocks, nothing written: the share of the Delta
write, which Qlib's handler, returning a frame, does not do), and the same on Ray
Data's 2 CPUs.

incremental: the same bars without their last day are computed in full; then the
last day lands (one data version) and ``--incremental`` computes it. Baseline: a
full recompute at that version. Target: >= 50x.

scale: a synthetic market of N stocks x D days is ingested, then ``jobs.features``
runs in a subprocess (a local Ray); time per row and the peak memory of the job's
whole process tree (sum of PSS, sampled every 0.25 s: Ray's workers and object
store included). Target: about linear time, peak <= 4 GiB at 5,000 stocks.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from _common import ROOT, report, shared, timed


def ingest_dev(home: Path):
    from cluster.config import load_settings
    from cluster.lake.ingest import ingest
    settings = load_settings(home=home)
    ingest(str(shared("sp500_5yr_dev.parquet")), on_error="quarantine", settings=settings)
    return settings


def bench_qlib(args) -> None:
    import qlib
    from qlib.contrib.data.handler import Alpha158

    from cluster.events import EventBus
    from cluster.features.pipeline import FeaturePipeline
    from cluster.features.qlib_bridge import export_qlib
    from cluster.lake.bars import BarsTable
    from cluster.ray_env import ensure_ray

    work = Path(tempfile.mkdtemp(prefix="bench_features_"))
    settings = ingest_dev(work / "home")
    bars = BarsTable(settings.lake_dir).read()
    t0 = time.perf_counter()
    ensure_ray(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray_start = time.perf_counter() - t0

    pipe = FeaturePipeline(settings, EventBus(None))
    pipe.run(incremental=False, use_ray=True)  # warm the workers (imports, numba JIT)
    t_ours, summary = timed(lambda: pipe.run(incremental=False, use_ray=True), args.repeat)
    t_local, _ = timed(lambda: pipe.run(incremental=False, use_ray=False), args.repeat)
    t_compute, _ = timed(lambda: compute_only(settings), args.repeat)
    compute_only_ray(settings)  # warm
    t_compute_ray, _ = timed(lambda: compute_only_ray(settings), args.repeat)

    provider = work / "qlib"
    export_qlib(bars, provider)
    qlib.init(provider_uri=str(provider), region="us", kernels=2,
              exp_manager={"class": "MLflowExpManager", "module_path": "qlib.workflow.expm",
                           "kwargs": {"uri": f"sqlite:///{work}/mlruns.db",
                                      "default_exp_name": "bench"}})
    start, end = str(bars["date"].min().date()), str(bars["date"].max().date())

    def qlib_handler():
        h = Alpha158(instruments="all", start_time=start, end_time=end,
                     fit_start_time=start, fit_end_time=end,
                     infer_processors=[], learn_processors=[])
        return len(h.fetch())

    t_qlib, qrows = timed(qlib_handler, args.repeat)
    shutil.rmtree(work, ignore_errors=True)
    report("features: ours (Ray Data) vs Qlib Alpha158 handler, 241 stocks x 5y", [
        {"what": "qlib Alpha158 handler (kernels=2)", "seconds": round(t_qlib, 2),
         "rows": qrows},
        {"what": "ours, Ray Data, 2 CPUs (indicators+Alpha158+label, Delta write)",
         "seconds": round(t_ours, 2), "rows": summary["rows"],
         "speedup_vs_qlib": round(t_qlib / t_ours, 1)},
        {"what": "ours, in process", "seconds": round(t_local, 2),
         "speedup_vs_qlib": round(t_qlib / t_local, 1)},
        {"what": "ours, in process, compute only (no Delta write: Qlib's handler writes "
                 "nothing either)", "seconds": round(t_compute, 2),
         "speedup_vs_qlib": round(t_qlib / t_compute, 1)},
        {"what": "ours, Ray Data, 2 CPUs, compute only (the same blocks, counted, nothing "
                 "written)", "seconds": round(t_compute_ray, 2),
         "speedup_vs_qlib": round(t_qlib / t_compute_ray, 1)},
        {"what": "ray start-up (excluded above)", "seconds": round(ray_start, 2)},
    ])


def compute_only(settings) -> int:
    """The full run's computation, block by block as the pipeline reads and computes
    it (``compute_full`` on whole instruments), without writing the features: where
    the full run's time goes, and the work Qlib's handler does."""
    from cluster.features.compute import compute_full
    from cluster.features.featureset import feature_set_for
    from cluster.features.pipeline import _chunks, read_bar_files
    from cluster.lake.bars import BarsTable
    bars = BarsTable(settings.lake_dir).pinned()
    catalog, fs = bars.catalog(), feature_set_for(settings)
    rows = 0
    for group in _chunks(catalog.instruments, settings.feature_pipeline.instruments_per_block):
        part = compute_full(read_bar_files(group, bars.files_for(group)), catalog.calendar,
                            fs, bars.data_version())
        rows += part.features.num_rows
    return rows


def compute_only_ray(settings) -> int:
    """``compute_only`` on Ray Data, one task per block as the full run schedules them;
    each returns its row count (nothing written, no factor cache): what the full run's
    Ray path costs without the Delta write and the driver's commit."""
    import json

    import numpy as np

    from cluster.features.compute import compute_full
    from cluster.features.featureset import feature_set_for
    from cluster.features.pipeline import _chunks, one_operator_map, read_bar_files
    from cluster.lake.bars import BarsTable
    bars = BarsTable(settings.lake_dir).pinned()
    catalog, fs, version = bars.catalog(), feature_set_for(settings), bars.data_version()
    calendar = catalog.calendar
    items = [{"instruments": json.dumps(g), "files": json.dumps(bars.files_for(g))}
             for g in _chunks(catalog.instruments,
                              settings.feature_pipeline.instruments_per_block)]

    def compute(batch: dict) -> dict:
        return {"rows": np.array([
            compute_full(read_bar_files(json.loads(g), json.loads(f)), calendar, fs,
                         version).features.num_rows
            for g, f in zip(batch["instruments"], batch["files"])])}

    ds = one_operator_map(items, compute)  # scheduled as the pipeline's Ray path is
    return int(sum(b["rows"].sum() for b in ds.iter_batches(batch_size=None,
                                                           batch_format="numpy")))


def bench_incremental(args) -> None:
    from cluster.config import load_settings
    from cluster.events import EventBus
    from cluster.features.pipeline import FeaturePipeline
    from cluster.lake.bars import BarsTable

    work = Path(tempfile.mkdtemp(prefix="bench_incr_"))
    bars = BarsTable(ingest_dev(work / "src").lake_dir).read()
    last = bars["date"].max()
    prepared = work / "prepared"
    settings = load_settings(home=prepared)
    BarsTable(settings.lake_dir).commit(bars[bars["date"] < last], "history")
    FeaturePipeline(settings, EventBus(None)).run(incremental=False, use_ray=False)
    home = work / "run"
    state = {}

    def fresh():  # the lake before the new day, then the day lands (untimed)
        shutil.rmtree(home, ignore_errors=True)
        shutil.copytree(prepared, home)
        s = load_settings(home=home)
        BarsTable(s.lake_dir).commit(bars[bars["date"] == last], "new day")
        state["pipe"] = FeaturePipeline(s, EventBus(None))

    t_inc, inc = timed(lambda: state["pipe"].run(incremental=True, use_ray=False),
                       args.repeat, setup=fresh)
    t_full, full = timed(lambda: state["pipe"].run(incremental=False, use_ray=False),
                         args.repeat, setup=fresh)
    shutil.rmtree(work, ignore_errors=True)
    report("features: one new day for 241 stocks, incremental vs full recompute", [
        {"what": "full recompute", "seconds": round(t_full, 3), "rows": full["computed_rows"]},
        {"what": "incremental", "seconds": round(t_inc, 3), "rows": inc["computed_rows"],
         "speedup": round(t_full / t_inc, 1)},
    ])


def tree_pss(pid: int) -> int:
    import psutil
    try:
        root = psutil.Process(pid)
        procs = [root] + root.children(recursive=True)
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for p in procs:
        try:
            total += p.memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def run_measured(cmd: list[str], env: dict) -> tuple[float, int, str]:
    t0 = time.perf_counter()
    log = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=log,
                            text=True)
    peak = [0]

    def sample():
        while proc.poll() is None:
            peak[0] = max(peak[0], tree_pss(proc.pid))
            time.sleep(0.25)
    t = threading.Thread(target=sample, daemon=True)
    t.start()
    out, _ = proc.communicate()
    t.join()
    if proc.returncode:
        log.seek(0)
        sys.exit(f"{' '.join(cmd)} failed with {proc.returncode}:\n{log.read()[-3000:]}")
    return time.perf_counter() - t0, peak[0], out


def bench_scale(args) -> None:
    import json
    rows = []
    for n in [int(x) for x in args.stocks.split(",")]:
        home = Path(tempfile.mkdtemp(prefix=f"bench_scale_{n}_"))
        env = dict(os.environ, MLOPS_HOME=str(home), PYTHONPATH=str(ROOT), TQDM_DISABLE="1")
        py = sys.executable
        t_ing, _, _ = run_measured([py, "-m", "jobs.ingest", "--source", "synthetic",
                                    "--stocks", str(n), "--days", str(args.days)], env)
        secs, peak, out = run_measured([py, "-m", "jobs.features"], env)
        summary = json.loads(out.strip().splitlines()[-1])
        shutil.rmtree(home, ignore_errors=True)
        rows.append({"stocks": n, "days": args.days, "rows": summary["rows"],
                     "ingest_seconds": round(t_ing, 1), "features_job_seconds": round(secs, 1),
                     "ray_start_seconds": summary["ray_start_seconds"],
                     "pipeline_seconds": round(summary["seconds"]
                                               - summary["ray_start_seconds"], 2),
                     "us_per_row": round(1e6 * (summary["seconds"] - summary["ray_start_seconds"])
                                         / summary["rows"], 2),
                     "peak_pss_gib": round(peak / 2**30, 2)})
    if len(rows) > 1:
        a, b = rows[0], rows[-1]
        rows.append({"time_growth": round(b["pipeline_seconds"] / a["pipeline_seconds"], 2),
                     "row_growth": round(b["rows"] / a["rows"], 2)})
    report("features: scale on a synthetic market (whole job in a subprocess)", rows)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("which", choices=["qlib", "incremental", "scale"])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--stocks", default="500,5000")
    p.add_argument("--days", type=int, default=1260)
    args = p.parse_args()
    {"qlib": bench_qlib, "incremental": bench_incremental, "scale": bench_scale}[
        args.which](args)


if __name__ == "__main__":
    main()

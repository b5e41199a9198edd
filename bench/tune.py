"""Ray Tune benchmarks, each against a baseline measured in the same run.

    python bench/tune.py [--quick] [--trials N] [--instruments K] [--folds F] [--seed S]

Data: the first K tickers of sp500_5yr_dev.parquet (ingested, quarantining the 4
bad rows; Alpha158 computed by the features pipeline; untimed), or with --quick a
synthetic features table with a planted signal (20 features). LightGBM, the
seed-centred search space, walk-forward folds, 2 CPUs, 1 thread per trial.

(1) overhead: N trials through Tune (FIFO: every trial runs every fold) versus
    the same N configs trained in a plain loop -- a process pool of as many
    workers as CPUs, each training its configs fold by fold through the same
    engine, with no reporting and no checkpoints. The pool's workers are spawned
    (fresh imports, the features sent once per worker) as Tune's trial actors are.
    Target: Tune <= 1.10x the loop.
(2) ASHA versus FIFO on the same space and seed (the same N configs): boosting
    rounds spent over all trials and folds, and the best trial's mean valid RankIC
    over folds. Target: >= 50% fewer rounds, best RankIC within 0.005.

Ray's start is timed apart and not counted. Table on stderr, JSON last on stdout.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import pickle
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from _common import ROOT, report, shared


def synthetic(n_inst: int = 80, n_days: int = 400, n_feat: int = 20, seed: int = 0):
    """Features-table rows with label = 0.1 f0 - 0.05 f1 + noise (NaN/inf sprinkled)."""
    from cluster.training.engine import FeatureData
    rng = np.random.default_rng(seed)
    dates = pd.bdate_range("2019-01-01", periods=n_days)
    idx = pd.MultiIndex.from_product([[f"S{i:03d}" for i in range(n_inst)], dates],
                                     names=["instrument", "date"])
    x = rng.standard_normal((len(idx), n_feat)).astype(np.float32)
    label = 0.1 * x[:, 0] - 0.05 * x[:, 1] * x[:, 2] + rng.standard_normal(len(idx))
    x[rng.random(x.shape) < 0.002] = np.nan
    x[rng.random(x.shape) < 0.0005] = np.inf
    frame = pd.DataFrame(x, index=idx, columns=[f"f{i}" for i in range(n_feat)]).reset_index()
    frame["LABEL0"] = (label * 0.01).astype(np.float32)
    frame["feature_set"], frame["data_version"] = "fs-bench", 1
    return FeatureData(frame, 1, "fs-bench"), [f"f{i}" for i in range(n_feat)]


def real(home: Path, n_inst: int):
    """Alpha158 of the first ``n_inst`` dev tickers, through ingest + features."""
    from cluster.config import load_settings
    from cluster.features.pipeline import FeaturePipeline
    from cluster.lake.ingest import ingest
    from cluster.training.engine import FeatureData, load_features
    settings = load_settings(home=home)
    ingest(str(shared("sp500_5yr_dev.parquet")), on_error="quarantine", settings=settings)
    from cluster.lake.bars import BarsTable
    keep = sorted(BarsTable(settings.lake_dir).read(columns=["instrument"])["instrument"].unique())
    FeaturePipeline(settings).run(incremental=False, instruments=keep[:n_inst], use_ray=False)
    data = load_features(settings)
    frame = data.frame[data.frame["instrument"].isin(keep[:n_inst])].reset_index(drop=True)
    return FeatureData(frame, data.data_version, data.feature_set), None


# --------------------------------------------------------------------------- plain loop
_WORKER: dict = {}


def _init_worker(path: str) -> None:
    sys.path.insert(0, str(ROOT))
    with open(path, "rb") as f:
        _WORKER.update(pickle.load(f))


def _plain_trial(config: dict) -> int:
    """One config on every fold through the engine; returns the rounds spent."""
    from tuning.trainable import run_fold
    setup, data = _WORKER["setup"], _WORKER["data"]
    rounds = 0
    for k in range(len(setup.folds)):
        summary, _ = run_fold(data, setup, config, k, f"plain-{id(config)}-{k}")
        rounds += summary["epochs"]
    return rounds


def plain_loop(configs: list[dict], setup, data, workers: int, tmp: Path) -> tuple[float, int]:
    path = tmp / "plain.pkl"
    path.write_bytes(pickle.dumps({"setup": setup, "data": data}))
    t0 = time.perf_counter()
    with mp.get_context("spawn").Pool(workers, _init_worker, (str(path),)) as pool:
        rounds = sum(pool.imap_unordered(_plain_trial, configs, chunksize=1))
    return time.perf_counter() - t0, rounds


# --------------------------------------------------------------------------- tune runs
def trials_of(path: Path) -> list[dict]:
    """Each trial's config and last result, read from the experiment directory."""
    out = []
    for d in sorted(p for p in path.iterdir() if (p / "params.json").exists()):
        lines = (d / "result.json").read_text().splitlines()
        out.append({"config": json.loads((d / "params.json").read_text()),
                    "last": json.loads(lines[-1]) if lines else {}})
    return out


def tune_run(name: str, scheduler: str, args, data, cols, settings) -> tuple[float, dict, list]:
    from tuning.runner import TuneRequest, experiment_path, run_tuning
    request = TuneRequest("lightgbm", samples=args.trials, scheduler=scheduler, folds=args.folds,
                          seed=args.seed, name=name, feature_columns=cols, register=False,
                          max_concurrent=args.cpus, fixed=args.fixed)
    t0 = time.perf_counter()
    out = run_tuning(request, data, settings)
    return time.perf_counter() - t0, out, trials_of(experiment_path(settings, name))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true", help="synthetic data, fewer trials")
    p.add_argument("--trials", type=int, default=None)
    p.add_argument("--instruments", type=int, default=30)
    p.add_argument("--folds", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cpus", type=int, default=2)
    args = p.parse_args()
    args.trials = args.trials or (8 if args.quick else 12)
    # quick: smaller trees so a trial takes seconds, not minutes
    args.fixed = {"num_boost_round": 300} if args.quick else {}
    import ray

    from cluster.config import load_settings
    from cluster.ray_env import ensure_ray
    from tuning.trainable import TrialSetup

    tmp = Path(tempfile.mkdtemp(prefix="bench_tune_"))
    settings = load_settings(home=tmp / "home").model_copy(update={"home": tmp / "home"})
    data, cols = synthetic() if args.quick else real(tmp / "home", args.instruments)
    t0 = time.perf_counter()
    ensure_ray(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    ray_start = time.perf_counter() - t0

    t_fifo, fifo, fifo_trials = tune_run("fifo", "fifo", args, data, cols, settings)
    t_asha, asha, asha_trials = tune_run("asha", "asha", args, data, cols, settings)
    ray.shutdown()  # the loop gets the CPUs to itself, as Tune had them

    configs = [t["config"] for t in fifo_trials]
    setup = TrialSetup("lightgbm", fifo["folds"], settings, cols)
    t_plain, plain_rounds = plain_loop(configs, setup, data, args.cpus, tmp)
    fifo_rounds = sum(int(t["last"].get("rounds", 0)) for t in fifo_trials)
    asha_rounds = sum(int(t["last"].get("rounds", 0)) for t in asha_trials)
    same = sorted(map(json.dumps, configs)) == sorted(json.dumps(t["config"]) for t in asha_trials)
    fifo_best = fifo["best"]["selection_rank_ic"] if fifo["best"] else float("nan")
    asha_best = asha["best"]["selection_rank_ic"] if asha["best"] else float("nan")
    shutil.rmtree(tmp, ignore_errors=True)
    what = "synthetic 80x400, 20 features" if args.quick else \
        f"sp500 dev, {args.instruments} tickers, Alpha158"
    report(f"tune lightgbm ({what}; {args.trials} trials, {args.folds} folds, "
           f"{args.cpus} CPUs)", [
        {"what": "ray start (not counted)", "seconds": round(ray_start, 2)},
        {"what": "plain loop (spawned pool)", "trials": len(configs), "rounds": plain_rounds,
         "seconds": round(t_plain, 2)},
        {"what": "tune FIFO", "trials": len(fifo_trials), "rounds": fifo_rounds,
         "seconds": round(t_fifo, 2), "overhead_ratio": round(t_fifo / t_plain, 3),
         "target": "<= 1.10"},
        {"what": "tune ASHA", "trials": len(asha_trials), "rounds": asha_rounds,
         "seconds": round(t_asha, 2), "counts": asha["trials"], "same_configs": same},
        {"what": "ASHA vs FIFO", "rounds_ratio": round(asha_rounds / max(fifo_rounds, 1), 3),
         "rounds_saved": f"{100 * (1 - asha_rounds / max(fifo_rounds, 1)):.1f}%",
         "target_saved": ">= 50%", "fifo_best_rank_ic": round(fifo_best, 5),
         "asha_best_rank_ic": round(asha_best, 5),
         "rank_ic_gap": round(fifo_best - asha_best, 5), "target_gap": "<= 0.005"},
    ])


if __name__ == "__main__":
    main()

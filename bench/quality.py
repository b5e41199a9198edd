"""Test-segment quality on the real data, ours against Qlib, all in one run.

    python bench/quality.py [--step 20] [--members lightgbm,lightgbm@qlib,xgboost,linear]
                            [--no-qlib] [--feature-ic] [--cost-bps 10]

Data: sp500_5yr_dev.parquet (241 stocks, 2015-01-12 .. 2020-01-10; 4 bad rows
quarantined). Segments: train 2015-01-12..2017-12-29, valid 2018, test
2019-01-01..2020-01-10, each purged of its last 2 trading days (the label,
close[t+2]/close[t+1]-1, would reach into the next segment): no look-ahead.

Rows, each evaluated on the same test days (daily IC, ICIR, RankIC, RankICIR, and
the top-10% long-short annualised return and Sharpe after ``--cost-bps`` per side):

1. Qlib's default LightGBM workflow: Qlib's ``Alpha158`` handler with its default
   processors, ``LGBModel`` with Qlib's benchmark hyper-parameters, static.
2. Qlib's own rolling LightGBM: ``qlib.workflow.task.gen.RollingGen`` (``ROLL_EX``,
   the same step, ``trunc_days=3`` = label horizon + 1) over the same task; each
   task's ``LGBModel`` trained on its segments (the handler is built once, as
   every rolling task's handler differs only in its end date), predictions of all
   tasks concatenated.
3. Our best static model: each ``--members`` config trained once through our engine
   on our features; the one with the best *valid* RankIC (never the test one).
4. Our rolling model: that config retrained every ``--step`` days (``jobs.train
   --rolling`` semantics, steps as parallel Ray tasks).
5. Our rolling ensemble: every member retrained rolling, combined by the mean of
   cross-sectional ranks (members chosen before the run, not by their test score).
Target: 5 above 1 and 2 on RankIC and ICIR.
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from _common import report, shared

QLIB_LGB = dict(loss="mse", colsample_bytree=0.8879, learning_rate=0.2, subsample=0.8789,
                lambda_l1=205.6999, lambda_l2=580.9768, max_depth=8, num_leaves=210,
                num_threads=2, early_stopping_rounds=50, num_boost_round=1000)
KEYS = ("ic", "icir", "rank_ic", "rank_icir", "ls_annual_return", "ls_sharpe", "ls_turnover")


def member_params(name: str, threads: int) -> tuple[str, dict]:
    """``lightgbm@qlib``: our engine (IC early stopping) with Qlib's benchmark params."""
    model, _, variant = name.partition("@")
    params: dict = {}
    if variant == "qlib":
        params.update({k: v for k, v in QLIB_LGB.items() if k != "loss"})
    if model in ("lightgbm", "xgboost"):
        params["num_threads" if model == "lightgbm" else "nthread"] = threads
    return model, params


def _row(name: str, metrics: dict, seconds: float, **extra) -> dict:
    row = {"model": name, **{k: _r(metrics.get(k)) for k in KEYS},
           "days": metrics.get("days"), "seconds": round(seconds, 1)}
    row.update(extra)
    print(row, flush=True)
    return row


def ours(members: list[str], step: int, settings, data) -> list[dict]:
    from cluster.events import EventBus
    from cluster.models.composite import EnsembleModel
    from cluster.training.engine import TrainingEngine, TrainRequest, evaluate_frame
    from cluster.training.rolling import RollingRequest, run_rolling
    engine = TrainingEngine(settings, EventBus(None), persist_events=False)
    static = []
    for name in members:
        model_type, params = member_params(name, 2)
        t0 = time.perf_counter()
        result = engine.run(TrainRequest(model_type, params=params, register=False,
                                         importance=False), data)
        static.append((name, result, time.perf_counter() - t0))
        print(name, "valid", _r(result.metrics["valid"].get("rank_ic")),
              "test", _r(result.metrics["test"].get("rank_ic")), flush=True)
    name, best, seconds = max(static, key=lambda s: s[1].metrics["valid"]["rank_ic"] or -1)
    rows = [_row(f"ours static {name} (best valid RankIC of {len(members)})",
                 best.metrics["test"], seconds,
                 valid_rank_ic=_r(best.metrics["valid"]["rank_ic"]))]
    rolled, frames = {}, []
    for member in members:
        model_type, params = member_params(member, 1)   # steps run two at a time
        t0 = time.perf_counter()
        result = run_rolling(RollingRequest(model_type, step, params=params, register=False),
                             data, settings)
        rolled[member] = (result, time.perf_counter() - t0)
        print(member, "rolling test", _r(result.metrics["test"]["rank_ic"]), flush=True)
    result, seconds = rolled[name]
    rows.append(_row(f"ours rolling {name} (step {step}, {len(result.model.steps)} steps)",
                     result.metrics["test"], seconds))
    # the ensemble's test predictions: the members' concatenated out-of-sample ones
    import numpy as np
    import pandas as pd
    index = rolled[members[0]][0].predictions.index
    frame = rolled[members[0]][0].predictions[["label", "raw"]].copy()
    preds = [rolled[m][0].predictions["pred"].reindex(index).to_numpy(np.float64)
             for m in members]
    ensemble = EnsembleModel([rolled[m][0].model for m in members], "rank", members)
    frame["pred"] = ensemble.combine(preds, np.asarray(index.get_level_values("datetime"),
                                                       dtype="datetime64[ns]"))
    rows.append(_row(f"ours rolling ensemble of {'+'.join(members)} (rank mean)",
                     evaluate_frame(frame, None, settings.training.cost_bps),
                     sum(rolled[m][1] for m in members)))
    assert isinstance(frame, pd.DataFrame)
    return rows


def _qlib_init(bars, work: Path):
    import qlib
    from cluster.features.qlib_bridge import export_qlib
    provider = work / "qlib"
    export_qlib(bars, provider)
    qlib.init(provider_uri=str(provider), region="us", kernels=2,
              exp_manager={"class": "MLflowExpManager", "module_path": "qlib.workflow.expm",
                           "kwargs": {"uri": f"sqlite:///{work}/mlruns.db",
                                      "default_exp_name": "quality"}})


def _qlib_eval(pred, dataset, segment, cost_bps):
    from qlib.data.dataset.handler import DataHandlerLP

    from cluster.training.metrics import evaluate
    raw = dataset.prepare(segment, col_set="label", data_key=DataHandlerLP.DK_R).iloc[:, 0]
    raw = raw.reindex(pred.index)
    return evaluate(pred, raw, raw, None, cost_bps)


def qlib_baselines(bars, work: Path, segments: dict, step: int, cost_bps: float) -> list[dict]:
    import pandas as pd
    from qlib.contrib.data.handler import Alpha158
    from qlib.contrib.model.gbdt import LGBModel
    from qlib.data.dataset import DatasetH
    from qlib.workflow.task.gen import RollingGen
    _qlib_init(bars, work)
    fmt = "%Y-%m-%d"
    seg = {k: (a.strftime(fmt), b.strftime(fmt)) for k, (a, b) in segments.items()}
    t0 = time.perf_counter()
    handler = Alpha158(instruments="all", start_time=seg["train"][0], end_time=seg["test"][1],
                       fit_start_time=seg["train"][0], fit_end_time=seg["train"][1])
    handler_s = time.perf_counter() - t0
    dataset = DatasetH(handler, segments=seg)
    model = LGBModel(**QLIB_LGB)
    model.fit(dataset)
    pred = model.predict(dataset, "test")
    rows = [_row("qlib default LGBModel (Alpha158 handler, static)",
                 _qlib_eval(pred, dataset, "test", cost_bps), time.perf_counter() - t0)]
    # Qlib's own rolling: RollingGen over the same task
    t0 = time.perf_counter()
    # RollingGen's truncation asserts that no segment starts on the calendar's first
    # day (``TimeAdjuster.truncate``: ``tp_idx > 0``): its rolling tasks start training
    # one trading day later than the static run (1 of ~750 training days)
    from qlib.data import D
    calendar = D.calendar(freq="day")
    roll_seg = dict(seg)
    if pd.Timestamp(roll_seg["train"][0]) <= calendar[0]:
        roll_seg["train"] = (calendar[1].strftime(fmt), roll_seg["train"][1])
    task = {"model": {"class": "LGBModel", "module_path": "qlib.contrib.model.gbdt",
                      "kwargs": QLIB_LGB},
            "dataset": {"class": "DatasetH", "module_path": "qlib.data.dataset",
                        "kwargs": {"handler": None, "segments": roll_seg}}}
    tasks = RollingGen(step=step, rtype=RollingGen.ROLL_EX, ds_extra_mod_func=None,
                       trunc_days=3).generate(task)
    parts = []
    for t in tasks:
        ds = DatasetH(handler, segments=t["dataset"]["kwargs"]["segments"])
        m = LGBModel(**t["model"]["kwargs"])
        m.fit(ds)
        parts.append(m.predict(ds, "test"))
    rolled = pd.concat(parts).sort_index()
    rolled = rolled[~rolled.index.duplicated(keep="last")]
    full = DatasetH(handler, segments={"test": seg["test"]})
    rows.append(_row(f"qlib rolling LGBModel (RollingGen ROLL_EX, step {step}, "
                     f"{len(tasks)} tasks)", _qlib_eval(rolled, full, "test", cost_bps),
                     time.perf_counter() - t0 + handler_s))
    return rows


def feature_rank_ics(data, segments: dict) -> list[dict]:
    """Each Alpha158 feature's own mean daily RankIC with the label, on valid and
    test: how much of a signal there is to learn, and whether valid predicts test."""
    import pandas as pd

    from cluster.features.alpha158 import ALPHA158_NAMES
    from cluster.training.metrics import daily_ic
    frame = data.frame.rename(columns={"date": "datetime"}).set_index(
        ["datetime", "instrument"])
    ics = {}
    for seg in ("valid", "test"):
        start, end = segments[seg]
        part = frame.loc[(frame.index.get_level_values("datetime") >= start)
                         & (frame.index.get_level_values("datetime") <= end)]
        ics[seg] = {f: float(daily_ic(part[f], part["LABEL0"], "spearman").mean())
                    for f in ALPHA158_NAMES}
    table = pd.DataFrame(ics)
    return [{"feature_ic": "valid vs test, across the 158 features",
             "correlation": _r(table["valid"].corr(table["test"])),
             "features_with_abs_test_rank_ic_ge_0.02": int((table["test"].abs() >= 0.02).sum())}]


def _r(x):
    return None if x is None else round(float(x), 4)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--step", type=int, default=20, help="rolling step (trading days)")
    p.add_argument("--members", default="lightgbm,lightgbm@qlib,xgboost,linear",
                   help="our configs: the static candidates and the ensemble's members")
    p.add_argument("--cost-bps", type=float, default=10.0)
    p.add_argument("--no-qlib", action="store_true")
    p.add_argument("--feature-ic", action="store_true")
    args = p.parse_args()
    started = time.perf_counter()

    from cluster.config import load_settings
    from cluster.events import EventBus
    from cluster.features.pipeline import FeaturePipeline
    from cluster.features.qlib_bridge import REAL_DATA_SEGMENTS, purge_segments
    from cluster.lake.bars import BarsTable
    from cluster.lake.ingest import ingest
    from cluster.ray_env import ensure_ray
    from cluster.training.engine import load_features

    work = Path(tempfile.mkdtemp(prefix="bench_quality_"))
    settings = load_settings(home=work / "home")
    settings = settings.model_copy(update={"training": settings.training.model_copy(
        update={"cost_bps": args.cost_bps})})
    ingest(str(shared("sp500_5yr_dev.parquet")), on_error="quarantine", settings=settings)
    FeaturePipeline(settings, EventBus(None)).run(incremental=False, use_ray=False)
    bars = BarsTable(settings.lake_dir).read()
    data = load_features(settings)
    segments = purge_segments(REAL_DATA_SEGMENTS, bars["date"].unique())
    ensure_ray(num_cpus=2, include_dashboard=False)
    members = [m.strip() for m in args.members.split(",") if m.strip()]
    rows = []
    if not args.no_qlib:
        rows += qlib_baselines(bars, work, segments, args.step, args.cost_bps)
    rows += ours(members, args.step, settings, data)
    if not args.no_qlib:
        ens, base = rows[-1], rows[:2]
        rows.append({"target": "our rolling ensemble above both Qlib baselines on RankIC "
                               "and ICIR",
                     "met": all(ens[k] is not None and b[k] is not None and ens[k] > b[k]
                                for b in base for k in ("rank_ic", "icir"))})
    if args.feature_ic:
        rows += feature_rank_ics(data, segments)
    rows.append({"total_seconds": round(time.perf_counter() - started, 1),
                 "cost_bps_per_side": args.cost_bps})
    shutil.rmtree(work, ignore_errors=True)
    report("quality: test segment (2019-01-01..2020-01-10), 241 stocks", rows)


if __name__ == "__main__":
    main()

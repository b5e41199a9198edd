"""Test-segment quality of each model type on the real data, and Qlib's default
LightGBM workflow on the same bars, in the same run.

    python bench/quality.py [--models lightgbm,xgboost,...] [--epochs 5] [--no-qlib]
                            [--feature-ic]

Data: sp500_5yr_dev.parquet (241 stocks, 2015-01-12 .. 2020-01-10; 4 bad rows
quarantined). Segments: train 2015-01-12..2017-12-29, valid 2018, test
2019-01-01..2020-01-10, each purged of its last 2 trading days (the label,
close[t+2]/close[t+1]-1, would reach into the next segment): no look-ahead.

Ours: every model through the training engine on the features table (Alpha158,
label z-scored per day for learning; IC measured on the raw label). Torch models
train at most ``--epochs`` epochs here (2 CPUs); the cap is printed.
Baseline: Qlib's ``Alpha158`` handler with its default processors (RobustZScoreNorm
+ Fillna on features, DropnaLabel + CSZScoreNorm on the label) and ``LGBModel`` with
Qlib's benchmark hyper-parameters (workflow_config_lightgbm_Alpha158), same
segments. Target: our best test RankIC >= 0.02 and above Qlib's.
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from _common import report, shared

TORCH = {"mlp", "lstm", "transformer", "informer", "timesnet", "patchtst", "tabnet"}
QLIB_LGB = dict(loss="mse", colsample_bytree=0.8879, learning_rate=0.2, subsample=0.8789,
                lambda_l1=205.6999, lambda_l2=580.9768, max_depth=8, num_leaves=210,
                num_threads=2, early_stopping_rounds=50, num_boost_round=1000)


def ours(models: list[str], epochs: int, settings) -> list[dict]:
    from cluster.events import EventBus
    from cluster.training.engine import TrainingEngine, TrainRequest, load_features
    data = load_features(settings)
    engine = TrainingEngine(settings, EventBus(None))
    rows = []
    for name in models:
        # "lightgbm@qlib": our engine (IC early stopping) with Qlib's benchmark params
        m, _, variant = name.partition("@")
        params = {"n_epochs": epochs} if m in TORCH else {}
        if variant == "qlib":
            params.update({k: v for k, v in QLIB_LGB.items() if k != "loss"})
        if m in ("lightgbm", "xgboost"):
            params["num_threads" if m == "lightgbm" else "nthread"] = 2
        t0 = time.perf_counter()
        result = engine.run(TrainRequest(m, params=params, register=False,
                                         importance_max_dates=5), data)
        test = result.metrics.get("test", {})
        rows.append({"model": name, "state": result.state, "seconds": round(time.perf_counter()
                                                                          - t0, 1),
                     "epochs_cap": epochs if m in TORCH else None,
                     "best_epoch": result.report.get("best_epoch"),
                     "test_ic": _r(test.get("ic")), "test_icir": _r(test.get("icir")),
                     "test_rank_ic": _r(test.get("rank_ic")),
                     "test_rank_icir": _r(test.get("rank_icir")),
                     "valid_rank_ic": _r(result.metrics.get("valid", {}).get("rank_ic")),
                     "error": result.error})
        print(rows[-1], flush=True)
    return rows


def qlib_default(bars, work: Path, segments: dict) -> dict:
    import qlib
    from qlib.contrib.data.handler import Alpha158
    from qlib.contrib.model.gbdt import LGBModel
    from qlib.data.dataset import DatasetH
    from qlib.data.dataset.handler import DataHandlerLP

    from cluster.features.qlib_bridge import export_qlib
    from cluster.training.metrics import ic_summary
    provider = work / "qlib"
    export_qlib(bars, provider)
    qlib.init(provider_uri=str(provider), region="us", kernels=2,
              exp_manager={"class": "MLflowExpManager", "module_path": "qlib.workflow.expm",
                           "kwargs": {"uri": f"sqlite:///{work}/mlruns.db",
                                      "default_exp_name": "quality"}})
    fmt = "%Y-%m-%d"
    seg = {k: (a.strftime(fmt), b.strftime(fmt)) for k, (a, b) in segments.items()}
    t0 = time.perf_counter()
    handler = Alpha158(instruments="all", start_time=seg["train"][0], end_time=seg["test"][1],
                       fit_start_time=seg["train"][0], fit_end_time=seg["train"][1])
    dataset = DatasetH(handler, segments=seg)
    model = LGBModel(**QLIB_LGB)
    model.fit(dataset)
    pred = model.predict(dataset, "test")
    label = dataset.prepare("test", col_set="label", data_key=DataHandlerLP.DK_R).iloc[:, 0]
    s = ic_summary(pred, label.reindex(pred.index))
    return {"model": "qlib default LGBModel (Alpha158 handler)", "state": "completed",
            "seconds": round(time.perf_counter() - t0, 1), "test_ic": _r(s["ic"]),
            "test_icir": _r(s["icir"]), "test_rank_ic": _r(s["rank_ic"]),
            "test_rank_icir": _r(s["rank_icir"])}


def feature_rank_ics(settings, segments: dict) -> list[dict]:
    """Each Alpha158 feature's own mean daily RankIC with the label, on valid and
    test: how much of a signal there is to learn, and whether valid predicts test."""
    from cluster.features.alpha158 import ALPHA158_NAMES
    from cluster.training.engine import load_features
    from cluster.training.metrics import daily_ic
    frame = load_features(settings).frame.rename(columns={"date": "datetime"}).set_index(
        ["datetime", "instrument"])
    ics = {}
    for seg in ("valid", "test"):
        start, end = segments[seg]
        part = frame.loc[(frame.index.get_level_values("datetime") >= start)
                         & (frame.index.get_level_values("datetime") <= end)]
        ics[seg] = {f: float(daily_ic(part[f], part["LABEL0"], "spearman").mean())
                    for f in ALPHA158_NAMES}
    import pandas as pd
    table = pd.DataFrame(ics)
    by_valid = table["valid"].abs().sort_values(ascending=False).index[:5]
    by_test = table["test"].abs().sort_values(ascending=False).index[:5]
    return [
        {"feature_ic": "valid vs test, across the 158 features",
         "correlation": _r(table["valid"].corr(table["test"])),
         "features_with_abs_test_rank_ic_ge_0.02": int((table["test"].abs() >= 0.02).sum())},
        {"strongest_on_valid (valid, test)": {f: [_r(table.at[f, "valid"]),
                                                  _r(table.at[f, "test"])] for f in by_valid}},
        {"strongest_on_test (valid, test)": {f: [_r(table.at[f, "valid"]),
                                                 _r(table.at[f, "test"])] for f in by_test}},
    ]


def _r(x):
    return None if x is None else round(float(x), 4)


def main() -> None:
    from cluster.models.zoo import MODEL_TYPES
    p = argparse.ArgumentParser()
    p.add_argument("--models", default=",".join(sorted(MODEL_TYPES)))
    p.add_argument("--epochs", type=int, default=5, help="cap for torch models")
    p.add_argument("--no-qlib", action="store_true")
    p.add_argument("--feature-ic", action="store_true",
                   help="also each feature's own RankIC on valid and test")
    args = p.parse_args()

    from cluster.config import load_settings
    from cluster.events import EventBus
    from cluster.features.pipeline import FeaturePipeline
    from cluster.features.qlib_bridge import REAL_DATA_SEGMENTS, purge_segments
    from cluster.lake.bars import BarsTable
    from cluster.lake.ingest import ingest

    work = Path(tempfile.mkdtemp(prefix="bench_quality_"))
    settings = load_settings(home=work / "home")
    ingest(str(shared("sp500_5yr_dev.parquet")), on_error="quarantine", settings=settings)
    FeaturePipeline(settings, EventBus(None)).run(incremental=False, use_ray=False)
    bars = BarsTable(settings.lake_dir).read()
    rows = ours([m.strip() for m in args.models.split(",") if m.strip()], args.epochs,
                settings)
    if not args.no_qlib:
        segments = purge_segments(REAL_DATA_SEGMENTS, bars["date"].unique())
        base = qlib_default(bars, work, segments)
        done = [r for r in rows if r["test_rank_ic"] is not None]
        best = max(done, key=lambda r: r["test_rank_ic"]) if done else None
        rows.append(base)
        if best:
            rows.append({"best_ours": best["model"], "best_rank_ic": best["test_rank_ic"],
                         "qlib_rank_ic": base["test_rank_ic"],
                         "difference": _r(best["test_rank_ic"] - base["test_rank_ic"])})
    if args.feature_ic:
        rows += feature_rank_ics(settings, purge_segments(REAL_DATA_SEGMENTS,
                                                          bars["date"].unique()))
    shutil.rmtree(work, ignore_errors=True)
    report("quality: test segment (2019-01-01..2020-01-10), 241 stocks", rows)


if __name__ == "__main__":
    main()

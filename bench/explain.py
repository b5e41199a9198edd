"""Explanation speed: our tree explainer against ``shap``'s default call, same run.

    python bench/explain.py [--stocks 60] [--days 750] [--local 200] [--global-rows 10000]

A LightGBM model is trained through the engine on the real feature pipeline's output
(seeded synthetic market -> ingest -> 13 indicators + Alpha158, 180 features), then:

  local   one row per call, ``--local`` calls, p50/p99 latency;
  global  SHAP values of ``--global-rows`` rows in one call.

Ours is ``cluster.explain`` (``TreeContrib``: LightGBM's ``pred_contrib``, values for
the trees the model predicts with); the baseline is ``shap.TreeExplainer(booster)``
and its ``shap_values`` (shap's default call for a tree model; built once, its
construction timed apart). Both are checked to give the same values (max abs
difference printed) and to add up to the prediction. Prints ratios baseline / ours.
"""

import argparse
import os
import statistics
import tempfile
import time

import numpy as np

from _common import report


def _q(values, p):
    values = sorted(values)
    return round(values[min(len(values) - 1, int(p * len(values)))] * 1000, 3)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--stocks", type=int, default=60)
    p.add_argument("--days", type=int, default=750)
    p.add_argument("--local", type=int, default=200)
    p.add_argument("--global-rows", type=int, default=10_000)
    p.add_argument("--rounds", type=int, default=200)
    args = p.parse_args()
    home = tempfile.mkdtemp(prefix="bench_explain_")
    os.environ["MLOPS_HOME"] = home
    from cluster.config import get_settings
    from cluster.events import EventBus
    from cluster.explain.explainers import ShapTree, TreeContrib
    from cluster.features.pipeline import FeaturePipeline
    from cluster.lake.ingest import ingest
    from cluster.training.engine import TrainingEngine, TrainRequest, load_features
    settings = get_settings()
    ingest("synthetic", stocks=args.stocks, days=args.days, seed=7)
    FeaturePipeline(settings).run(incremental=True, use_ray=False)
    data = load_features(settings)
    from cluster.features.featureset import current_feature_set
    fs = current_feature_set()
    columns = [c for c in fs.alpha_columns + fs.indicator_columns if c in data.frame]
    result = TrainingEngine(settings, EventBus(None), persist_events=False).run(
        TrainRequest("lightgbm", params={"num_boost_round": args.rounds, "num_leaves": 31,
                                         "early_stopping_rounds": args.rounds},
                     feature_columns=columns, register=False), data)
    assert result.state == "completed", result.error
    model = result.model
    # Early stopping on the synthetic market's weak signal keeps few rounds; explain
    # every tree trained, as a production-size model has them.
    model.best_round = model.model.num_trees()
    x_all = data.frame[columns].to_numpy(dtype=np.float32)
    rng = np.random.default_rng(0)
    rows = x_all[rng.choice(len(x_all), min(args.global_rows, len(x_all)), replace=False)]

    ours = TreeContrib(model)
    t0 = time.perf_counter()
    theirs = ShapTree(model)
    build_s = time.perf_counter() - t0

    def local(explainer):
        lat = []
        for i in range(args.local):
            row = rows[i % len(rows)][None, :]
            t = time.perf_counter()
            explainer.explain(row)
            lat.append(time.perf_counter() - t)
        return lat

    local(ours), local(theirs)                  # warm both
    lat_ours, lat_theirs = local(ours), local(theirs)
    t = time.perf_counter()
    g_ours = ours.explain(rows)
    glob_ours = time.perf_counter() - t
    t = time.perf_counter()
    g_theirs = theirs.explain(rows)
    glob_theirs = time.perf_counter() - t
    diff = float(np.abs(g_ours.values - g_theirs.values).max())
    additive = float(np.abs(g_ours.base + g_ours.values.sum(axis=1) - g_ours.predictions).max())
    trees = model.best_iteration or model.model.num_trees()
    report(f"explain: LightGBM, {len(columns)} features, {trees} trees "
           f"({args.stocks} stocks x {args.days} days)", [
        {"what": "local (1 row): ours pred_contrib", "p50_ms": _q(lat_ours, 0.5),
         "p99_ms": _q(lat_ours, 0.99), "calls": len(lat_ours)},
        {"what": "local (1 row): shap.TreeExplainer.shap_values", "p50_ms": _q(lat_theirs, 0.5),
         "p99_ms": _q(lat_theirs, 0.99), "calls": len(lat_theirs),
         "ratio_p50": round(statistics.median(lat_theirs) / statistics.median(lat_ours), 2)},
        {"what": f"global ({len(rows)} rows): ours", "seconds": round(glob_ours, 3)},
        {"what": f"global ({len(rows)} rows): shap", "seconds": round(glob_theirs, 3),
         "ratio": round(glob_theirs / glob_ours, 2),
         "shap_explainer_build_s": round(build_s, 3)},
        {"what": "checks", "max_abs_diff_vs_shap": diff, "max_additivity_error": additive},
    ])


if __name__ == "__main__":
    main()

"""Explanation speed: our tree explainer against ``shap``'s default call, same run.

    python bench/explain.py [--stocks 60] [--days 750] [--local 200] [--global-rows 10000]
    python bench/explain.py --sequence lstm [--stocks 20] [--days 300] [--local 5]

A LightGBM model is trained through the engine on the real feature pipeline's output
(seeded synthetic market -> ingest -> 13 indicators + Alpha158, 180 features), then:

  local   one row per call, ``--local`` calls, p50/p99 latency;
  global  SHAP values of ``--global-rows`` rows in one call.

Ours is ``cluster.explain`` (``TreeContrib``: LightGBM's ``pred_contrib``, values for
the trees the model predicts with); the baseline is ``shap.TreeExplainer(booster)``
and its ``shap_values`` (shap's default call for a tree model; built once, its
construction timed apart). Both are checked to give the same values (max abs
difference printed) and to add up to the prediction. Prints ratios baseline / ours.

``--sequence TYPE`` (lstm, transformer, ...; default sizes, one epoch, one torch thread)
times instead the local explanation of one prediction's window (``WindowShap``: the
features are the players, each over its whole column of the window) and the global
one (the stored windows other than the background), against shap's permutation
explainer over the flattened window with shap's own ``Independent`` masker on the
same background (its players are the L x F cells; the per-feature values are the sums
of a feature's cells), both with two antithetic permutations, ``--baseline-calls``
calls. Both are checked to add up to the prediction.
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
    p.add_argument("--sequence", default=None, help="a sequence model type: time its "
                   "window explanations instead")
    p.add_argument("--baseline-calls", type=int, default=2)
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
    if args.sequence:
        return sequence(args, settings, data, columns)
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


def sequence(args, settings, data, columns) -> None:
    import shap
    import torch

    from cluster.events import EventBus
    from cluster.explain.background import BACKGROUND_WINDOWS, window_sample, windows_array
    from cluster.explain.explainers import EXPLAIN_SEED, PERMUTATIONS, explainer_for
    from cluster.models.inputs import window_length
    from cluster.training.engine import TrainingEngine, TrainRequest
    torch.set_num_threads(1)
    result = TrainingEngine(settings, EventBus(None), persist_events=False).run(
        TrainRequest(args.sequence, params={"n_epochs": 1, "device": "cpu"},
                     feature_columns=columns, register=False, importance=False), data)
    assert result.state == "completed", result.error
    model, length = result.model, window_length(result.model)
    train = result.report["data"]["segments"]["train"]
    windows = windows_array(window_sample(data.frame, train, columns, length), columns, length)
    ours = explainer_for(model, columns, windows)
    rows = windows[BACKGROUND_WINDOWS:]
    lat = []
    for i in range(args.local + 1):                        # the first call warms up
        t = time.perf_counter()
        out = ours.explain(rows[i % len(rows)][None])
        lat.append(time.perf_counter() - t)
    lat = lat[1:]
    t = time.perf_counter()
    g = ours.explain(rows)
    glob_s = time.perf_counter() - t
    # baseline: shap's permutation explainer over the flattened window's cells
    bg = ours.background.reshape(len(ours.background), -1)
    flat = (lambda x: ours.predict(np.asarray(x, np.float32).reshape(-1, length, len(columns))))
    theirs = shap.PermutationExplainer(flat, shap.maskers.Independent(bg, max_samples=len(bg)),
                                       seed=EXPLAIN_SEED)
    evals = PERMUTATIONS * (2 * bg.shape[1] + 1)
    base_lat, base_err = [], 0.0
    for i in range(args.baseline_calls):
        x = rows[i % len(rows)].reshape(1, -1)
        np.random.seed(EXPLAIN_SEED)
        t = time.perf_counter()
        e = theirs(x, max_evals=evals, silent=True)
        base_lat.append(time.perf_counter() - t)
        base_err = max(base_err, abs(float(np.ravel(e.base_values)[0]) + float(e.values.sum())
                                     - float(ours.predict(rows[i % len(rows)][None])[0])))
    additive = float(np.abs(g.base + g.values.sum(axis=1) - g.predictions).max())
    med, base_med = statistics.median(lat), statistics.median(base_lat)
    report(f"explain: {args.sequence}, window {length} x {len(columns)} features, background "
           f"{len(ours.background)} windows ({args.stocks} stocks x {args.days} days, 1 torch "
           f"thread)", [
        {"what": "local (1 window): ours, players = features", "p50_ms": _q(lat, 0.5),
         "p99_ms": _q(lat, 0.99), "calls": len(lat)},
        {"what": "local (1 window): shap Permutation, players = L x F cells",
         "p50_ms": _q(base_lat, 0.5), "calls": len(base_lat),
         "ratio_p50": round(base_med / med, 2)},
        {"what": f"global ({len(rows)} windows): ours", "seconds": round(glob_s, 3)},
        {"what": "checks", "max_additivity_error": max(additive, float(abs(
            out.base[0] + out.values.sum() - out.predictions[0]))),
         "baseline_additivity_error": base_err},
    ])


if __name__ == "__main__":
    main()

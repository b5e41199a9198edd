"""Batch scoring: jobs.predict's Ray Data path (map_batches over an actor pool, the
model loaded once per actor) against a single-process ``model.predict`` over the
same feature rows, in the same run.

A synthetic market (``--stocks`` x ``--days``) is ingested, its features computed and
a LightGBM model trained into a temporary MLOPS_HOME; then, Ray started and warmed
once (not timed):

- baseline: load the model, read the same rows, ``predict_array`` in this process;
- ours: ``cluster.monitoring.batch.score(use_ray=True, write=False)`` (features read,
  blocks of 16 instruments, ``--concurrency`` actors);
- ours + write: the same with the predictions commit (one sorted file).

    python bench/predict.py [--stocks 200] [--days 500] [--concurrency 2] [--repeat 3]
"""
from __future__ import annotations

import argparse
import os
import tempfile

from _common import report, timed  # noqa: E402  (puts the repo on sys.path)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--stocks", type=int, default=200)
    p.add_argument("--days", type=int, default=500)
    p.add_argument("--concurrency", type=int, default=2)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    home = tempfile.mkdtemp(prefix="bench_predict_")
    os.environ["MLOPS_HOME"] = home
    from cluster.config import load_settings
    from cluster.events import EventBus
    from cluster.features.pipeline import FeaturePipeline
    from cluster.lake.features import FeaturesTable
    from cluster.lake.ingest import ingest
    from cluster.monitoring.batch import model_features, predict_frame, score
    from cluster.ray_env import ensure_ray
    from cluster.registry.store import ModelRegistry
    from cluster.training.engine import TrainingEngine, TrainRequest
    settings = load_settings(home=home)
    bus = EventBus(settings.lake_dir)
    ingest("synthetic", stocks=args.stocks, days=args.days, settings=settings, bus=bus)
    FeaturePipeline(settings, bus=bus).run(use_ray=False)
    res = TrainingEngine(settings, bus).run(TrainRequest(
        "lightgbm", params={"num_leaves": 31, "num_boost_round": 100}))
    name, version = res.registry_name, res.version
    ensure_ray(num_cpus=os.cpu_count())
    score(name, version, settings=settings, use_ray=True, write=False,
          concurrency=args.concurrency)              # warm: workers, imports

    def baseline():
        reg = ModelRegistry.for_settings(settings)
        model = reg.load(name, version)
        feats = model_features(reg, name, version, model)
        rows = FeaturesTable(settings.lake_dir).read(columns=feats)
        return len(predict_frame(model, rows, feats))
    base_s, n = timed(baseline, args.repeat)
    ray_s, out = timed(lambda: score(name, version, settings=settings, use_ray=True,
                                     write=False, concurrency=args.concurrency), args.repeat)
    write_s, _ = timed(lambda: score(name, version, settings=settings, use_ray=True,
                                     concurrency=args.concurrency), 1)
    assert out["rows"] == n
    report("batch scoring: Ray Data actor pool vs one-process model.predict", [{
        "rows": n, "days": out["days"], "instruments": args.stocks,
        "cpus": os.cpu_count(), "actors": args.concurrency,
        "single_process_s": round(base_s, 3), "ray_data_s": round(ray_s, 3),
        "ray_data_with_write_s": round(write_s, 3),
        "ratio_ray_to_single": round(ray_s / base_s, 2),
        "rows_per_s_ray": round(n / ray_s), "rows_per_s_single": round(n / base_s)}])


if __name__ == "__main__":
    main()

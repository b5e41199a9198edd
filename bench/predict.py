"""Batch scoring: jobs.predict's Ray Data path (map_batches over an actor pool, the
model loaded once by the driver and taken from the object store once per actor)
against a single-process ``model.predict`` over the same feature rows, same run.

A synthetic market (``--stocks`` x ``--days``) is ingested, its features computed and
a LightGBM model trained into a temporary MLOPS_HOME; then, Ray started and one
scoring call made (not timed), both paths are timed (median of ``--repeat``):

- baseline: load the model from the registry, read the rows, predict in this process;
- ours: ``cluster.monitoring.batch.score(use_ray=True, write=False)`` (features read,
  the model put in the object store, ``--concurrency`` actors, blocks of whole
  instruments);
- ours + write: the same with the predictions commit (one sorted file), once.

Each path is timed on all the rows and on a tenth of the instruments; the two
points give its fixed seconds per call (for ours mostly the actor pool's start:
Ray Data starts a new pool for every dataset, and each actor imports its model's
module) and its per-row throughput, printed apart so that the ratio of the totals
is not read as a throughput ratio.

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
    ensure_ray(num_cpus=os.cpu_count(), include_dashboard=False)
    score(name, version, settings=settings, use_ray=True, write=False,
          concurrency=args.concurrency)              # Ray's workers, the driver's imports
    everyone = [str(i) for i in FeaturesTable(settings.lake_dir).read(
        columns=["data_version"])["instrument"].unique()]
    tenth = everyone[:max(1, len(everyone) // 10)]

    def baseline(instruments):
        reg = ModelRegistry.for_settings(settings)
        model = reg.load(name, version)
        feats = model_features(reg, name, version, model)
        rows = FeaturesTable(settings.lake_dir).read(instruments=instruments, columns=feats)
        return len(predict_frame(model, rows, feats))

    def ours(instruments):
        return score(name, version, instruments=instruments, settings=settings,
                     use_ray=True, write=False, concurrency=args.concurrency)["rows"]

    def split(fn):
        """(total s, rows, fixed s, rows/s) from all rows and a tenth of the instruments."""
        full_s, n = timed(lambda: fn(None), args.repeat)
        part_s, m = timed(lambda: fn(tenth), args.repeat)
        per_row = max(full_s - part_s, 1e-9) / max(n - m, 1)
        return full_s, n, max(full_s - per_row * n, 0.0), 1.0 / per_row

    base_s, n, base_fixed, base_rps = split(baseline)
    ray_s, n_ray, ray_fixed, ray_rps = split(ours)
    write_s, _ = timed(lambda: score(name, version, settings=settings, use_ray=True,
                                     concurrency=args.concurrency), 1)
    assert n_ray == n
    report("batch scoring: Ray Data actor pool vs one-process model.predict", [{
        "rows": n, "instruments": args.stocks, "days": args.days,
        "cpus": os.cpu_count(), "actors": args.concurrency,
        "single_process_s": round(base_s, 3), "ray_data_s": round(ray_s, 3),
        "ray_data_with_write_s": round(write_s, 3),
        "ratio_ray_to_single": round(ray_s / base_s, 2),
        "fixed_s_single": round(base_fixed, 3), "fixed_s_ray": round(ray_fixed, 3),
        "rows_per_s_single": round(base_rps), "rows_per_s_ray": round(ray_rps),
        "throughput_ratio_ray_to_single": round(ray_rps / base_rps, 2)}])


if __name__ == "__main__":
    main()

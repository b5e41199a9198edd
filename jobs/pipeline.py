"""python -m jobs.pipeline: the whole flow end to end on the embedded default.

synthetic market (or --source) -> validated ingest (a data version) -> features
(indicators + Alpha158 + label, incremental against the factor cache) -> train
a model (LightGBM by default) through the training engine -> register it
(state ``trained``, lineage to the data version) -> JSON summary last on stdout.

``--monitor`` closes the loop: train on the first half of the trading days,
validate on the next 10% (test: the 10% after that), batch-score every day after
the validation segment with ``jobs.predict``'s scorer, run the monitor, and add
``"monitor": {"days_evaluated", "alerts": [...], "ic_decay": {...}}`` to the summary.
``--regime-shift-at F`` (synthetic source) shifts the market's regime after
fraction F of the days, so the scored stretch holds days before and after it.
Runs directly or as ``ray job submit --working-dir . -- python -m jobs.pipeline``.
"""
from __future__ import annotations

import argparse
import sys

import pandas as pd
import yaml

from cluster.config import get_settings
from cluster.features.pipeline import FeaturePipeline
from cluster.lake.ingest import ingest
from cluster.models.zoo import MODEL_TYPES
from cluster.progress import progress_bar
from cluster.training.engine import TrainingEngine, TrainRequest
from jobs._cli import run

# The seed's LightGBM defaults (1000 rounds, 210 leaves) need the whole real set to be
# worth their time; the demo market is small, so the demo trains a smaller tree model.
DEMO_PARAMS = {"lightgbm": {"num_leaves": 31, "num_boost_round": 300,
                            "early_stopping_rounds": 30}}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m jobs.pipeline", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", default="synthetic",
                   help="synthetic, or a CSV folder / parquet / Qlib provider path")
    p.add_argument("--stocks", type=int, default=60, help="synthetic market: stocks")
    p.add_argument("--days", type=int, default=750, help="synthetic market: trading days")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--signal-ic", type=float, default=None, metavar="X",
                   help="synthetic market: plant a signal of theoretical daily RankIC X")
    p.add_argument("--on-error", choices=["fail", "quarantine"], default=None)
    p.add_argument("--model", choices=sorted(MODEL_TYPES), default="lightgbm")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one model parameter (YAML value), repeatable")
    p.add_argument("--seed-defaults", action="store_true",
                   help="train with the seed's default hyper-parameters, not the demo's")
    p.add_argument("--no-train", action="store_true", help="stop after the features")
    p.add_argument("--local", action="store_true", help="compute features without Ray")
    p.add_argument("--regime-shift-at", type=float, default=None, metavar="F",
                   help="synthetic: volatility doubles and the learnable signal flips sign "
                   "after fraction F of the days")
    p.add_argument("--monitor", action="store_true", help="train on the first half, "
                   "batch-score after validation, run the monitor")
    return p.parse_args(argv)


def model_params(args) -> dict:
    params = {} if args.seed_defaults else dict(DEMO_PARAMS.get(args.model, {}))
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set {item!r} is not key=value")
        params[key.strip()] = yaml.safe_load(value)
    return params


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    params = model_params(args)
    settings = get_settings()
    summary: dict = {"ingest": ingest(args.source, on_error=args.on_error, stocks=args.stocks,
                                      days=args.days, seed=args.seed,
                                      regime_shift_at=args.regime_shift_at,
                                      signal_ic=args.signal_ic, show_progress=True)}
    summary["data_version"] = summary["ingest"]["data_version"]

    with progress_bar(total=100, desc="features", unit="%") as bar:
        def progress(pct: float, message: str) -> None:
            bar.n = pct
            bar.set_postfix_str(message)
            bar.refresh()
        summary["features"] = FeaturePipeline(settings).run(
            incremental=True, progress=progress, use_ray=False if args.local else None)
    if args.no_train:
        return summary

    segments = monitor_segments(settings) if args.monitor else None
    result = TrainingEngine(settings).run(TrainRequest(args.model, params=params,
                                                       segments=segments))
    summary["train"] = {
        "model": args.model, "run_id": result.run_id, "state": result.state,
        "registry_name": result.registry_name, "version": result.version,
        "metrics": {seg: {k: v for k, v in m.items() if k in (
            "ic", "icir", "rank_ic", "rank_icir", "mse", "ls_annual_return", "ls_sharpe")}
            for seg, m in (result.metrics or {}).items()},
        "report": str(result.report_path), "error": result.error,
    }
    if result.state != "completed":
        raise SystemExit(f"training failed: {result.error}")
    if args.monitor:
        summary["monitor"] = monitor_loop(settings, result, segments, use_ray=not args.local)
    return summary


def monitor_segments(settings) -> dict[str, tuple[str, str]]:
    """Train on the first 50% of the trading days, validate on the next 10%, test on
    the 10% after that; everything after validation is batch-scored."""
    from cluster.features.alpha158 import LABEL_NAME
    from cluster.lake.features import FeaturesTable
    dates = FeaturesTable(settings.lake_dir).read(columns=[LABEL_NAME])["date"]
    cal = sorted(set(dates))
    n = len(cal)
    a, b, c = int(n * 0.5), int(n * 0.6), int(n * 0.7)
    if a < 10 or c >= n:
        raise ValueError(f"--monitor needs more trading days than {n}")
    day = lambda i: str(cal[i].date())      # noqa: E731
    return {"train": (day(0), day(a - 1)), "valid": (day(a), day(b - 1)),
            "test": (day(b), day(c - 1))}


def monitor_loop(settings, result, segments, use_ray: bool = True) -> dict:
    from cluster.events import get_bus
    from cluster.monitoring.batch import score
    from cluster.monitoring.monitor import Monitor
    start = (pd.Timestamp(segments["valid"][1]) + pd.Timedelta(days=1)).date()
    scored = score(result.registry_name, result.version, start=start, settings=settings,
                   use_ray=use_ray)
    mon = Monitor(settings, bus=get_bus(settings.lake_dir)).run(result.registry_name)
    keys = ("rule", "model", "version", "day", "state", "value", "threshold")
    return {"days_evaluated": mon["days_evaluated"], "scored_rows": scored["rows"],
            "scored_from": str(start),
            "alerts": [{k: a[k] for k in keys} for a in mon["alerts"]],
            "ic_decay": mon["ic_decay"]}


if __name__ == "__main__":
    sys.exit(run(main))

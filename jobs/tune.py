"""python -m jobs.tune --model TYPE [--samples N] [--max-concurrent K]
                      [--scheduler asha|fifo] [--search random|optuna] [--folds F]
                      [--space FILE.yaml] [--set key=value ...] [--name NAME]
                      [--rolling STEP [--window expanding|sliding] [--train-days N]]
                      [--ensemble-top K [--ensemble-method rank|zscore]]
python -m jobs.tune --resume NAME

Tunes one model type of the zoo with Ray Tune on the current features table:
walk-forward folds (purged by the label horizon), every trial trained through
the training engine. Each fold is split once more: its early stopping watches the
last quarter of its training days, and the trial is scored on the fold's
validation days, which early stopping never saw (the objective: the mean RankIC
over those days). With --rolling STEP the folds are rolling steps (the protocol of
``jobs.train --rolling``) and the best config is retrained as a rolling version.
The best trial is retrained (or taken from its checkpoint, --final checkpoint) and
registered in state ``trained`` with the experiment and trial id in its lineage;
--ensemble-top K also registers an ensemble of the K best trials.
Progress goes to stderr (and the Ray dashboard); a JSON summary is printed last
on stdout: experiment, trials (count by status), best (with selection_rank_ic and
the held-out test held_out_rank_ic), registry_name, version, seconds. An
interrupted run continues with --resume NAME (finished trials kept).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from cluster.models.zoo import MODEL_TYPES
from jobs._cli import run
from tuning.runner import FINALS, SCHEDULERS, SEARCHES, TuneRequest, resume_tuning, \
    run_tuning
from tuning.spaces import load_space_file


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m jobs.tune", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=sorted(MODEL_TYPES))
    p.add_argument("--samples", type=int, default=10, help="trials to run (default 10)")
    p.add_argument("--max-concurrent", type=int, default=None,
                   help="trials at once (default and cap: what the cluster holds)")
    p.add_argument("--scheduler", choices=SCHEDULERS, default="asha")
    p.add_argument("--search", choices=SEARCHES, default="random")
    p.add_argument("--folds", type=int, default=3, help="walk-forward folds (default 3)")
    p.add_argument("--resume", metavar="NAME", help="continue an interrupted experiment")
    p.add_argument("--name", help="experiment name (default <model>-<timestamp>)")
    p.add_argument("--space", type=Path, help="YAML search-space overrides")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="fix one model parameter (YAML value), repeatable")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cpus-per-trial", type=int, default=1,
                   help="CPUs per trial (trees: num_threads)")
    p.add_argument("--gpu-fraction", type=float, default=0.25,
                   help="GPU share per torch trial when the cluster has GPUs")
    p.add_argument("--parallel-folds", action="store_true",
                   help="train a trial's folds at once (one placement-group bundle each)")
    p.add_argument("--final", choices=FINALS, default="retrain",
                   help="best trial: retrain through the engine, or register its checkpoint")
    p.add_argument("--registry-name", help="registry name (default stock-<model>)")
    p.add_argument("--no-register", action="store_true")
    p.add_argument("--rolling", type=int, metavar="STEP",
                   help="tune under the rolling protocol (a retrain every STEP days)")
    p.add_argument("--window", choices=("expanding", "sliding"), default="expanding")
    p.add_argument("--train-days", type=int, help="rolling: train window length")
    p.add_argument("--ensemble-top", type=int, metavar="K",
                   help="also register an ensemble of the K best trials")
    p.add_argument("--ensemble-method", choices=("rank", "zscore"), default="rank")
    args = p.parse_args(argv)
    if not args.resume and not args.model:
        p.error("--model is required (or --resume NAME)")
    return args


def fixed_params(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set {item!r} is not key=value")
        out[key.strip()] = yaml.safe_load(value)
    return out


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.resume:
        return resume_tuning(args.resume)
    space = load_space_file(args.space, args.model) if args.space else None
    request = TuneRequest(args.model, samples=args.samples, max_concurrent=args.max_concurrent,
                          scheduler=args.scheduler, search=args.search, folds=args.folds,
                          seed=args.seed, space=space, fixed=fixed_params(args.set),
                          name=args.name, cpus_per_trial=args.cpus_per_trial,
                          gpu_fraction=args.gpu_fraction, parallel_folds=args.parallel_folds,
                          final=args.final, register=not args.no_register,
                          registry_name=args.registry_name, rolling=args.rolling,
                          window=args.window, train_days=args.train_days,
                          ensemble_top=args.ensemble_top,
                          ensemble_method=args.ensemble_method)
    return run_tuning(request)


if __name__ == "__main__":
    sys.exit(run(main))

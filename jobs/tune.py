"""python -m jobs.tune --model TYPE [--samples N] [--max-concurrent K]
                      [--scheduler asha|fifo] [--search random|optuna] [--folds F]
                      [--space FILE.yaml] [--set key=value ...] [--name NAME]
python -m jobs.tune --resume NAME

Tunes one model type of the zoo with Ray Tune on the current features table:
walk-forward folds (purged by the label horizon), every trial trained through
the training engine, the mean valid RankIC over folds as the objective. The
best trial is retrained (or taken from its checkpoint, --final checkpoint) and
registered in state ``trained`` with the experiment and trial id in its lineage.
Progress goes to stderr (and the Ray dashboard); a JSON summary is printed last
on stdout: experiment, trials (count by status), best, registry_name, version,
seconds. An interrupted run continues with --resume NAME (finished trials kept).
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
                          registry_name=args.registry_name)
    return run_tuning(request)


if __name__ == "__main__":
    sys.exit(run(main))

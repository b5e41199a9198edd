"""python -m jobs.train --model TYPE [--config FILE.yaml] [--set key=value ...]
                       [--segments train=A:B,valid=C:D,test=E:F] [--no-register]
                       [--name NAME] [--run-id RUN_ID]
python -m jobs.train --stop RUN_ID

Trains one model type on the current features through the training engine,
registers it (state ``trained``) with its lineage and prints a JSON summary last.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from cluster.config import get_settings
from cluster.events import get_bus
from cluster.models.zoo import MODEL_TYPES
from cluster.progress import progress_bar
from cluster.training.engine import TrainingEngine, TrainRequest
from cluster.training.stop import stop_run
from jobs._cli import EXIT_REFUSED, print_summary, setup_logging


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m jobs.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=sorted(MODEL_TYPES))
    p.add_argument("--config", type=Path, help="YAML: model parameters (flat, or under "
                   "'kwargs'/'model.kwargs'), optionally 'segments'")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one parameter (YAML value), repeatable")
    p.add_argument("--segments", help="train=YYYY-MM-DD:YYYY-MM-DD,valid=...,test=...")
    p.add_argument("--no-register", action="store_true")
    p.add_argument("--name", help="registry name (default stock-<model>)")
    p.add_argument("--stop", metavar="RUN_ID", help="ask a running training run to stop")
    p.add_argument("--run-id", help="the run's id (default: a new one); the API's queued "
                   "training jobs name it up front, to follow and stop the run")
    args = p.parse_args(argv)
    if not args.stop and not args.model:
        p.error("--model is required")
    return args


def parse_segments(text: str) -> dict:
    out = {}
    for part in text.split(","):
        name, sep, span = part.partition("=")
        start, sep2, end = span.partition(":")
        if not (sep and sep2 and name.strip() and start and end):
            raise ValueError(f"segment {part!r} is not name=START:END")
        out[name.strip()] = (start.strip(), end.strip())
    if "train" not in out or "valid" not in out:
        raise ValueError("segments need at least train and valid")
    return out


def load_request(args) -> TrainRequest:
    params, segments = {}, None
    if args.config:
        doc = yaml.safe_load(args.config.read_text()) or {}
        if not isinstance(doc, dict):
            raise ValueError(f"{args.config}: expected a mapping of parameters")
        segments = doc.pop("segments", None)
        doc = doc.get("model", doc)
        params = dict(doc.get("kwargs", doc))
        params.pop("class", None)
        params.pop("module_path", None)
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set {item!r} is not key=value")
        params[key.strip()] = yaml.safe_load(value)
    if args.segments:
        segments = parse_segments(args.segments)
    return TrainRequest(args.model, params=params, segments=segments,
                        register=not args.no_register, registry_name=args.name)


def main(argv=None) -> int:
    setup_logging()
    args = parse_args(argv)
    settings = get_settings()
    if args.stop:
        local = stop_run(args.stop, settings.home / "runs")
        print_summary({"run_id": args.stop, "stop_requested": True, "in_process": local})
        return 0
    try:
        request = load_request(args)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    bus = get_bus(settings.lake_dir)
    with progress_bar(total=100, desc=f"train {args.model}", unit="%") as bar:
        def show(event):
            if event.type == "training_progress":
                bar.set_postfix_str(f"{event.stage} epoch={event.epoch or '-'} "
                                    f"valid_ic={event.valid_ic if event.valid_ic is None else round(event.valid_ic, 4)}")
                bar.n = event.percent
                bar.refresh()
        unsubscribe = bus.subscribe("training_progress", show)
        try:
            result = TrainingEngine(settings, bus).run(request, run_id=args.run_id)
        finally:
            unsubscribe()
    data = result.report.get("data", {})
    print_summary({
        "model": args.model, "run_id": result.run_id,
        "registry_name": result.registry_name, "version": result.version,
        "state": "trained" if result.version else result.state,
        "metrics": result.metrics, "report": str(result.report_path),
        "data_version": data.get("data_version"), "feature_set": data.get("feature_set"),
        "error": result.error,
    })
    return 0 if result.state == "completed" else EXIT_REFUSED


if __name__ == "__main__":
    sys.exit(main())

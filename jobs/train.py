"""python -m jobs.train --model TYPE [--config FILE.yaml] [--set key=value ...]
                       [--segments train=A:B,valid=C:D,test=E:F] [--no-register]
                       [--name NAME] [--run-id RUN_ID]
                       [--rolling STEP [--window expanding|sliding] [--train-days N]]
                       [--retrain NAME:V]
python -m jobs.train --ensemble NAME:V,NAME:V,... [--ensemble-method rank|zscore]
python -m jobs.train --stop RUN_ID

Trains one model type on the current features through the training engine,
registers it (state ``trained``) with its lineage and prints a JSON summary last.

--rolling STEP retrains every STEP trading days over the test span (Qlib's
RollingGen semantics, purged by the label horizon; steps run in parallel as Ray
tasks), reports out-of-sample metrics of the concatenated predictions and
registers the step models as one version. --retrain NAME:V trains that version's
config again on the current data and names it as the parent. --ensemble combines
registered versions by the mean of their cross-sectional ranks (or z-scores).
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
from jobs._cli import EXIT_REFUSED, print_summary, run, setup_logging


def parse_args(argv):
    from cluster.models.composite import ENSEMBLE_METHODS
    from cluster.training.rolling import WINDOWS
    p = argparse.ArgumentParser(prog="python -m jobs.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=sorted(MODEL_TYPES))
    p.add_argument("--config", type=Path, help="YAML: model parameters (flat, or under "
                   "'kwargs'/'model.kwargs'), optionally 'segments'")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one parameter (YAML value), repeatable")
    p.add_argument("--segments", help="train=YYYY-MM-DD:YYYY-MM-DD,valid=...,test=...")
    p.add_argument("--features", help="feature columns, comma-separated (default: the 158 "
                   "Alpha158 features)")
    p.add_argument("--no-register", action="store_true")
    p.add_argument("--name", help="registry name (default stock-<model>, "
                   "stock-<model>-rolling, stock-ensemble)")
    p.add_argument("--stop", metavar="RUN_ID", help="ask a running training run to stop")
    p.add_argument("--run-id", help="the run's id (default: a new one); the API's queued "
                   "training jobs name it up front, to follow and stop the run")
    p.add_argument("--rolling", type=int, metavar="STEP",
                   help="rolling retraining: a new model every STEP trading days")
    p.add_argument("--window", choices=WINDOWS, default="expanding",
                   help="rolling: expanding (fixed start) or sliding train window")
    p.add_argument("--train-days", type=int, help="rolling: train window length (trading days)")
    p.add_argument("--cpus-per-step", type=int, default=1,
                   help="rolling: CPUs per step task (trees: threads)")
    p.add_argument("--retrain", metavar="NAME:V",
                   help="train this version's config again on the current data (its parent)")
    p.add_argument("--ensemble", metavar="NAME:V,...", help="combine registered versions")
    p.add_argument("--ensemble-method", choices=ENSEMBLE_METHODS, default="rank")
    args = p.parse_args(argv)
    if not (args.stop or args.model or args.ensemble or args.retrain):
        p.error("--model is required (or --ensemble, --retrain, --stop)")
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
    features = [f.strip() for f in args.features.split(",") if f.strip()] \
        if args.features else None
    return TrainRequest(args.model, params=params, segments=segments,
                        feature_columns=features, register=not args.no_register,
                        registry_name=args.name)


def _retrain_source(args, settings) -> dict:
    """The parent version's model type and parameters (``--retrain NAME:V``)."""
    from cluster.registry.store import ModelRegistry
    from cluster.training.ensemble import parse_member
    name, version = parse_member(args.retrain)
    registry = ModelRegistry.for_settings(settings)
    info = registry.get(name, version)
    model_type = info.tags.get("model_type")
    if model_type not in MODEL_TYPES:
        raise ValueError(f"{info.model_id} is a {model_type!r} version; --retrain takes a "
                         "single or rolling version of a zoo type")
    config = registry.artefact_json(name, version, "config.json")
    report = registry.artefact_json(name, version, "report.json")
    return {"model_type": model_type, "params": dict(config.get("kwargs") or {}),
            "parent": info.model_id, "name": name, "rolling": report.get("rolling")}


def _rolling(args, request: TrainRequest, settings, bus, parent: str | None) -> dict:
    from cluster.training.rolling import RollingRequest, run_rolling
    rolling = RollingRequest(request.model_type, args.rolling, params=request.params,
                             window=args.window, train_days=args.train_days,
                             segments=request.segments, register=request.register,
                             feature_columns=request.feature_columns,
                             registry_name=request.registry_name,
                             cpus_per_step=args.cpus_per_step)
    result = run_rolling(rolling, settings=settings, bus=bus,
                         lineage_extra={"parent_model": parent})
    data = result.report["data"]
    return {"model": request.model_type, "kind": "rolling", "run_id": result.report["run_id"],
            "registry_name": result.registry_name, "version": result.version,
            "state": "trained" if result.version else "completed",
            "steps": len(result.model.steps), "step": args.rolling, "window": args.window,
            "metrics": result.metrics, "report": str(result.report_path),
            "data_version": data.get("data_version"), "feature_set": data.get("feature_set"),
            "parent_model": parent, "error": None}


def main(argv=None) -> int:
    setup_logging()
    args = parse_args(argv)
    settings = get_settings()
    if args.stop:
        local = stop_run(args.stop, settings.home / "runs")
        print_summary({"run_id": args.stop, "stop_requested": True, "in_process": local})
        return 0
    bus = get_bus(settings.lake_dir)
    if args.ensemble:
        from cluster.training.ensemble import build_ensemble, parse_members

        def ensemble(_argv):
            return build_ensemble(parse_members(args.ensemble), args.ensemble_method,
                                  args.name, settings, bus, register=not args.no_register)
        return run(ensemble, [])
    parent = None
    try:
        if args.retrain:
            source = _retrain_source(args, settings)
            args.model = args.model or source["model_type"]
            if args.model != source["model_type"]:
                raise ValueError(f"--retrain {source['parent']} is a {source['model_type']} "
                                 f"model, not {args.model}")
            args.name = args.name or source["name"]
            if source["rolling"] and not args.rolling:
                args.rolling = int(source["rolling"]["step"])
                args.window = source["rolling"].get("window") or args.window
                args.train_days = source["rolling"].get("train_days")
            parent = source["parent"]
        request = load_request(args)
        if args.retrain:
            request.params = {**source["params"], **request.params}
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.rolling:
        return run(lambda _argv: _rolling(args, request, settings, bus, parent), [])
    with progress_bar(total=100, desc=f"train {args.model}", unit="%") as bar:
        def show(event):
            if event.type == "training_progress":
                step = f"round={event.round}" if event.round else f"epoch={event.epoch or '-'}"
                bar.set_postfix_str(f"{event.stage} {step} "
                                    f"valid_ic={event.valid_ic if event.valid_ic is None else round(event.valid_ic, 4)}")
                bar.n = event.percent
                bar.refresh()
        unsubscribe = bus.subscribe("training_progress", show)
        try:
            result = TrainingEngine(settings, bus).run(
                request, run_id=args.run_id,
                lineage_extra={"parent_model": parent} if parent else None)
        finally:
            unsubscribe()
    data = result.report.get("data", {})
    print_summary({
        "model": args.model, "run_id": result.run_id,
        "registry_name": result.registry_name, "version": result.version,
        "state": "trained" if result.version else result.state,
        "metrics": result.metrics, "report": str(result.report_path),
        "data_version": data.get("data_version"), "feature_set": data.get("feature_set"),
        "parent_model": parent, "error": result.error,
    })
    return 0 if result.state == "completed" else EXIT_REFUSED


if __name__ == "__main__":
    sys.exit(main())

"""The training engine: one path for every model type, from ``jobs.train`` and Tune.

Stages ``preparing -> configuring -> training -> evaluating -> completed | failed``;
each transition and every epoch (or batch of boosting rounds) is published as a
``training_progress`` event. A run stopped from outside ends ``failed`` with
reason ``stopped``; a crash ends ``failed`` with the error. Every run leaves a
training report (JSON) and, unless told not to, a registered model version
with its lineage.
"""
from __future__ import annotations

import json
import logging
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from qlib.data.dataset.handler import DataHandlerLP

from cluster.config import Settings, get_settings
from cluster.errors import MlopsError, TrainingStopped
from cluster.events import EventBus, TrainingProgress, get_bus
from cluster.features.qlib_bridge import build_dataset, default_segments
from cluster.models.zoo import model_config, spec
from cluster.training.metrics import evaluate, long_short_days
from cluster.training.stop import StopFlag

log = logging.getLogger(__name__)

STAGE_PERCENT = {"preparing": 0.0, "configuring": 10.0, "training": 15.0, "evaluating": 85.0,
                 "completed": 100.0, "failed": 100.0}


@dataclass
class TrainRequest:
    model_type: str
    params: dict = field(default_factory=dict)
    segments: dict | None = None
    feature_columns: list[str] | None = None  # default: the 158 Alpha158 features
    register: bool = True
    registry_name: str | None = None
    topk: int | None = None
    importance_max_dates: int = 60
    eval_segments: tuple[str, ...] | None = None   # default: every segment
    importance: bool = True
    keep_predictions: bool = False     # TrainResult.predictions: per segment, with labels

    @property
    def name(self) -> str:
        return self.registry_name or f"stock-{self.model_type}"


@dataclass
class TrainResult:
    run_id: str
    state: str
    model: object | None
    report: dict
    report_path: Path
    metrics: dict
    registry_name: str | None = None
    version: str | None = None
    error: str | None = None
    predictions: dict | None = None    # segment -> DataFrame(pred, label, raw)


@dataclass
class FeatureData:
    """What a run trains on: feature rows and where they came from."""
    frame: pd.DataFrame
    data_version: int
    feature_set: str
    features_version: int | None = None


class TrainingEngine:
    def __init__(self, settings: Settings | None = None, bus: EventBus | None = None,
                 persist_events: bool = True):
        self.settings = settings or get_settings()
        self.bus = bus if bus is not None else get_bus(self.settings.lake_dir)
        self.persist_events = persist_events

    # -- public ------------------------------------------------------------
    def run(self, request: TrainRequest, data: FeatureData | None = None, *,
            run_id: str | None = None, stop_event=None,
            epoch_callback: Callable[[dict], None] | None = None,
            lineage_extra: dict | None = None, raise_on_error: bool = False) -> TrainResult:
        run_id = run_id or uuid.uuid4().hex[:12]
        started = time.time()
        report = {"run_id": run_id, "model_type": request.model_type,
                  "model_name": request.name, "status": "running", "stage": "preparing",
                  "started_at": pd.Timestamp.now(tz="UTC").isoformat(), "history": []}
        runs_dir = self.settings.home / "runs"
        flag = stop_event if stop_event is not None else StopFlag(run_id, runs_dir)
        model = None
        result_metrics: dict = {}
        predictions: dict | None = {} if request.keep_predictions else None
        try:
            with flag if isinstance(flag, StopFlag) else _nullcontext():
                self._stage(report, "preparing")
                data = data or load_features(self.settings)
                cols = request.feature_columns or _default_feature_columns(data.frame)
                segments = request.segments or default_segments(data.frame["date"])
                dataset = build_dataset(data.frame, segments, feature_columns=cols,
                                        horizon=self.settings.qlib.label_horizon)
                report["data"] = _data_info(data, dataset, cols)
                self._check_stop(flag)

                self._stage(report, "configuring")
                config = model_config(request.model_type, request.params)
                report["hyper_parameters"] = config["kwargs"]
                report["model_config"] = config
                from qlib.utils import init_instance_by_config
                model = init_instance_by_config(config)

                self._stage(report, "training")
                on_epoch = self._epoch_reporter(report, epoch_callback)
                model.fit(dataset, reporter=on_epoch, stop_event=flag)
                report.update(iterations(model, report["history"]))
                if getattr(model, "history", None):
                    report["history"] = _clean(model.history)

                self._stage(report, "evaluating")
                frames: dict = {}
                result_metrics = evaluate_segments(model, dataset, request.topk,
                                                   self.settings.training.cost_bps,
                                                   request.eval_segments, frames)
                if predictions is not None:
                    predictions.update(frames)
                report["metrics"] = result_metrics
                report["backtest"] = backtest_days(frames, request.topk,
                                                   self.settings.training.cost_bps)
                report["feature_importance"] = _importance(
                    model, dataset, request.importance_max_dates) if request.importance else {}
                report["duration_seconds"] = round(time.time() - started, 3)
                report["status"] = "completed"
                self._stage(report, "completed")
        except TrainingStopped as exc:
            self._fail(report, "stopped", str(exc), started)
        except Exception as exc:  # a crash: the report keeps the error
            self._fail(report, "error", f"{type(exc).__name__}: {exc}", started,
                       traceback.format_exc())
            if raise_on_error:
                self._write_report(report)
                raise
        path = self._write_report(report)
        result = TrainResult(run_id, report["status"], model, report, path, result_metrics,
                             error=report.get("error", {}).get("message"),
                             predictions=predictions)
        if report["status"] == "completed" and request.register:
            info = self._register(request, model, report, data, lineage_extra)
            result.registry_name, result.version = info.name, info.version
            report["registry"] = {"name": info.name, "version": info.version,
                                  "state": info.state}
            self._write_report(report)
        return result

    # -- stages ------------------------------------------------------------
    def _stage(self, report: dict, stage: str, message: str = "") -> None:
        report["stage"] = stage
        report.setdefault("stages", []).append(
            {"stage": stage, "time": pd.Timestamp.now(tz="UTC").isoformat()})
        self._publish(report, stage, STAGE_PERCENT[stage], message=message)
        log.info("run %s (%s): %s %s", report["run_id"], report["model_type"], stage, message)

    def _publish(self, report: dict, stage: str, percent: float, **fields) -> None:
        event = TrainingProgress(run_id=report["run_id"], model=report["model_type"],
                                 name=report.get("model_name"),
                                 stage=stage, percent=round(percent, 2), **fields)
        self.bus.publish(event, persist=self.persist_events)

    def _epoch_reporter(self, report: dict, extra: Callable | None):
        def on_epoch(row: dict) -> None:
            row = _clean([row])[0]
            report["history"].append(row)
            # boosting rounds (trees), epochs (torch) or one closed-form fit (linear)
            unit = next((u for u in ("round", "epoch") if u in row), None)
            n = max(int(row.get(f"n_{unit}s") or 1), 1) if unit else 1
            step = int(row.get(unit) or 0) if unit else 1
            pct = 15.0 + 70.0 * min(step / n, 1.0)
            progress = {unit: step, f"n_{unit}s": n} if unit else {}
            self._publish(report, "training", pct, train_loss=row.get("train_loss"),
                          valid_loss=row.get("valid_loss"),
                          valid_ic=row.get("valid_ic", row.get("valid_rank_ic")), **progress)
            if extra is not None:
                extra(row)
        return on_epoch

    def _check_stop(self, flag) -> None:
        if flag is not None and flag.is_set():
            raise TrainingStopped("stopped before training")

    def _fail(self, report: dict, reason: str, message: str, started: float,
              tb: str | None = None) -> None:
        report["status"] = "failed"
        report["error"] = {"reason": reason, "message": message, "stage": report["stage"]}
        if tb:
            report["error"]["traceback"] = tb
        report["duration_seconds"] = round(time.time() - started, 3)
        self._stage(report, "failed", message=f"{reason}: {message}")

    def _write_report(self, report: dict) -> Path:
        path = self.settings.home / "reports" / f"{report['run_id']}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2, default=str))
        return path

    def _register(self, request, model, report, data: FeatureData, extra: dict | None):
        from cluster.training.registration import register_model
        return register_model(self.settings, self.bus, request.name, model, report, data,
                              model_type=request.model_type, lineage_extra=extra,
                              persist_events=self.persist_events)


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


def iterations(model, history: list | None = None) -> dict:
    """What the report says about iterations: boosting rounds for trees, epochs for
    torch models, nothing for a closed-form fit."""
    unit = getattr(model, "iteration_unit", None)
    if unit is None:
        return {"iteration_unit": None}
    total = len(getattr(model, "history", None) or history or [])
    return {"iteration_unit": unit, f"total_{unit}s": total,
            f"best_{unit}": int(getattr(model, "best_iteration", 0) or 0)}


def segment_predictions(model, dataset, segment: str) -> pd.DataFrame:
    """``pred`` of ``model`` on one segment beside ``label`` (the learning label, z-scored
    per day) and ``raw`` (the realised return), indexed (datetime, instrument)."""
    pred = model.predict(dataset, segment=segment)
    learn = dataset.prepare(segment, col_set="label", data_key=DataHandlerLP.DK_L)
    raw = dataset.prepare(segment, col_set="label", data_key=DataHandlerLP.DK_I)
    return pd.DataFrame({"pred": pred, "label": learn.iloc[:, 0].reindex(pred.index),
                         "raw": raw.iloc[:, 0].reindex(pred.index)})


def evaluate_frame(frame: pd.DataFrame, topk=None, cost_bps: float = 0.0) -> dict:
    """Metrics of a :func:`segment_predictions` frame (IC vs the learning label, the
    backtest on the raw label: realised returns)."""
    return _clean([evaluate(frame["pred"], frame["label"], frame["raw"], topk, cost_bps)])[0]


def backtest_days(frames: dict, topk=None, cost_bps: float = 0.0) -> dict:
    """Per segment, the long-short backtest's days (dates and net returns, as the
    metrics' ``ls_*`` figures summarise them): the report keeps them so that versions
    can be compared by their equity curves."""
    out = {}
    for segment, frame in frames.items():
        days, _, _ = long_short_days(frame["pred"], frame["raw"], topk, cost_bps)
        out[segment] = {"dates": [pd.Timestamp(d).date().isoformat() for d in days.index],
                        "returns": [round(float(v), 8) for v in days["net"]]}
    return out


def evaluate_segments(model, dataset, topk=None, cost_bps: float = 0.0,
                      segments=None, keep: dict | None = None) -> dict:
    """Metrics of ``model`` on each segment of ``dataset``; ``keep`` (a dict) receives
    each segment's predictions and labels."""
    out = {}
    for segment in segments or dataset.segments:
        if segment not in dataset.segments:
            continue
        frame = segment_predictions(model, dataset, segment)
        out[segment] = evaluate_frame(frame, topk, cost_bps)
        if keep is not None:
            keep[segment] = frame
    return out


def load_features(settings: Settings) -> FeatureData:
    """The current features table with the data version and feature set it holds."""
    from cluster.lake.features import FeaturesTable
    table = FeaturesTable(settings.lake_dir)
    if not table.exists():
        raise MlopsError("no features yet: run `python -m jobs.features` first")
    from cluster.features.featureset import feature_set_for
    feature_set = feature_set_for(settings).id
    frame = table.read(feature_set=feature_set)
    if frame.empty:
        raise MlopsError(f"no features of the configured feature set {feature_set} yet: "
                         "run `python -m jobs.features` first")
    meta = table.last_meta(feature_set)
    return FeatureData(frame, int(frame["data_version"].max()),
                       str(frame["feature_set"].iloc[0]) if len(frame) else meta.get(
                           "feature_set", ""), table.version())


def _default_feature_columns(frame: pd.DataFrame) -> list[str]:
    from cluster.features.alpha158 import ALPHA158_NAMES
    missing = [c for c in ALPHA158_NAMES if c not in frame]
    if missing:
        raise MlopsError(f"features lack Alpha158 columns, e.g. {missing[:3]}; "
                         "recompute them with `python -m jobs.features`")
    return list(ALPHA158_NAMES)


def _data_info(data: FeatureData, dataset, cols: list[str]) -> dict:
    rows = {}
    for seg in dataset.segments:
        rows[seg] = int(len(dataset.prepare(seg, col_set="label", data_key=DataHandlerLP.DK_L)))
    return {"data_version": data.data_version, "feature_set": data.feature_set,
            "features_version": data.features_version,
            "segments": {k: [str(pd.Timestamp(s).date()), str(pd.Timestamp(e).date())]
                         for k, (s, e) in dataset.segments.items()},
            "rows": rows, "instruments": int(data.frame["instrument"].nunique()),
            "features": cols}


def _importance(model, dataset, max_dates: int) -> dict[str, float]:
    if hasattr(model, "feature_importance"):
        imp = model.feature_importance()
    elif hasattr(model, "permutation_importance"):
        frame = dataset.prepare("valid", col_set=["feature", "label"],
                                data_key=DataHandlerLP.DK_L)
        dates = frame.index.get_level_values("datetime").unique().sort_values()[-max_dates:]
        frame = frame[frame.index.get_level_values("datetime").isin(dates)]
        history = None
        if getattr(model, "sequence", False):  # windows reach back before these dates
            history = dataset.handler.fetch(slice(None, dates[-1]), col_set="feature",
                                            data_key=DataHandlerLP.DK_I)
        imp = model.permutation_importance(frame["feature"], frame["label"].iloc[:, 0],
                                           history=history)
    else:
        return {}
    imp = imp.replace([np.inf, -np.inf], np.nan).dropna()
    return {str(k): float(v) for k, v in imp.head(50).items()}


def _clean(rows: list[dict]) -> list[dict]:
    """JSON-safe numbers (NaN -> None)."""
    out = []
    for row in rows:
        clean = {}
        for k, v in row.items():
            if isinstance(v, (np.floating, float)):
                v = None if not np.isfinite(v) else float(v)
            elif isinstance(v, np.integer):
                v = int(v)
            clean[k] = v
        out.append(clean)
    return out


def model_family(model_type: str) -> str:
    return spec(model_type).family

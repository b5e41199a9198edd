"""Rolling retraining, with Qlib's ``RollingGen`` semantics.

    python -m jobs.train --model lightgbm --rolling 20 [--window sliding|expanding]
                         [--train-days N]

Start from the standard segments (train, valid, test). Step ``k`` tests on the
``step`` trading days from ``test_start + k * step`` (the last step takes what is
left of the test span), and moves valid along by the same ``k * step`` days, so
valid always ends right before the step's test days. Train ``expanding`` (Qlib's
``ROLL_EX``, the default) keeps its start and grows; ``sliding`` (``ROLL_SD``)
moves both ends. ``--train-days N`` makes the first step's train the ``N``
trading days before its valid (then expanding or sliding from there).

Every segment is purged against the next one by the label horizon as Qlib's
``trunc_days`` does (``trunc_days = horizon + 1``: a train or valid row's label
never reads a close of the next segment; :func:`~cluster.features.qlib_bridge.purge_segments`).
So each step model is trained on data up to its step only, early-stops on its
valid days, and predicts the next ``step`` days out of sample.

Steps are independent: they run as parallel Ray tasks (the features go to the
object store once), each through the training engine. The test predictions of
all steps are concatenated and evaluated over the whole test span, and the step
models are registered as one version (:class:`~cluster.models.composite.RollingModel`:
each step's date range and lineage -- train/valid ranges, training run, the step
it replaces); serving answers a date with the step that covers it.
"""
from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import asdict, dataclass, field

import pandas as pd

from cluster.errors import MlopsError

log = logging.getLogger(__name__)
WINDOWS = ("expanding", "sliding")
_FMT = "%Y-%m-%d"


@dataclass
class RollingRequest:
    model_type: str
    step: int
    params: dict = field(default_factory=dict)
    window: str = "expanding"
    train_days: int | None = None
    segments: dict | None = None          # the first step's segments; default the standard
    feature_columns: list[str] | None = None
    register: bool = True
    registry_name: str | None = None
    topk: int | None = None
    parallel: bool = True                 # steps as Ray tasks (else one after another here)
    cpus_per_step: int = 1

    @property
    def name(self) -> str:
        return self.registry_name or f"stock-{self.model_type}-rolling"

    def check(self) -> None:
        if int(self.step) < 1:
            raise ValueError(f"rolling step must be >= 1 trading day, got {self.step}")
        if self.window not in WINDOWS:
            raise ValueError(f"window must be one of {WINDOWS}, not {self.window!r}")
        if self.train_days is not None and int(self.train_days) < 2:
            raise ValueError(f"train_days must be >= 2, got {self.train_days}")


def _calendar(dates) -> pd.DatetimeIndex:
    return pd.DatetimeIndex(sorted(set(pd.to_datetime(list(dates)))))


def rolling_segments(dates, segments: dict, step: int, window: str = "expanding",
                     train_days: int | None = None, horizon: int | None = None
                     ) -> list[dict[str, tuple[str, str]]]:
    """The segments of every step (see the module docstring), unpurged: the engine
    purges each against the next by the label horizon when it builds the dataset.
    With ``horizon`` given, a step whose train or valid would be empty after that
    purge is refused here (ValueError) rather than when it trains."""
    cal = _calendar(dates)
    for key in ("train", "valid", "test"):
        if key not in segments:
            raise ValueError(f"rolling needs train, valid and test segments; {key} is missing")

    def pos(day, side="left") -> int:
        return int(cal.searchsorted(pd.Timestamp(day), side=side))

    t0, t_end = pos(segments["test"][0]), pos(segments["test"][1], "right") - 1
    v0, v1 = pos(segments["valid"][0]), pos(segments["valid"][1], "right") - 1
    r0, r1 = pos(segments["train"][0]), pos(segments["train"][1], "right") - 1
    if train_days is not None:
        r0, r1 = max(v0 - int(train_days), 0), v0 - 1
    if not (0 <= r0 <= r1 < v0 <= v1 < t0 <= t_end < len(cal)):
        raise ValueError(f"segments {segments} do not lie in order inside the calendar "
                         f"{cal[0].date()}..{cal[-1].date()}")
    out = []
    for k, start in enumerate(range(t0, t_end + 1, int(step))):
        shift = k * int(step)
        end = min(start + int(step) - 1, t_end)
        train_start = r0 + shift if window == "sliding" else r0
        out.append({"train": (cal[train_start].strftime(_FMT), cal[r1 + shift].strftime(_FMT)),
                    "valid": (cal[v0 + shift].strftime(_FMT), cal[v1 + shift].strftime(_FMT)),
                    "test": (cal[start].strftime(_FMT), cal[end].strftime(_FMT))})
    if horizon is not None:
        from cluster.features.qlib_bridge import purge_segments
        for seg in out:
            purge_segments(seg, cal, horizon)     # raises ValueError naming the segment
    return out


def train_step(data, request: RollingRequest, segments: dict, k: int, settings) -> dict:
    """One step through the engine: its model (library-format files), the test
    predictions with labels, its report's essentials."""
    from cluster.events import EventBus
    from cluster.models.zoo import spec
    from cluster.registry.artefacts import model_files
    from cluster.training.engine import TrainingEngine, TrainRequest
    if spec(request.model_type).family == "torch":
        import torch
        torch.set_num_threads(max(int(request.cpus_per_step), 1))
    engine = TrainingEngine(settings, EventBus(None), persist_events=False)
    result = engine.run(TrainRequest(request.model_type, params=dict(request.params),
                                     segments=segments, feature_columns=request.feature_columns,
                                     register=False, topk=request.topk,
                                     eval_segments=("valid", "test"), importance=False,
                                     keep_predictions=True), data,
                        run_id=f"{uuid.uuid4().hex[:8]}-step{k:03d}")
    if result.state != "completed":
        raise MlopsError(f"rolling step {k} ({segments['test'][0]}..{segments['test'][1]}) "
                         f"failed: {result.error}")
    rep = result.report
    unit = rep.get("iteration_unit")
    return {"files": model_files(result.model), "predictions": result.predictions["test"],
            "step": {"step": k, "start": segments["test"][0], "end": segments["test"][1],
                     "train": list(rep["data"]["segments"]["train"]),
                     "valid": list(rep["data"]["segments"]["valid"]),
                     "run_id": result.run_id, "parent_step": k - 1 if k else None,
                     "best_iteration": rep.get(f"best_{unit}") if unit else None,
                     "metrics": {s: {m: v for m, v in rep["metrics"][s].items()
                                     if m in ("ic", "rank_ic", "days")}
                                 for s in ("valid", "test") if s in rep["metrics"]}},
            "report": {"hyper_parameters": rep["hyper_parameters"],
                       "model_config": rep["model_config"], "data": rep["data"]}}


def _run_steps(data, request: RollingRequest, steps: list[dict], settings) -> list[dict]:
    if not request.parallel or len(steps) == 1:
        return [train_step(data, request, seg, k, settings) for k, seg in enumerate(steps)]
    import ray
    from cluster.ray_env import ensure_ray
    ensure_ray()
    ref = ray.put(data)      # the features in the object store once, shared by every step
    task = ray.remote(train_step).options(num_cpus=max(int(request.cpus_per_step), 1))
    return ray.get([task.remote(ref, request, seg, k, settings) for k, seg in enumerate(steps)])


@dataclass
class RollingResult:
    model: object
    report: dict
    metrics: dict
    predictions: pd.DataFrame
    registry_name: str | None = None
    version: str | None = None


def run_rolling(request: RollingRequest, data=None, settings=None, bus=None,
                lineage_extra: dict | None = None) -> RollingResult:
    """Train every step, evaluate the concatenated test predictions, register one version."""
    from cluster.config import get_settings
    from cluster.features.qlib_bridge import default_segments
    from cluster.models.composite import RollingModel
    from cluster.registry.artefacts import load_model, write_files
    from cluster.training.engine import evaluate_frame, load_features
    request.check()
    settings = settings or get_settings()
    started = time.time()
    data = data or load_features(settings)
    first = request.segments or default_segments(data.frame["date"])
    steps = rolling_segments(data.frame["date"], first, request.step, request.window,
                             request.train_days, settings.qlib.label_horizon)
    log.info("rolling %s: %d steps of %d days", request.model_type, len(steps), request.step)
    done = _run_steps(data, request, steps, settings)

    import tempfile
    from pathlib import Path
    step_models = []
    trusted = settings.registry.model_modules
    for out in done:
        with tempfile.TemporaryDirectory() as tmp:
            write_files(Path(tmp), out["files"])
            step_models.append(dict(out["step"], model=load_model(Path(tmp) / "model", trusted)))
    model = RollingModel(step_models, request.model_type)
    predictions = pd.concat([out["predictions"] for out in done]).sort_index()
    metrics = {"test": evaluate_frame(predictions, request.topk, settings.training.cost_bps)}
    last = done[-1]["report"]
    run_id = uuid.uuid4().hex[:12]
    data_info = dict(last["data"])
    data_info["segments"] = {"train": last["data"]["segments"]["train"],
                             "valid": last["data"]["segments"]["valid"],
                             "test": [steps[0]["test"][0], steps[-1]["test"][1]]}
    report = {"run_id": run_id, "model_type": request.model_type, "model_name": request.name,
              "kind": "rolling", "status": "completed",
              "rolling": {**{k: v for k, v in asdict(request).items()
                             if k in ("step", "window", "train_days")},
                          "steps": model.lineage()},
              "hyper_parameters": last["hyper_parameters"], "model_config": last["model_config"],
              "data": data_info, "metrics": metrics,
              "feature_importance": _importance(model),
              "duration_seconds": round(time.time() - started, 3)}
    path = settings.home / "reports" / f"{run_id}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=str))
    result = RollingResult(model, report, metrics, predictions)
    result.report_path = path
    if request.register:
        from cluster.training.registration import register_model
        info = register_model(settings, bus, request.name, model, report, data,
                              model_type=request.model_type, lineage_extra=lineage_extra,
                              tags={"kind": "rolling", "rolling_steps": str(len(steps))})
        result.registry_name, result.version = info.name, info.version
        report["registry"] = {"name": info.name, "version": info.version, "state": info.state}
        path.write_text(json.dumps(report, indent=2, default=str))
    return result


def _importance(model) -> dict:
    try:
        imp = model.feature_importance()
    except Exception:  # a step type without importances (torch: permutation, skipped here)
        return {}
    return {str(k): float(v) for k, v in imp.head(50).items()}

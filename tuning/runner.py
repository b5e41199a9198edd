"""A tuning run: Ray Tune over walk-forward folds, then the best trial -> registry.

    summary = run_tuning(TuneRequest("lightgbm", samples=16, folds=3))
    summary = resume_tuning("lightgbm-20240102-101500")   # after the driver was killed

- Trials: :func:`tuning.trainable.train_trial`, wrapped with ``tune.with_parameters``
  (the features go to the object store once, as one ObjectRef that every trial and
  fold task shares) and ``tune.with_resources`` (a placement group per trial from
  the model type and its config).
- Scheduling: ASHA on ``rounds`` (boosting rounds or epochs spent) by default, or
  FIFO; random search (seeded) or Optuna's TPE, with at most ``max_concurrent``
  trials at once, capped by what the cluster holds.
- Storage: ``$MLOPS_HOME/tune/<experiment>``, with ``mlops_tune.json`` beside Tune's
  own state: the request, the folds and the data version, so ``--resume NAME``
  needs nothing else and trains on the same data version.
- Folds (``tuning.folds``): purged walk-forward folds, each with an inner split,
  so a trial is scored on days its early stopping never saw; with ``rolling=STEP``
  the folds are rolling steps over the tuning window (``jobs.train --rolling``'s
  protocol), each scored on its next ``STEP`` days.
- Best trial (the highest selection RankIC among trials that finished every fold)
  -> registry in state ``trained`` with lineage naming the experiment and trial:
  ``final="retrain"`` trains its config once more through the engine on the
  standard split -- the train+valid dates the folds were cut from, valid kept for
  early stopping, test held out and evaluated (with ``rolling``: a rolling retrain
  over the test span, registered as one rolling version); ``final="checkpoint"``
  registers the model of its last (widest) fold from its checkpoint (library
  formats), without training. Either way the summary reports the best trial's
  held-out test RankIC beside its selection score (``best.held_out_rank_ic``,
  ``best.selection_rank_ic``).
- ``ensemble_top=K``: the top K trials are retrained the same way and registered
  as one ensemble version (mean of cross-sectional ranks or z-scores).
"""
from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cluster.config import Settings, get_settings
from cluster.errors import MlopsError
from cluster.models.zoo import spec
from cluster.training.engine import FeatureData, load_features
from tuning.folds import rolling_folds, selection_folds, tuning_window
from tuning.spaces import asha_grace, budget, merged_space, to_tune
from tuning.trainable import METRIC, MODE, THREAD_PARAMS, TrialSetup, trial_resources, \
    train_trial

log = logging.getLogger(__name__)
META = "mlops_tune.json"
SCHEDULERS = ("asha", "fifo")
SEARCHES = ("random", "optuna")
FINALS = ("retrain", "checkpoint")


@dataclass
class TuneRequest:
    model_type: str
    samples: int = 10
    max_concurrent: int | None = None     # default: as many as the cluster holds
    scheduler: str = "asha"
    search: str = "random"
    folds: int = 3
    seed: int = 0
    space: dict | None = None             # overrides of the default space (YAML form)
    fixed: dict = field(default_factory=dict)  # fixed parameters (--set)
    name: str | None = None
    cpus_per_trial: int = 1               # trees: num_threads
    gpu_fraction: float = 0.25            # torch, when the cluster has GPUs
    parallel_folds: bool = False
    final: str = "retrain"
    register: bool = True
    registry_name: str | None = None
    feature_columns: list[str] | None = None
    grace_period: int | None = None       # ASHA, in rounds; default spaces.asha_grace
    reduction_factor: float = 4.0
    rolling: int | None = None            # tune under the rolling protocol, STEP days
    window: str = "expanding"
    train_days: int | None = None
    ensemble_top: int | None = None       # also register an ensemble of the top K trials
    ensemble_method: str = "rank"

    def check(self) -> None:
        spec(self.model_type)
        if self.rolling is not None and self.rolling < 1:
            raise ValueError("rolling step must be >= 1 trading day")
        if self.rolling is not None and self.final == "checkpoint":
            raise ValueError("--rolling registers a rolling retrain; --final checkpoint "
                             "does not apply")
        if self.ensemble_top is not None and self.ensemble_top < 2:
            raise ValueError("ensemble_top needs at least 2 trials")
        for value, allowed, what in ((self.scheduler, SCHEDULERS, "scheduler"),
                                     (self.search, SEARCHES, "search"),
                                     (self.final, FINALS, "final")):
            if value not in allowed:
                raise ValueError(f"{what} must be one of {allowed}, not {value!r}")
        if self.samples < 1 or self.folds < 1 or self.cpus_per_trial < 1:
            raise ValueError("samples, folds and cpus_per_trial must be >= 1")
        if self.max_concurrent is not None and self.max_concurrent < 1:
            raise ValueError("max_concurrent must be >= 1")


# --------------------------------------------------------------------------- entry points
def run_tuning(request: TuneRequest, data: FeatureData | None = None,
               settings: Settings | None = None) -> dict:
    """Tune ``request.model_type``; returns the summary ``jobs.tune`` prints."""
    started = time.time()
    request.check()
    settings = _absolute(settings or get_settings())
    data = data or load_features(settings)
    name = request.name or f"{request.model_type}-{time.strftime('%Y%m%d-%H%M%S')}"
    path = experiment_path(settings, name)
    if (path / META).exists():
        raise MlopsError(f"experiment {name!r} exists under {path.parent}; "
                         f"resume it with --resume {name}")
    meta = {"name": name, "request": asdict(request),
            "folds": trial_folds(request, data.frame["date"], settings.qlib.label_horizon),
            "data": {"data_version": data.data_version, "feature_set": data.feature_set,
                     "features_version": data.features_version},
            "registered": None}
    path.mkdir(parents=True, exist_ok=True)
    _write_meta(path, meta)
    tuner = _tuner(meta, data, settings, restore=False)
    return _finish(_fit(tuner), meta, data, settings, started)


def resume_tuning(name: str, data: FeatureData | None = None,
                  settings: Settings | None = None) -> dict:
    """Continue an interrupted run: finished trials are kept, unfinished and errored
    ones continue from their last checkpoint; then the best trial is registered."""
    from ray import tune
    started = time.time()
    settings = _absolute(settings or get_settings())
    path = experiment_path(settings, name)
    if not (path / META).exists():
        raise MlopsError(f"no tuning experiment {name!r} under {path.parent}")
    meta = json.loads((path / META).read_text())
    data = data or _recorded_features(settings, meta["data"])
    if (data.data_version, data.feature_set) != (meta["data"]["data_version"],
                                                 meta["data"]["feature_set"]):
        raise MlopsError(f"experiment {name!r} ran on data version "
                         f"{meta['data']['data_version']} ({meta['data']['feature_set']}), "
                         f"not {data.data_version} ({data.feature_set})")
    if not tune.Tuner.can_restore(str(path)):
        # killed before Tune wrote any state: nothing ran, start it afresh
        tuner = _tuner(meta, data, settings, restore=False)
    else:
        tuner = _tuner(meta, data, settings, restore=True)
    return _finish(_fit(tuner), meta, data, settings, started)


def trial_folds(request: TuneRequest, dates, horizon: int) -> list[dict]:
    """The three-way folds every trial trains (see ``tuning.folds``)."""
    cal = tuning_window(dates, horizon)
    if request.rolling:
        return rolling_folds(cal, horizon, request.rolling, request.window, request.train_days)
    return selection_folds(cal, request.folds, horizon)


def _fit(tuner):
    # Tune's status tables go to stdout; jobs keep stdout for the JSON summary
    with contextlib.redirect_stdout(sys.stderr):
        return tuner.fit()


def experiment_path(settings: Settings, name: str) -> Path:
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"experiment name {name!r} must be a plain directory name")
    return settings.home.resolve() / "tune" / name


# --------------------------------------------------------------------------- building
def _absolute(settings: Settings) -> Settings:
    # Tune runs each trial in its own directory: a relative home would move with it.
    return settings.model_copy(update={"home": Path(settings.home).resolve()})


def _recorded_features(settings: Settings, info: dict) -> FeatureData:
    if info.get("features_version") is None:
        raise MlopsError("this experiment ran on in-memory features: pass the same data "
                         "to resume it")
    from cluster.lake.features import FeaturesTable
    frame = FeaturesTable(settings.lake_dir).read(version=int(info["features_version"]),
                                                  feature_set=info["feature_set"])
    return FeatureData(frame, int(info["data_version"]), info["feature_set"],
                       int(info["features_version"]))


def _tuner(meta: dict, data: FeatureData, settings: Settings, restore: bool):
    import ray
    from ray import tune
    from cluster.ray_env import ensure_ray
    # one checkpoint kept per trial forces a (cheap, ~10 ms) state snapshot per fold;
    # Tune warns about it as if it were a bottleneck
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    req = TuneRequest(**meta["request"])
    ensure_ray()
    family = spec(req.model_type).family
    gpus = req.gpu_fraction if family == "torch" and \
        ray.cluster_resources().get("GPU", 0) > 0 else 0.0
    fixed = dict(req.fixed)
    if family == "tree":  # the bundle's CPUs are the trees' threads
        fixed.setdefault(THREAD_PARAMS[0] if req.model_type == "lightgbm" else THREAD_PARAMS[1],
                         req.cpus_per_trial)
    if family == "torch":
        fixed.setdefault("device", "cuda" if gpus else "cpu")
    space = merged_space(req.model_type, req.space, fixed)
    n_folds = len(meta["folds"])
    setup = TrialSetup(req.model_type, meta["folds"], settings, req.feature_columns, gpus,
                       req.parallel_folds)
    # one copy of the features in the object store, shared by every trial and fold task
    trainable = tune.with_parameters(train_trial, data=ray.put(data), setup=setup)
    resources = functools.partial(trial_resources, model_type=req.model_type, n_folds=n_folds,
                                  gpus=gpus, parallel_folds=req.parallel_folds)
    trainable = tune.with_resources(trainable, resources)
    path = experiment_path(settings, meta["name"])
    if restore:
        return tune.Tuner.restore(str(path), trainable=trainable, resume_unfinished=True,
                                  resume_errored=True)
    per_trial = resources(_sample_config(space))
    limit = _concurrency(req, per_trial)
    tune_config = tune.TuneConfig(metric=METRIC, mode=MODE, num_samples=req.samples,
                                  scheduler=_scheduler(req, space, n_folds),
                                  search_alg=_search(req, limit),
                                  reuse_actors=True)  # a new actor costs seconds of imports
    run_config = tune.RunConfig(
        name=meta["name"], storage_path=str(path.parent),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        failure_config=tune.FailureConfig(max_failures=1), verbose=1)
    return tune.Tuner(trainable, param_space=to_tune(space), tune_config=tune_config,
                      run_config=run_config)


def _sample_config(space: dict) -> dict:
    """A config with each range at its upper end: the most a trial can ask for."""
    out = {}
    for key, value in space.items():
        out[key] = max(next(iter(value.values()))) if isinstance(value, dict) else value
    return out


def _concurrency(req: TuneRequest, pgf) -> int:
    """Trials at once: the request, capped so that every running trial fits the cluster."""
    import ray
    total = ray.cluster_resources()
    fits = math.inf
    for res, need in pgf.required_resources.items():
        if need > 0:
            fits = min(fits, int(total.get(res, 0) // need))
    fits = max(int(fits if fits != math.inf else 1), 1)
    return min(req.max_concurrent or fits, fits)


def _scheduler(req: TuneRequest, space: dict, n_folds: int):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    if req.scheduler == "fifo":
        return FIFOScheduler()
    per_fold = budget(req.model_type, space)
    # one past the most a trial can spend: ASHA stops a trial whose time reaches max_t,
    # which would cut it at its last epoch, before the fold-end report with its result
    max_t = per_fold * n_folds + 1
    grace = req.grace_period or asha_grace(req.model_type, space)
    return ASHAScheduler(time_attr="rounds", max_t=max_t, grace_period=min(grace, max_t),
                         reduction_factor=req.reduction_factor)


def _search(req: TuneRequest, limit: int):
    from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter
    if req.search == "optuna":
        from ray.tune.search.optuna import OptunaSearch
        return ConcurrencyLimiter(OptunaSearch(seed=req.seed), max_concurrent=limit)
    return BasicVariantGenerator(random_state=req.seed, max_concurrent=limit)


# --------------------------------------------------------------------------- results
def trial_rows(grid, n_folds: int) -> list[dict]:
    """One row per trial: id, status, rounds, metric. Statuses: ``completed`` (every
    fold), ``stopped_early`` (by the scheduler), ``error``, and ``unfinished`` (the
    run was interrupted, e.g. Ctrl-C: resume it)."""
    # Result has no status; the grid's trials (same order) do. Private, hence the guard.
    trials = getattr(getattr(grid, "_experiment_analysis", None), "trials", None) or []
    states = [t.status for t in trials] if len(trials) == len(grid) else [None] * len(grid)
    rows = []
    for result, state in zip(grid, states):
        m = result.metrics or {}
        if result.error is not None or state == "ERROR":
            status = "error"
        elif m.get("folds_done") == n_folds:
            status = "completed"
        elif state in (None, "TERMINATED"):
            status = "stopped_early"
        else:
            status = "unfinished"
        rows.append({"trial_id": m.get("trial_id"),  # Tune always sets it
                     "status": status, "rounds": int(m.get("rounds") or 0),
                     METRIC: _finite(m.get(METRIC)), "config": result.config,
                     "fold_rank_ic": m.get("fold_rank_ic"), "result": result})
    return rows


def _finite(value):
    return float(value) if value is not None and math.isfinite(float(value)) else None


def _finish(grid, meta: dict, data: FeatureData, settings: Settings, started: float) -> dict:
    req = TuneRequest(**meta["request"])
    rows = trial_rows(grid, len(meta["folds"]))
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    done = sorted((r for r in rows if r["status"] == "completed" and r[METRIC] is not None),
                  key=lambda r: r[METRIC], reverse=True)
    best = done[0] if done else None
    summary = {"experiment": meta["name"], "model": req.model_type,
               "experiment_path": str(experiment_path(settings, meta["name"])),
               "trials": counts, "rounds": sum(r["rounds"] for r in rows),
               "best": None, "registry_name": None, "version": None,
               "scheduler": req.scheduler, "search": req.search, "folds": meta["folds"],
               "rolling": req.rolling,
               "data_version": data.data_version, "feature_set": data.feature_set}
    if best is not None:
        summary["best"] = {"trial_id": best["trial_id"], "config": best["config"],
                           METRIC: best[METRIC], "fold_rank_ic": best["fold_rank_ic"]}
    if counts.get("unfinished"):
        summary["resume"] = f"python -m jobs.tune --resume {meta['name']}"
        log.warning("tuning run %s was interrupted: %d trial(s) unfinished; resume it with "
                    "%s", meta["name"], counts["unfinished"], summary["resume"])
    elif best is not None:
        if meta.get("registered") is None:  # a resumed, already registered run keeps it
            trained: dict = {}                 # trial id -> its retrained model
            meta["registered"] = _register(req, best, meta, data, settings, trained)
            if req.ensemble_top:
                meta["registered"]["ensemble"] = _ensemble(req, done[:req.ensemble_top], meta,
                                                           data, settings, trained)
            _write_meta(experiment_path(settings, meta["name"]), meta)
        registered = dict(meta["registered"])
        held_out = registered.pop("held_out", None)
        summary["best"]["held_out_rank_ic"] = (held_out or {}).get("rank_ic")
        summary["best"]["held_out"] = held_out
        summary.update(registered)
    else:
        log.warning("no trial finished every fold; nothing registered")
    summary["seconds"] = round(time.time() - started, 3)
    return summary


def _held_out(metrics: dict) -> dict | None:
    test = (metrics or {}).get("test")
    if not test:
        return None
    return {k: test.get(k) for k in ("ic", "icir", "rank_ic", "rank_icir", "days",
                                     "ls_annual_return", "ls_sharpe")}


def _final_model(req: TuneRequest, config: dict, data: FeatureData, settings: Settings,
                 register: bool, name: str, lineage: dict):
    """Retrain ``config`` on the standard split (or rolling over the test span):
    (model, report, registered info or None)."""
    from cluster.events import get_bus
    bus = get_bus(settings.lake_dir)
    if req.rolling:
        from cluster.training.rolling import RollingRequest, run_rolling
        result = run_rolling(RollingRequest(req.model_type, req.rolling, params=dict(config),
                                            window=req.window, train_days=req.train_days,
                                            feature_columns=req.feature_columns,
                                            register=register, registry_name=name),
                             data, settings, bus, lineage_extra=lineage)
        return result.model, result.report, result.version
    from cluster.training.engine import TrainingEngine, TrainRequest
    request = TrainRequest(req.model_type, params=dict(config),
                           feature_columns=req.feature_columns, registry_name=name,
                           register=register)
    result = TrainingEngine(settings, bus).run(request, data, lineage_extra=lineage)
    if result.state != "completed":
        raise MlopsError(f"retraining {lineage.get('tune_trial_id')} failed: {result.error}")
    return result.model, result.report, result.version


def _register(req: TuneRequest, best: dict, meta: dict, data: FeatureData,
              settings: Settings, trained: dict | None = None) -> dict:
    lineage = {"tune_experiment": meta["name"], "tune_trial_id": best["trial_id"]}
    name = req.registry_name or (f"stock-{req.model_type}-rolling" if req.rolling
                                 else f"stock-{req.model_type}")
    if req.final == "checkpoint":
        return _register_checkpoint(req, best, data, settings, name, lineage)
    model, report, version = _final_model(req, best["config"], data, settings, req.register,
                                          name, lineage)
    if trained is not None:
        trained[best["trial_id"]] = model
    return {"registry_name": name if version else None, "version": version,
            "final": "rolling" if req.rolling else "retrain",
            "training_run": report["run_id"], "held_out": _held_out(report["metrics"])}


def _ensemble(req: TuneRequest, top: list[dict], meta: dict, data: FeatureData,
              settings: Settings, trained: dict | None = None) -> dict:
    """The top trials retrained (rolling when tuned so; the best one is reused) and
    combined as one version."""
    from cluster.events import get_bus
    from cluster.models.composite import EnsembleModel
    from cluster.training.ensemble import ensemble_report, register_ensemble
    members, ids = [], []
    for row in top:
        model = (trained or {}).get(row["trial_id"])
        if model is None:
            model, _, _ = _final_model(req, row["config"], data, settings, False, "", {
                "tune_experiment": meta["name"], "tune_trial_id": row["trial_id"]})
        members.append(model)
        ids.append(f"{meta['name']}/{row['trial_id']}")
    model = EnsembleModel(members, req.ensemble_method, ids)
    base = req.registry_name or f"stock-{req.model_type}" + ("-rolling" if req.rolling else "")
    report = ensemble_report(model, data, ids, req.ensemble_method, f"{base}-ensemble",
                             settings, extra={"tune_experiment": meta["name"]})
    out = {"members": ids, "method": req.ensemble_method, "registry_name": None,
           "version": None, "held_out": _held_out(report["metrics"])}
    if req.register:
        info = register_ensemble(settings, get_bus(settings.lake_dir), model, report, data,
                                 {"tune_experiment": meta["name"]})
        out.update(registry_name=info.name, version=info.version)
    return out


def _register_checkpoint(req, best, data, settings, name, lineage) -> dict:
    """The widest fold's model from the trial's checkpoint (library formats, read back
    with the same trusted loader as the registry), evaluated on the held-out test
    segment and registered without training."""
    from cluster.events import get_bus
    from cluster.features.qlib_bridge import build_dataset
    from cluster.registry.artefacts import load_model
    from cluster.training.engine import evaluate_segments
    from cluster.training.registration import register_model
    from tuning.trainable import MODEL_DIR
    checkpoint = best["result"].checkpoint
    if checkpoint is None:
        raise MlopsError(f"trial {best['trial_id']} has no checkpoint to register")
    from cluster.registry.signing import signing_key, verify_folder
    with checkpoint.as_directory() as path:
        # the trial signed what it wrote: a file changed since is refused, not re-hashed
        files = verify_folder(Path(path), signing_key(settings), f"trial {best['trial_id']} "
                                                                 "checkpoint")
        model = load_model(Path(path) / MODEL_DIR, settings.registry.model_modules)
        report = json.loads(files["report.json"])
    info = report.get("data", {})
    dataset = build_dataset(data.frame, None, feature_columns=info.get("features"),
                            horizon=settings.qlib.label_horizon)
    held = evaluate_segments(model, dataset, None, settings.training.cost_bps, ("test",))
    report["metrics"] = {**report.get("metrics", {}), "held_out_test": held.get("test")}
    report["tune"] = {**lineage, "fold_rank_ic": best["fold_rank_ic"], METRIC: best[METRIC]}
    out = {"registry_name": None, "version": None, "final": "checkpoint",
           "training_run": report.get("run_id"),
           "held_out": _held_out({"test": held.get("test")})}
    if req.register:
        version = register_model(settings, get_bus(settings.lake_dir), name, model, report,
                                 data, model_type=req.model_type, lineage_extra=lineage)
        out.update(registry_name=version.name, version=version.version)
    return out


def _write_meta(path: Path, meta: dict) -> None:
    tmp = path / f".{META}.tmp"
    tmp.write_text(json.dumps(meta, indent=2, default=str))
    os.replace(tmp, path / META)  # atomic: a kill never leaves half a file

"""The Tune trainable: one trial trains one config on every fold, each fold through
the training engine (the one training path of ``jobs.train``).

A fold holds three segments (``tuning.folds``): ``train``, ``valid`` -- the
early-stopping window of an inner split -- and ``test``, the fold's scored days,
which its early stopping never sees. So a trial's score is not the optimistic
score of the days that picked its best iteration.

What a trial reports (``ray.tune.report``), every batch of boosting rounds or
every epoch, and once more with a checkpoint when a fold ends:

- ``selection_rank_ic`` -- the trial's objective: the mean daily RankIC over the
  scored days of its finished folds (the folds weighted by their days, i.e. the
  RankIC of the concatenated fold predictions); while a fold runs, its best
  early-stopping RankIC so far stands in for it (ASHA's intermediate signal
  only); after the last fold it is exactly the held-out mean over folds;
- ``rounds`` -- boosting rounds (or epochs) spent so far over all folds: ASHA's
  time axis, and what the ASHA-vs-FIFO benchmark adds up;
- ``es_rank_ic``/``es_loss`` of the running fold's early-stopping window,
  ``folds_done``, ``fold``; at the end ``fold_rank_ic`` (scored days per fold).

Checkpoints are taken at fold boundaries (``state.json`` with the finished
folds, ``model/`` -- the model in library formats, never a pickle -- and
``report.json`` of the latest one): a trial resumed after
its driver was killed skips the folds it had finished. A fold is not resumed
mid-way: boosting is restarted from round 0 (the engine has no warm start).

Resources: a trial asks for one bundle of ``cpus`` CPUs (trees: ``num_threads``)
and a GPU fraction where one exists. With ``parallel_folds`` the folds run at once
as Ray generator tasks that stream their progress rows back: the trial coordinates
from an empty head bundle and asks for one bundle per fold, so its placement group
holds every fold's resources (a trial stopped by ASHA takes its fold tasks with it).
"""
from __future__ import annotations

import json
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from cluster.config import Settings
from cluster.models.zoo import spec

METRIC = "selection_rank_ic"
MODE = "max"
THREAD_PARAMS = ("num_threads", "nthread")  # LightGBM / XGBoost
MODEL_DIR = "model"  # of the latest finished fold, with report.json, in every checkpoint


@dataclass
class TrialSetup:
    """What every trial of one experiment shares (put in the object store once)."""
    model_type: str
    folds: list[dict]
    settings: Settings
    feature_columns: list[str] | None = None
    gpus: float = 0.0          # GPU fraction per fold (torch models, when a GPU exists)
    parallel_folds: bool = False


def trial_cpus(model_type: str, config: dict) -> float:
    """CPUs a fold needs: the thread count of trees, else 1."""
    if spec(model_type).family == "tree":
        for name in THREAD_PARAMS:
            if name in config:
                return float(max(int(config[name]), 1))
    return 1.0


def trial_resources(config: dict, *, model_type: str, n_folds: int, gpus: float = 0.0,
                    parallel_folds: bool = False):
    """The placement group of one trial (a callable of the config for ``with_resources``)."""
    from ray.tune import PlacementGroupFactory
    bundle = {"CPU": trial_cpus(model_type, config)}
    if gpus and spec(model_type).family == "torch":
        bundle["GPU"] = float(gpus)
    if parallel_folds and n_folds > 1:
        # empty head bundle: the trial only coordinates; one bundle per fold task
        return PlacementGroupFactory([{}] + [dict(bundle) for _ in range(n_folds)],
                                     strategy="PACK")
    return PlacementGroupFactory([bundle])


# --------------------------------------------------------------------------- folds
def _row_rank_ic(row: dict) -> float | None:
    """Early-stopping RankIC of the running fold from one engine progress row."""
    value = row.get("valid_rank_ic")  # torch reports it every epoch; trees when they watch it
    return None if value is None else float(value)


def run_fold(data, setup: TrialSetup, config: dict, k: int, run_id: str, on_row=None):
    """Train fold ``k`` through the engine; returns (fold summary, artefacts) where the
    artefacts are the model's files (library formats, under ``model/``) and the
    engine's JSON report of the fold."""
    from cluster.events import EventBus
    from cluster.training.engine import TrainingEngine, TrainRequest
    if spec(setup.model_type).family == "torch":
        import torch
        torch.set_num_threads(max(int(trial_cpus(setup.model_type, config)), 1))
    engine = TrainingEngine(setup.settings, EventBus(None), persist_events=False)
    request = TrainRequest(setup.model_type, params=dict(config), segments=setup.folds[k],
                           feature_columns=setup.feature_columns, register=False,
                           eval_segments=("valid", "test"), importance=False)
    result = engine.run(request, data, run_id=run_id, epoch_callback=on_row,
                        raise_on_error=True)
    if result.state != "completed":
        raise RuntimeError(f"fold {k + 1} of {setup.model_type} ended {result.state}: "
                           f"{result.error}")
    scored, es = result.metrics.get("test", {}), result.metrics.get("valid", {})
    unit = result.report.get("iteration_unit")
    summary = {"fold": k + 1, "rank_ic": scored.get("rank_ic"), "ic": scored.get("ic"),
               "days": int(scored.get("days") or 0), "loss": scored.get("mse"),
               "es_rank_ic": es.get("rank_ic"),
               "best_iteration": result.report.get(f"best_{unit}") if unit else 1,
               "epochs": int(result.report.get(f"total_{unit}s") or 1) if unit else 1,
               "run_id": result.run_id}
    from cluster.registry.artefacts import model_files
    blobs = {**model_files(result.model, MODEL_DIR),
             "report.json": json.dumps(result.report, default=str).encode()}
    return summary, blobs


def _fold_task(data, setup: TrialSetup, config: dict, k: int, run_id: str):
    """A fold as a Ray generator task (parallel folds): yields ``("row", row)`` for each
    engine progress row, then ``("done", (summary, artefacts))``. The engine reports
    through a callback, so it runs in a thread that feeds the generator."""
    import queue
    import threading
    rows: queue.Queue = queue.Queue()
    out: dict = {}

    def work():
        try:
            out["result"] = run_fold(data, setup, config, k, run_id, rows.put)
        except BaseException as exc:  # re-raised in the task, so the trial errors
            out["error"] = exc
        finally:
            rows.put(None)
    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    while (row := rows.get()) is not None:
        yield "row", row
    thread.join()
    if "error" in out:
        raise out["error"]
    yield "done", out["result"]


# --------------------------------------------------------------------------- trial
class _Trial:
    """Bookkeeping of one trial: finished folds, running folds, reports."""

    def __init__(self, setup: TrialSetup, config: dict):
        self.setup, self.config = setup, config
        self.n = len(setup.folds)
        self.done: dict[int, dict] = {}
        self.live: dict[int, dict] = {}  # fold -> {"epoch", "best"}
        self.blobs: dict[str, bytes] = {}  # artefacts of the latest finished fold
        self.model_fold = -1

    # state <-> checkpoint
    def load(self, checkpoint) -> None:
        if checkpoint is None:
            return
        from cluster.registry.signing import signing_key, verify_folder
        with checkpoint.as_directory() as path:
            files = verify_folder(Path(path), signing_key(self.setup.settings))
            state = json.loads(files["state.json"])
            self.done = {int(k): v for k, v in state["folds"].items()}
            self.model_fold = int(state.get("model_fold", -1))
            self.blobs = {name: blob for name, blob in files.items()
                          if name == "report.json" or name.startswith(MODEL_DIR + "/")}

    def metrics(self, row: dict | None = None, fold: int | None = None) -> dict:
        done = [f for f in self.done.values()
                if f["rank_ic"] is not None and math.isfinite(f["rank_ic"])]
        weight = sum(max(f["days"], 1) for f in done)
        total = sum(f["rank_ic"] * max(f["days"], 1) for f in done)
        live = [v["best"] for v in self.live.values() if v["best"] is not None]
        out = {"rounds": sum(f["epochs"] for f in self.done.values())
               + sum(v["epoch"] for v in self.live.values()),
               "folds_done": len(self.done), "n_folds": self.n}
        if done or live:
            # a running fold stands in with its early-stopping best, weighted as one fold
            per_fold = weight / len(done) if done else 1.0
            out[METRIC] = (total + per_fold * sum(live)) / (weight + per_fold * len(live))
        if row is not None:
            out["fold"] = fold + 1
            out["epoch"] = int(row.get("round") or row.get("epoch") or 0)
            if row.get("valid_loss") is not None:
                out["es_loss"] = float(row["valid_loss"])
            if _row_rank_ic(row) is not None:
                out["es_rank_ic"] = _row_rank_ic(row)
        if len(self.done) == self.n:
            out["fold_rank_ic"] = [self.done[k]["rank_ic"] for k in sorted(self.done)]
            out["fold_days"] = [self.done[k]["days"] for k in sorted(self.done)]
            out["ic"] = _mean([f["ic"] for f in self.done.values()])
        return out

    def on_row(self, k: int, row: dict) -> dict | None:
        live = self.live.setdefault(k, {"epoch": 0, "best": None})
        live["epoch"] = int(row.get("round") or row.get("epoch") or live["epoch"])
        ric = _row_rank_ic(row)
        if ric is not None and math.isfinite(ric) and (live["best"] is None or ric > live["best"]):
            live["best"] = ric
        if ric is None and row.get("valid_loss") is None:
            return None  # nothing about validation (e.g. the linear model's single fit)
        return self.metrics(row, k)

    def finish(self, summary: dict, blobs: dict[str, bytes]) -> None:
        k = summary["fold"] - 1
        self.live.pop(k, None)
        self.done[k] = summary
        if k >= self.model_fold:  # keep the model of the latest (widest) fold
            self.model_fold, self.blobs = k, blobs

    def report(self, metrics: dict, checkpoint: bool = False) -> None:
        from ray import tune
        if not checkpoint:
            tune.report(metrics)
            return
        with tempfile.TemporaryDirectory() as tmp:
            state = {"folds": {str(k): v for k, v in self.done.items()},
                     "model_fold": self.model_fold, "model_type": self.setup.model_type,
                     "config": self.config, "time": time.time()}
            (Path(tmp) / "state.json").write_text(json.dumps(state, default=str))
            from cluster.registry.artefacts import write_files
            write_files(Path(tmp), self.blobs)
            # signed: registration and resume refuse a checkpoint changed on disk since
            from cluster.registry.signing import signing_key, write_manifest
            write_manifest(Path(tmp), ["state.json", *self.blobs],
                           signing_key(self.setup.settings))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))


def _mean(values) -> float | None:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return sum(vals) / len(vals) if vals else None


def train_trial(config: dict, data=None, setup: TrialSetup | None = None) -> None:
    """The function trainable (wrap with ``tune.with_parameters(data=..., setup=...)``).

    ``data`` is the FeatureData, or an ObjectRef to it (then fold tasks share it)."""
    import ray
    from ray import tune
    trial = _Trial(setup, config)
    trial.load(tune.get_checkpoint())
    todo = [k for k in range(trial.n) if k not in trial.done]
    if not todo:  # resumed after its last fold: report the final result again
        trial.report(trial.metrics(), checkpoint=True)
        return
    trial_id = tune.get_context().get_trial_id()
    if setup.parallel_folds and len(todo) > 1:
        _parallel(trial, data, todo, trial_id)
        return
    local = ray.get(data) if isinstance(data, ray.ObjectRef) else data
    for k in todo:
        def on_row(row, k=k):
            metrics = trial.on_row(k, row)
            if metrics is not None:
                trial.report(metrics)
        trial.finish(*run_fold(local, setup, config, k, f"{trial_id}-fold{k + 1}", on_row))
        trial.report(trial.metrics(), checkpoint=True)


def _parallel(trial: _Trial, data, todo: list[int], trial_id: str) -> None:
    """Folds at once as Ray generator tasks inside the trial's placement group."""
    import ray
    setup, config = trial.setup, trial.config
    ref = data if isinstance(data, ray.ObjectRef) else ray.put(data)
    options = {"num_cpus": trial_cpus(setup.model_type, config)}
    if setup.gpus and spec(setup.model_type).family == "torch":
        options["num_gpus"] = setup.gpus
    task = ray.remote(_fold_task).options(**options)
    streams = {task.remote(ref, setup, config, k, f"{trial_id}-fold{k + 1}"): k for k in todo}
    while streams:
        ready, _ = ray.wait(list(streams), num_returns=1)
        for stream in ready:
            k = streams[stream]
            try:
                kind, payload = ray.get(next(stream))
            except StopIteration:
                streams.pop(stream)
                continue
            if kind == "row":
                metrics = trial.on_row(k, payload)
                if metrics is not None:
                    trial.report(metrics)
            else:
                streams.pop(stream)
                trial.finish(*payload)
                trial.report(trial.metrics(), checkpoint=True)

"""Training runs started through the job queue: start one as a queued Ray job, follow
its progress (its ``training_progress`` events), read its report, stop it.

A run started here gets its id up front (``jobs.train --run-id``) and the events
offset at which it was queued, both kept in the queue job's metadata, so its progress
is read from the events after that offset only (never the whole table).
"""
from __future__ import annotations

import json
import uuid
from pathlib import Path

from cluster.errors import NotFoundError
from cluster.models.zoo import model_config
from cluster.training.stop import stop_run


def start_training(queue, bus, name: str, model_type: str, params: dict | None = None,
                   segments: dict | None = None, priority: int | None = None,
                   cpus: float | None = None, gpus: float = 0.0) -> dict:
    model_config(model_type, params)            # refuse unknown types/params before queueing
    run_id = uuid.uuid4().hex[:12]
    args = ["--model", model_type, "--name", name, "--run-id", run_id]
    for key, value in (params or {}).items():
        args += ["--set", f"{key}={json.dumps(value)}"]
    if segments:
        args += ["--segments", ",".join(f"{k}={a}:{b}" for k, (a, b) in segments.items())]
    offset = bus.last_offset()
    job = queue.submit("train", args, priority=priority, cpus=cpus, gpus=gpus,
                       metadata={"model": name, "model_type": model_type, "run_id": run_id,
                                 "events_offset": offset})
    return {"job_id": job.id, "run_id": run_id, "model": name, "model_type": model_type,
            "events_offset": offset, "state": job.state}


def runs_of(queue, name: str, limit: int = 500) -> list:
    """The queue's training jobs of one registry name, newest first."""
    return [j for j in queue.list(limit=limit)
            if j.type == "train" and j.metadata.get("model") == name]


def latest_run(queue, name: str):
    runs = runs_of(queue, name)
    if not runs:
        raise NotFoundError(f"no training run of {name!r} was started through the queue")
    return runs[0]


def run_progress(bus, run_id: str, after: int = -1) -> list[dict]:
    """The run's training_progress events after ``after``, oldest first."""
    out = []
    for offset, event in bus.read(after=after, types=["training_progress"]):
        if event.run_id == run_id:
            out.append({"offset": offset, **json.loads(event.model_dump_json())})
    return out


def run_report(home: Path, run_id: str) -> dict:
    path = Path(home) / "reports" / f"{run_id}.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise NotFoundError(f"run {run_id} has no training report yet (it is written when "
                            "the run ends)") from None


def stop_training(queue, home: Path, job) -> dict:
    """Stop a run: a queued job is cancelled; a running one gets its stop flag (it ends
    ``failed`` with reason ``stopped`` at its next check, publishing that stage)."""
    run_id = job.metadata.get("run_id")
    if job.state == "queued":
        job = queue.cancel(job.id, "training stopped before it started")
        return {"job_id": job.id, "run_id": run_id, "state": job.state}
    stop_run(run_id, Path(home) / "runs")
    return {"job_id": job.id, "run_id": run_id, "state": job.state, "stop_requested": True}

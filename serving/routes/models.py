"""Models: search, compare, lifecycle and lineage of registered versions; training runs
started over the API (queued Ray jobs), their progress, report, and stopping them.

``{model_id}`` is ``<name>/<version>`` for a registered version; the training routes
take a registry name (``stock-lightgbm``) and act on its latest run started here.
"""
from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field

from cluster.errors import MlopsError
from serving.auth import Principal
from serving.context import ApiContext
from serving.errors import ERROR_RESPONSES
from serving.versions import split_model_id


class TrainingStart(BaseModel):
    model_type: str = Field(..., examples=["lightgbm"], description="one of GET /api/model-types")
    params: dict[str, Any] = Field(default_factory=dict, description="overrides of the defaults")
    segments: dict[str, tuple[str, str]] | None = Field(
        None, description='{"train": ["YYYY-MM-DD", "YYYY-MM-DD"], "valid": [...], "test": [...]}')
    priority: int | None = Field(None, ge=0, le=9)
    cpus: float | None = Field(None, ge=0, le=1024)
    gpus: float = Field(0.0, ge=0, le=64)


def _is_version(model_id: str) -> bool:
    name, sep, version = model_id.rpartition("/")
    return bool(sep and name and version.isdigit())


def router(ctx: ApiContext) -> APIRouter:
    r = APIRouter(tags=["models"], responses=ERROR_RESPONSES)

    @r.get("/api/models")
    async def search(name: str | None = None, state: str | None = None,
                     tag: list[str] = Query(default=[], description="key:value, repeatable"),
                     metric: str | None = None, min_value: float | None = None,
                     limit: int = Query(100, ge=1, le=1000),
                     _who: Principal = Depends(ctx.viewer)) -> dict:
        tags = {}
        for item in tag:
            key, sep, value = item.partition(":")
            if not sep or not key:
                raise ValueError(f"tag {item!r} is not key:value")
            tags[key] = value
        found = await ctx.blocking(ctx.registry.search, name, state, tags, metric, min_value,
                                   True, limit)
        return {"models": [v.to_dict() for v in found]}

    @r.get("/api/models/compare")
    async def compare(ids: str = Query(..., description="comma-separated model ids, e.g. m/1,m/2"),
                      _who: Principal = Depends(ctx.viewer)) -> dict:
        from cluster.registry.compare import compare_versions
        return await ctx.blocking(compare_versions, ctx.registry, ids.split(","))

    @r.get("/api/models/{model_id:path}/lifecycle")
    async def lifecycle(model_id: str, _who: Principal = Depends(ctx.viewer)) -> dict:
        def read():
            name, version = split_model_id(model_id)
            reg = ctx.registry
            return {"model_id": model_id, "state": reg.state(name, version),
                    "history": [t.to_dict() for t in reg.history(name, version)]}
        return await ctx.blocking(read)

    @r.get("/api/models/{model_id:path}/lineage")
    async def lineage(model_id: str, _who: Principal = Depends(ctx.viewer)) -> dict:
        name, version = split_model_id(model_id)
        return await ctx.blocking(ctx.registry.lineage, name, version)

    # -- training runs ------------------------------------------------------------
    @r.get("/api/models/{model_id:path}/progress")
    async def progress(model_id: str, after: int = Query(-1, ge=-1),
                       _who: Principal = Depends(ctx.viewer)) -> dict:
        """A name: its latest run started over the API, live from the events. A version:
        the stages and history its training report recorded."""
        from cluster.training.runs import latest_run, run_progress

        def read():
            if _is_version(model_id):
                name, version = split_model_id(model_id)
                report = ctx.registry.artefact_json(name, version, "report.json")
                return {"model_id": model_id, "run_id": report.get("run_id"),
                        "state": report.get("status"), "stages": report.get("stages", []),
                        "history": report.get("history", []), "events": []}
            job = latest_run(ctx.job_queue(), model_id)
            start = max(after, int(job.metadata.get("events_offset", -1)))
            events = run_progress(ctx.bus, job.metadata["run_id"], start)
            last = events[-1] if events else None
            return {"model_id": model_id, "run_id": job.metadata["run_id"], "job_id": job.id,
                    "job_state": job.state, "state": last["stage"] if last else "queued",
                    "percent": last["percent"] if last else 0.0, "events": events}
        return await ctx.blocking(read)

    @r.get("/api/models/{model_id:path}/training-report")
    async def training_report(model_id: str, _who: Principal = Depends(ctx.viewer)) -> dict:
        from cluster.training.runs import latest_run, run_report

        def read():
            if _is_version(model_id):
                name, version = split_model_id(model_id)
                return ctx.registry.artefact_json(name, version, "report.json")
            job = latest_run(ctx.job_queue(), model_id)
            return run_report(ctx.settings.home, job.metadata["run_id"])
        return await ctx.blocking(read)

    @r.post("/api/models/{model_id:path}/training/start", status_code=202)
    async def training_start(model_id: str, body: TrainingStart, request: Request,
                             who: Principal = Depends(ctx.operator)) -> dict:
        from cluster.training.runs import start_training
        if _is_version(model_id):
            raise ValueError(f"{model_id!r} is a version; start training under a registry "
                             "name (e.g. stock-lightgbm): the run registers a new version")
        return await ctx.audited(request, who, lambda: ctx.blocking(
            start_training, ctx.job_queue(), ctx.bus, model_id, body.model_type, body.params,
            body.segments, body.priority, body.cpus, body.gpus),
            keys=("job_id", "run_id", "model_type"))

    @r.post("/api/models/{model_id:path}/training/stop")
    async def training_stop(model_id: str, request: Request,
                            who: Principal = Depends(ctx.operator)) -> dict:
        from cluster.resources import FINAL
        from cluster.training.runs import latest_run, stop_training

        def stop():
            job = latest_run(ctx.job_queue(), model_id)
            if job.state in FINAL:
                raise MlopsError(f"the latest run of {model_id!r} ({job.metadata.get('run_id')})"
                                    f" already ended: {job.state}")
            return stop_training(ctx.job_queue(), ctx.settings.home, job)
        return await ctx.audited(request, who, lambda: ctx.blocking(stop),
                                 keys=("job_id", "run_id", "state"))

    return r

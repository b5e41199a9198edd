"""The job queue: list, one job (with its Ray logs on request), cancel/stop."""
from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Request

from cluster.resources import ACTIVE, FINAL, WAITING
from serving.auth import Principal
from serving.context import ApiContext
from serving.errors import ERROR_RESPONSES

STATES = WAITING + ACTIVE + FINAL


def router(ctx: ApiContext) -> APIRouter:
    r = APIRouter(tags=["jobs"], responses=ERROR_RESPONSES)

    @r.get("/api/jobs")
    async def jobs(state: list[str] = Query(default=[], description=f"any of {list(STATES)}"),
                   limit: int = Query(100, ge=1, le=1000),
                   _who: Principal = Depends(ctx.viewer)) -> dict:
        bad = [s for s in state if s not in STATES]
        if bad:
            raise ValueError(f"unknown state(s) {bad}; states are {list(STATES)}")
        found = await ctx.blocking(ctx.job_queue().list, tuple(state) or None, limit)
        return {"jobs": [j.to_dict() for j in found]}

    @r.get("/api/jobs/{job_id}")
    async def job(job_id: str, logs: bool = False,
                  _who: Principal = Depends(ctx.viewer)) -> dict:
        def read():
            q = ctx.job_queue()
            out = q.get(job_id).to_dict()
            if logs:
                try:
                    out["logs"] = q.logs(job_id)
                except Exception as exc:
                    out["logs"] = None
                    out["logs_error"] = f"{type(exc).__name__}: {exc}"
            return out
        return await ctx.blocking(read)

    @r.delete("/api/jobs/{job_id}")
    async def cancel(job_id: str, request: Request,
                     who: Principal = Depends(ctx.operator)) -> dict:
        return await ctx.audited(request, who, lambda: ctx.blocking(
            lambda: ctx.job_queue().cancel(job_id, f"cancelled by {who.who}").to_dict()),
            keys=("id", "state"))

    return r

"""The audit log (admin), the model types (for the training form) and the cluster's
resources as the job queue sees them."""
from __future__ import annotations

from fastapi import APIRouter, Depends, Query

from serving.auth import Principal
from serving.context import ApiContext
from serving.errors import ERROR_RESPONSES


def router(ctx: ApiContext) -> APIRouter:
    r = APIRouter(responses=ERROR_RESPONSES)

    @r.get("/api/audit", tags=["audit"])
    async def audit(limit: int = Query(100, ge=1, le=10_000),
                    _who: Principal = Depends(ctx.admin)) -> dict:
        return {"records": await ctx.blocking(ctx.audit.tail, limit)}

    @r.get("/api/model-types", tags=["models"])
    async def model_types(_who: Principal = Depends(ctx.viewer)) -> dict:
        from cluster.models.params import describe_all
        return {"model_types": await ctx.blocking(describe_all)}

    @r.get("/api/cluster", tags=["jobs"])
    async def cluster(_who: Principal = Depends(ctx.viewer)) -> dict:
        from dataclasses import asdict

        from cluster.resources import ACTIVE, Resources

        def read():
            q = ctx.job_queue()
            capacity = q.capacity()
            used = sum((j.resources for j in q.list(ACTIVE, limit=10_000)), Resources())
            return {"dashboard": getattr(q.runner, "address", None),
                    "capacity": asdict(capacity) if capacity else None,
                    "used_by_queue": asdict(used),
                    "queued": len(q.list(("queued",), limit=10_000))}
        return await ctx.blocking(read)

    return r

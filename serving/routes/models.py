"""Models: lifecycle and lineage of registered versions."""
from __future__ import annotations

from fastapi import APIRouter, Depends

from serving.auth import Principal
from serving.context import ApiContext
from serving.errors import ERROR_RESPONSES
from serving.versions import split_model_id


def router(ctx: ApiContext) -> APIRouter:
    r = APIRouter(tags=["models"], responses=ERROR_RESPONSES)

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

    return r

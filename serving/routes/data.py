"""Data versions of the bars table: list, one, diff."""
from __future__ import annotations

from fastapi import APIRouter, Depends, Query

from cluster.errors import NotFoundError
from serving.auth import Principal
from serving.context import ApiContext
from serving.errors import ERROR_RESPONSES


def router(ctx: ApiContext) -> APIRouter:
    r = APIRouter(tags=["data"], responses=ERROR_RESPONSES)

    def bars():
        from cluster.lake.bars import BarsTable
        return BarsTable(ctx.settings.lake_dir)

    @r.get("/api/data/versions")
    async def versions(_who: Principal = Depends(ctx.viewer)) -> dict:
        return {"versions": await ctx.blocking(lambda: bars().versions())}

    @r.get("/api/data/versions/{version_id}")
    async def version(version_id: int, _who: Principal = Depends(ctx.viewer)) -> dict:
        def read():
            table = bars()
            found = [v for v in table.versions() if v["version"] == version_id]
            if not found:
                raise NotFoundError(f"no data version {version_id}")
            return {**found[0], "stats": table.stats(version_id)}
        return await ctx.blocking(read)

    @r.get("/api/data/diff")
    async def diff(a: int = Query(..., ge=0), b: int = Query(..., ge=0),
                   _who: Principal = Depends(ctx.viewer)) -> dict:
        def read():
            table = bars()
            latest = table.version()
            for v in (a, b):
                if latest is None or v > latest:
                    raise NotFoundError(f"no data version {v}"
                                        + (f" (versions 0..{latest})" if latest is not None else ""))
            return table.diff(a, b)
        return await ctx.blocking(read)

    return r

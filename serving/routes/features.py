"""Features: the catalog, one instrument's features, computing them (a queued job) and
changing an indicator's definition (a new feature set)."""
from __future__ import annotations

import datetime as dt
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field

from serving.auth import Principal
from serving.context import ApiContext
from serving.errors import ERROR_RESPONSES
from serving.routes.frames import records

MAX_ROWS = 5000


class CalculateRequest(BaseModel):
    incremental: bool = Field(True, description="only new dates (+ look-back); false: all")
    instruments: list[str] | None = Field(None, max_length=5000)
    priority: int | None = Field(None, ge=0, le=9)
    cpus: float | None = Field(None, ge=0, le=1024)


class FeatureChange(BaseModel):
    params: dict[str, Any] = Field(..., description="the feature's own parameter names, e.g. "
                                                    '{"timeperiod": 10} for rsi_14')
    recompute: bool = Field(True, description="queue a full feature run for the new set")


def router(ctx: ApiContext) -> APIRouter:
    r = APIRouter(tags=["features"], responses=ERROR_RESPONSES)

    @r.get("/api/features")
    async def catalog(_who: Principal = Depends(ctx.viewer)) -> dict:
        from cluster.features.catalog import feature_catalog
        from cluster.lake.bars import BarsTable

        def read():
            out = feature_catalog(ctx.settings)
            bars = BarsTable(ctx.settings.lake_dir)
            out["instruments"] = bars.instruments() if bars.exists() else []
            return out
        return await ctx.blocking(read)

    @r.get("/api/features/{stock_code}")
    async def instrument_features(
            stock_code: str, version: int | None = Query(None, ge=0,
                                                         description="features-table version"),
            start: dt.date | None = None, end: dt.date | None = None,
            columns: str | None = Query(None, description="comma-separated feature names"),
            limit: int = Query(1000, ge=1, le=MAX_ROWS, description="the last N dates"),
            _who: Principal = Depends(ctx.viewer)) -> dict:
        from cluster.features.service import read_instrument_features
        cols = None
        if columns:
            cols = ["instrument", "date", *dict.fromkeys(c.strip() for c in columns.split(",")
                                                        if c.strip())]

        def read():
            from cluster.lake import tables
            from cluster.lake.bars import BarsTable
            from cluster.lake.features import FeaturesTable
            table_ = FeaturesTable(ctx.settings.lake_dir)
            if cols and table_.exists():
                names = set(tables.open_table(table_.path).schema().to_arrow().names)
                unknown = [c for c in cols if c not in names]
                if unknown:
                    raise ValueError(f"columns: no feature(s) {unknown[:10]} in the features "
                                     "table (see GET /api/features)")
            frame = read_instrument_features(stock_code, version, start, end, cols,
                                             ctx.settings)
            frame = frame.sort_values("date").tail(limit)
            data_version = (int(frame["data_version"].max()) if "data_version" in frame
                            and frame["data_version"].notna().any() else None)
            bars = []
            table = BarsTable(ctx.settings.lake_dir)
            if len(frame) and table.exists():       # the prices the indicators are drawn on
                bars = records(table.read(
                    data_version, instruments=[stock_code], start=frame["date"].min(),
                    end=frame["date"].max(),
                    columns=["date", "open", "high", "low", "close", "volume"]))
            return {"instrument": stock_code, "features_version": version if version is not None
                    else FeaturesTable(ctx.settings.lake_dir).version(),
                    "data_version": data_version, "rows": len(frame),
                    "records": records(frame), "bars": bars}
        return await ctx.blocking(read)

    @r.post("/api/features/calculate", status_code=202)
    async def calculate(body: CalculateRequest, request: Request,
                        who: Principal = Depends(ctx.operator)) -> dict:
        args = ["--incremental"] if body.incremental else []
        if body.instruments:
            args += ["--instruments", ",".join(body.instruments)]

        def submit():
            job = ctx.job_queue().submit("features", args, body.priority, body.cpus,
                                         metadata={"requested_by": who.who})
            return {"job_id": job.id, "state": job.state}
        return await ctx.audited(request, who, lambda: ctx.blocking(submit),
                                 keys=("job_id",))

    @r.put("/api/features/{feature_id}")
    async def change(feature_id: str, body: FeatureChange, request: Request,
                     who: Principal = Depends(ctx.operator)) -> dict:
        from cluster.features.catalog import change_feature

        def apply():
            out = change_feature(feature_id, body.params, who.who, ctx.settings)
            out["job_id"] = None
            if out["changed"] and body.recompute:
                job = ctx.job_queue().submit("features", [], metadata={
                    "feature_set": out["feature_set"], "requested_by": who.who})
                out["job_id"] = job.id
            return out
        return await ctx.audited(request, who, lambda: ctx.blocking(apply),
                                 keys=("feature_set", "previous", "changed", "job_id"))

    return r

"""Monitoring (built on ``cluster.monitoring``): per-version realised metrics, drift,
alerts (list; acknowledge), A/B experiments, predictions per hour, and what served on
a date. Where the monitoring job has not run yet the answers are empty lists, or a
404 naming what is missing; never made-up numbers."""
from __future__ import annotations

import datetime as dt

import pandas as pd
from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field

from cluster.errors import NotFoundError
from serving.auth import Principal
from serving.context import ApiContext
from serving.errors import ERROR_RESPONSES
from serving.routes.frames import records


class AlertAck(BaseModel):
    alert_id: str = Field(..., min_length=1)
    message: str = ""


def router(ctx: ApiContext) -> APIRouter:
    r = APIRouter(tags=["monitoring"], responses=ERROR_RESPONSES)
    lake = lambda: ctx.settings.lake_dir  # noqa: E731  (settings may be swapped in tests)

    @r.get("/api/monitoring/models/{model_id:path}/metrics")
    async def metrics(model_id: str, kind: str | None = Query(None, pattern="^(live|shadow)$"),
                      _who: Principal = Depends(ctx.viewer)) -> dict:
        from cluster.monitoring.store import Table

        def read():
            filters = [("model_id", "=", model_id)] + ([("kind", "=", kind)] if kind else [])
            frame = Table(lake(), "monitoring").read(filters)
            if frame.empty:
                raise NotFoundError(f"no monitoring figures for {model_id!r} yet: they come from "
                                    "`python -m jobs.monitor` once its predictions have labels")
            return {"model_id": model_id, "rows": records(frame.sort_values(["kind", "date"]))}
        return await ctx.blocking(read)

    @r.get("/api/monitoring/drift/{model_id:path}")
    async def drift(model_id: str, since: dt.date | None = None,
                    days: int | None = Query(None, ge=1, le=10_000, description=(
                        "only the last N evaluated days (after `since`, if given)")),
                    top: int | None = Query(None, ge=1, le=10_000, description=(
                        "only the N features whose `measure` peaked highest in the window")),
                    measure: str = Query("psi", pattern="^(psi|ks)$",
                                         description="what `top` and the matrix rank by"),
                    feature: list[str] = Query([], max_length=200, description=(
                        "features always included (on demand, beside the top N)")),
                    format: str = Query("rows", pattern="^(rows|matrix)$", description=(
                        "rows: one record per day and feature; matrix: the heat map of "
                        "`measure` (features x dates), the rest summarised per day and "
                        "every feature's ranking")),
                    _who: Principal = Depends(ctx.viewer)) -> dict:
        from cluster.monitoring.driftmap import Window, heatmap, read_window
        window = Window(since, days, top, measure, tuple(dict.fromkeys(feature)))

        def missing():
            return NotFoundError(f"no drift figures for {model_id!r} yet: they come from "
                                 "`python -m jobs.monitor`")

        def read():
            if format == "matrix":
                answer = heatmap(lake(), model_id, window)
                if not answer:
                    raise missing()
                return {"model_id": model_id, **answer}
            frame = read_window(lake(), model_id, window)
            if frame.empty:
                raise missing()
            return {"model_id": model_id, "rows": records(frame)}
        return await ctx.blocking(read)

    @r.get("/api/monitoring/alerts")
    async def alerts(state: str | None = Query(None, pattern="^(raised|resolved)$"),
                     _who: Principal = Depends(ctx.viewer)) -> dict:
        from cluster.monitoring.alerts import AlertsTable

        def read():
            current = AlertsTable(lake()).current()
            if state is not None and not current.empty:
                current = current[current["state"] == state]
            return {"alerts": records(current)}
        return await ctx.blocking(read)

    @r.post("/api/monitoring/alerts")
    async def ack(body: AlertAck, request: Request,
                  who: Principal = Depends(ctx.operator)) -> dict:
        from cluster.monitoring.alerts import AlertsTable

        def write():
            try:
                return AlertsTable(lake()).ack(body.alert_id, who.who, body.message)
            except KeyError as exc:
                raise NotFoundError(str(exc).strip("'\"")) from None
        return await ctx.audited(request, who, lambda: ctx.blocking(write),
                                 keys=("alert_id", "acked_by"))

    @r.get("/api/monitoring/predictions")
    async def per_hour(hours: int = Query(24, ge=1, le=24 * 31),
                       _who: Principal = Depends(ctx.viewer)) -> dict:
        from cluster.lake.predictions import per_hour as read_per_hour
        since = pd.Timestamp.now(tz="UTC").floor("h") - pd.Timedelta(hours=hours - 1)
        frame = await ctx.blocking(read_per_hour, lake(), since)
        return {"since": since.isoformat(), "rows": records(frame)}

    @r.get("/api/experiments")
    async def experiments(_who: Principal = Depends(ctx.viewer)) -> dict:
        from cluster.monitoring.abtest import experiments as list_experiments
        return {"experiments": await ctx.blocking(list_experiments, lake())}

    @r.get("/api/experiments/{experiment_id}")
    async def experiment(experiment_id: str, alpha: float = Query(0.05, gt=0, lt=0.5),
                         _who: Principal = Depends(ctx.viewer)) -> dict:
        from cluster.monitoring.abtest import experiment_analysis, experiments as list_exps

        def read():
            known = {e["rollout_id"] for e in list_exps(lake())}
            if experiment_id not in known:
                raise NotFoundError(f"no experiment {experiment_id!r} with served predictions; "
                                    f"known: {sorted(known)[:20]}")
            return experiment_analysis(lake(), experiment_id, alpha=alpha)
        return await ctx.blocking(read)

    @r.get("/api/served", tags=["monitoring"])
    async def served(date: dt.date, instrument: str | None = None,
                     limit: int = Query(1000, ge=1, le=100_000),
                     _who: Principal = Depends(ctx.viewer)) -> dict:
        from cluster.monitoring.served import served_on
        return await ctx.blocking(served_on, lake(), date, instrument, ctx.registry, limit)

    return r

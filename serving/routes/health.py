"""Health: ``/healthz`` (the process answers) and ``/readyz`` (a version is served).

Without a token ``/readyz`` says only ready or not; with a ``viewer`` token it adds the
revision, versions, split and the control plane's state (which can name error text).
"""
from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from serving.context import ApiContext


class Ready(BaseModel):
    ready: bool
    revision: int | None = None
    versions: list[str] | None = None
    stable: str | None = None
    split: dict[str, float] | None = None
    control_plane: str | None = None
    replica: str | None = None


def router(ctx: ApiContext) -> APIRouter:
    r = APIRouter(tags=["health"])
    runtime, auth = ctx.runtime, ctx.auth

    @r.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    @r.get("/readyz", response_model=Ready,
           responses={503: {"model": Ready, "description": "no version is served yet"}})
    async def readyz(request: Request) -> JSONResponse:
        ready = runtime.ready()
        body = {"ready": ready}
        who = auth.principal(request.headers.get("authorization"))
        if who is not None:         # details only for a caller with a valid token
            snap = runtime.snapshot
            body.update(revision=snap.revision, versions=sorted(snap.versions),
                        stable=snap.stable.model_id if snap.stable else None,
                        split=snap.policy.shares() if snap.policy else {},
                        control_plane=runtime.sync_error or "ok", replica=runtime.replica_id)
        return JSONResponse(body, status_code=200 if ready else 503)

    return r

"""Deployments: deploy a version with a rollout strategy, the live split, promote and
roll back. Mutating calls need ``operator``; the control plane checks the token again
and writes their audit record (``ControlPlane._authorised``)."""
from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from cluster.registry.store import RegistryError
from serving.auth import Principal
from serving.context import ApiContext
from serving.errors import ERROR_RESPONSES


class GatesBody(BaseModel):
    max_error_rate: float | None = Field(None, ge=0, le=1)
    p99_ms: float | None = Field(None, gt=0)
    max_ic_drop: float | None = None
    min_requests: int | None = Field(None, ge=0)
    min_ic_dates: int | None = Field(None, ge=1)


class DeployRequest(BaseModel):
    strategy: Literal["canary", "blue_green", "ab", "shadow"] = "canary"
    weights: list[float] | None = Field(None, min_length=2, max_length=2,
                                        description="[incumbent, new]; ab default 50/50")
    steps: list[float] | None = Field(None, description="canary percentages, default "
                                                        "5, 25, 50, 100")
    window_s: float = Field(30.0, ge=0, description="how long each step is held")
    gates: GatesBody = GatesBody()
    load_timeout_s: float = Field(120.0, gt=0)
    step_timeout_s: float | None = Field(None, gt=0)
    salt: str | None = Field(None, description="experiment id for sticky keys (default: new)")


class ReasonBody(BaseModel):
    reason: str = ""


def _caller(request: Request) -> dict:
    """The caller's token and the route, for the control plane's check and audit record."""
    return {"token": request.headers.get("authorization"),
            "origin": f"{request.method} {request.url.path}"}


def router(ctx: ApiContext) -> APIRouter:
    r = APIRouter(tags=["deployments"], responses=ERROR_RESPONSES)
    runtime, control = ctx.runtime, ctx.runtime.control

    @r.post("/api/models/{model_id:path}/deploy", status_code=202)
    async def deploy(model_id: str, body: DeployRequest, request: Request,
                     who: Principal = Depends(ctx.operator)) -> dict:
        gates = {k: v for k, v in body.gates.model_dump().items() if v is not None}
        # the control plane checks the same token again and writes the audit record:
        # one authorised path for HTTP callers and Ray clients alike
        return await control.call(
            "deploy", model_id, body.strategy, body.weights, body.steps, body.window_s, gates,
            who.who, body.load_timeout_s, body.step_timeout_s, body.salt, **_caller(request))

    @r.get("/api/deployments")
    async def deployments(_who: Principal = Depends(ctx.viewer)) -> dict:
        status = await control.call("status")
        return {"deployments": [status]}

    def _check_name(name: str) -> None:
        if name != runtime.deployment:
            raise RegistryError(f"no deployment {name!r}; this API serves {runtime.deployment!r}")

    @r.post("/api/deployments/{name}/rollback")
    async def rollback(name: str, request: Request, body: ReasonBody = ReasonBody(),
                       who: Principal = Depends(ctx.operator)) -> dict:
        _check_name(name)
        return await control.call("rollback", who.who, body.reason, **_caller(request))

    @r.post("/api/deployments/{name}/promote")
    async def promote(name: str, request: Request, body: ReasonBody = ReasonBody(),
                      who: Principal = Depends(ctx.operator)) -> dict:
        _check_name(name)
        return await control.call("promote", who.who, body.reason, **_caller(request))

    return r

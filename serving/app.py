"""The HTTP API: prediction, deployments, model lifecycle and lineage, health.

``create_app(runtime)`` builds the FastAPI app around one ``ServingRuntime``.
The Serve ingress (``serving.deployment``) builds it on each replica; tests and a
single-process server use it directly (``TestClient(create_app(...))``), so both
run the same routes. OpenAPI docs are at ``/docs`` and ``/openapi.json``.

Roles: ``/predict`` and every GET under ``/api`` need ``viewer``; deploy,
promote and rollback need ``operator`` and are written to the audit log, refused
calls included. ``/healthz``, ``/readyz`` and the docs are open.
"""
from __future__ import annotations

import datetime as dt
import time
from contextlib import asynccontextmanager
from typing import Literal

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, ValidationError, model_validator
from starlette.concurrency import run_in_threadpool

from cluster.errors import MlopsError
from cluster.registry.lifecycle import IllegalTransition
from cluster.registry.store import CompatibilityError, IntegrityError, RegistryError
from serving.auth import BEARER_SCHEME, AuditLog, Authenticator, Principal
from serving.control import DeploymentConflict
from serving.runtime import NotReady, ServingRuntime
from serving.versions import InputError, VersionUnhealthy

VERSION_HEADER = "X-Model-Version"


class PredictRequest(BaseModel):
    """Either ``instruments`` + ``date`` (features read from the lake) or ``rows``."""
    instruments: list[str] | None = Field(None, examples=[["AAPL", "MSFT"]])
    date: dt.date | None = Field(None, examples=["2024-03-28"])
    rows: list[dict[str, float | None]] | None = Field(
        None, description="feature rows, one object per row: {feature: value}")
    key: str | None = Field(None, description="sticky key: the same key always gets the same "
                                              "version for the life of an experiment")
    data_version: int | None = Field(None, description="data version the posted rows came from")

    @model_validator(mode="after")
    def _one_input(self):
        if (self.instruments is None) == (self.rows is None):
            raise ValueError("give either instruments (with date) or rows")
        if self.instruments is not None and self.date is None:
            raise ValueError("instruments need a date (YYYY-MM-DD)")
        if self.rows is not None and not self.rows:
            raise ValueError("rows is empty")
        return self


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


_STATUS = [(NotReady, 503), (InputError, 422), (RegistryError, 404), (DeploymentConflict, 409),
           (IllegalTransition, 409), (IntegrityError, 422), (CompatibilityError, 422),
           (VersionUnhealthy, 422), (MlopsError, 409), (ValueError, 422)]


def _status_of(exc: Exception) -> int:
    # Errors raised inside the control actor arrive as Ray's dual-class copies of
    # the original, so isinstance still sees the original type.
    for kind, status in _STATUS:
        if isinstance(exc, kind):
            return status
    return 500


def _message(exc: Exception) -> str:
    cause = getattr(exc, "cause", None)
    return str(cause if cause is not None else exc).strip()


def create_app(runtime: ServingRuntime) -> FastAPI:
    settings = runtime.settings
    auth = Authenticator.from_settings(settings)
    audit = AuditLog.from_settings(settings)
    viewer = auth.dependency("viewer")
    operator = auth.dependency("operator", audit)

    @asynccontextmanager
    async def lifespan(_app):
        await runtime.start()
        yield
        await runtime.stop()

    app = FastAPI(title="stock-mlops serving", version="1", lifespan=lifespan,
                  description=__doc__)
    app.state.runtime = runtime

    for kind, _ in _STATUS:
        app.add_exception_handler(kind, lambda _r, exc: JSONResponse(
            {"detail": _message(exc)}, status_code=_status_of(exc)))

    async def audited(request: Request, who: Principal, work):
        try:
            result = await work()
        except Exception as exc:
            audit.write(who.who, request.method, request.url.path,
                        f"error: {_status_of(exc)}", _message(exc))
            raise
        audit.write(who.who, request.method, request.url.path, "ok",
                    {k: result.get(k) for k in ("state", "split", "stable", "revision")})
        return result

    # -- prediction --------------------------------------------------------
    # The hot path takes the raw request: FastAPI's parameter and dependency solving
    # cost ~40% of a one-row request here (profiled), so headers, token and body are
    # read directly; the OpenAPI document still describes body and security.
    predict_doc = {"requestBody": {"required": True, "content": {"application/json": {
        "schema": PredictRequest.model_json_schema(ref_template="#/components/schemas/{model}")}}},
        "parameters": [{"name": h, "in": "header", "required": False, "schema": {"type": "string"},
                        "description": "sticky key when the body has none"}
                       for h in ("X-Sticky-Key", "X-Client-Id")],
        "security": [{BEARER_SCHEME: []}]}

    @app.post("/predict", tags=["predict"], openapi_extra=predict_doc,
              responses={200: {"description": f"predictions; the version also in {VERSION_HEADER}"},
                         401: {"description": "no or unknown token"},
                         422: {"description": "inputs do not fit the model"},
                         503: {"description": "no version deployed yet"}})
    async def predict(request: Request) -> JSONResponse:
        headers = request.headers
        auth.check(headers.get("authorization"), "viewer")
        try:
            body = PredictRequest.model_validate_json(await request.body())
        except ValidationError as exc:
            raise RequestValidationError(exc.errors(include_url=False)) from None
        key = body.key or headers.get("x-sticky-key") or headers.get("x-client-id")
        if body.rows is not None:
            answer = runtime.predict_rows(body.rows, key, body.data_version)
            payload = {"version": answer.version, "predictions": answer.predictions}
        else:
            t0 = time.perf_counter()
            if key is None and len(body.instruments) == 1:
                key = body.instruments[0]       # an instrument sticks to its arm
            cs = await run_in_threadpool(runtime.read_inputs, body.instruments, body.date)
            answer = runtime.predict_cross_section(cs, key, t0)
            payload = {"version": answer.version, "predictions": answer.predictions,
                       "instruments": cs.instruments, "date": cs.date,
                       "data_version": answer.data_version,
                       "features_version": cs.features_version}
        payload["request_id"] = answer.request_id
        return JSONResponse(payload, headers={VERSION_HEADER: answer.version})

    # -- deployments -------------------------------------------------------
    control = runtime.control

    @app.post("/api/models/{model_id:path}/deploy", status_code=202, tags=["deployments"])
    async def deploy(model_id: str, body: DeployRequest, request: Request,
                     who: Principal = Depends(operator)) -> dict:
        gates = {k: v for k, v in body.gates.model_dump().items() if v is not None}
        return await audited(request, who, lambda: control.call(
            "deploy", model_id, body.strategy, body.weights, body.steps, body.window_s, gates,
            who.who, body.load_timeout_s, body.step_timeout_s, body.salt))

    @app.get("/api/deployments", tags=["deployments"])
    async def deployments(_who: Principal = Depends(viewer)) -> dict:
        status = await control.call("status")
        return {"deployments": [status]}

    def _check_name(name: str) -> None:
        if name != runtime.deployment:
            raise RegistryError(f"no deployment {name!r}; this API serves {runtime.deployment!r}")

    @app.post("/api/deployments/{name}/rollback", tags=["deployments"])
    async def rollback(name: str, request: Request, body: ReasonBody = ReasonBody(),
                       who: Principal = Depends(operator)) -> dict:
        _check_name(name)
        return await audited(request, who, lambda: control.call("rollback", who.who, body.reason))

    @app.post("/api/deployments/{name}/promote", tags=["deployments"])
    async def promote(name: str, request: Request, body: ReasonBody = ReasonBody(),
                      who: Principal = Depends(operator)) -> dict:
        _check_name(name)
        return await audited(request, who, lambda: control.call("promote", who.who, body.reason))

    # -- models ------------------------------------------------------------
    @app.get("/api/models/{model_id:path}/lifecycle", tags=["models"])
    async def lifecycle(model_id: str, _who: Principal = Depends(viewer)) -> dict:
        def read():
            from serving.versions import split_model_id
            name, version = split_model_id(model_id)
            reg = runtime.registry
            return {"model_id": model_id, "state": reg.state(name, version),
                    "history": [t.to_dict() for t in reg.history(name, version)]}
        return await run_in_threadpool(read)

    @app.get("/api/models/{model_id:path}/lineage", tags=["models"])
    async def lineage(model_id: str, _who: Principal = Depends(viewer)) -> dict:
        from serving.versions import split_model_id
        name, version = split_model_id(model_id)
        return await run_in_threadpool(runtime.registry.lineage, name, version)

    # -- health ------------------------------------------------------------
    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict:
        return {"status": "ok", "replica": runtime.replica_id}

    @app.get("/readyz", tags=["health"])
    async def readyz() -> JSONResponse:
        snap = runtime.snapshot
        body = {"ready": runtime.ready(), "revision": snap.revision,
                "versions": sorted(snap.versions), "stable": snap.stable.model_id
                if snap.stable else None,
                "split": snap.policy.shares() if snap.policy else {},
                "control_plane": runtime.sync_error or "ok"}
        return JSONResponse(body, status_code=200 if body["ready"] else 503)

    from serving.console import mount_console   # the web console's pages, outside /api
    mount_console(app, auth)
    return app

"""The API's error contract: which exception is which status, and one JSON body shape.

A client error is a 4xx whose body names what was wrong: ``{"detail": "..."}`` for
our own refusals (the message names the field or the thing), or FastAPI's list of
``{"loc": [...], "msg": ..., "type": ...}`` for a request that does not validate. A
5xx never answers bad input; an unexpected exception is a 500 with its type only
(the traceback goes to the log, not to the client).
"""
from __future__ import annotations

import logging
import math

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from cluster.errors import LakeError, MlopsError, NotFoundError
from cluster.explain.predictor import NotExplainable
from cluster.registry.lifecycle import IllegalTransition
from cluster.registry.store import CompatibilityError, IntegrityError, RegistryError
from serving.control import DeploymentConflict, Forbidden, Unauthorized
from serving.runtime import NotReady
from serving.versions import InputError, VersionUnhealthy

log = logging.getLogger(__name__)


NotFound = NotFoundError     # the thing a route names does not exist (yet): 404


class TooLarge(MlopsError):
    """The request body is over the configured limit: 413."""


class ValidationItem(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ErrorBody(BaseModel):
    detail: str | list[ValidationItem]


_DESCRIPTIONS = {400: "bad request", 401: "no or unknown bearer token",
                 403: "the token's role may not do this", 404: "not found",
                 409: "conflicts with the current state", 413: "request body too large",
                 422: "the request names a wrong or missing field", 503: "not ready"}
# Documented on every route, so responses conform to the OpenAPI document.
ERROR_RESPONSES = {code: {"model": ErrorBody, "description": text}
                   for code, text in _DESCRIPTIONS.items()}

_STATUS = [(NotReady, 503), (NotFound, 404), (TooLarge, 413), (InputError, 422),
           (RegistryError, 404), (LakeError, 404), (DeploymentConflict, 409),
           (Unauthorized, 401), (Forbidden, 403),
           (IllegalTransition, 409), (IntegrityError, 422), (CompatibilityError, 422),
           (VersionUnhealthy, 422), (NotExplainable, 422), (ValueError, 422), (MlopsError, 409)]


def status_of(exc: Exception) -> int:
    # Errors raised inside the control actor arrive as Ray's dual-class copies of
    # the original, so isinstance still sees the original type.
    if isinstance(exc, HTTPException):
        return exc.status_code
    for kind, status in _STATUS:
        if isinstance(exc, kind):
            return status
    return 500


def message(exc: Exception) -> str:
    if isinstance(exc, HTTPException):
        return str(exc.detail)
    cause = getattr(exc, "cause", None)
    return str(cause if cause is not None else exc).strip()


def validation_items(errors) -> list[dict]:
    """Pydantic's errors as plain JSON: where (``loc``), what (``msg``), and the kind.
    The offending input is not echoed: it may be huge, or a non-finite number that
    JSON cannot carry."""
    out = []
    for err in errors:
        loc = [p if isinstance(p, int) else str(p) for p in err.get("loc", ())]
        msg = str(err.get("msg", "invalid"))
        value = err.get("input")
        if isinstance(value, float) and not math.isfinite(value):
            msg += f" (got {value})"
        out.append({"loc": loc, "msg": msg, "type": str(err.get("type", "value_error"))})
    return out


def install(app: FastAPI) -> None:
    async def ours(_request: Request, exc: Exception) -> JSONResponse:
        status = status_of(exc)
        if status >= 500 and status != 503:
            log.exception("unexpected error", exc_info=exc)
            return JSONResponse({"detail": f"internal error ({type(exc).__name__})"}, status)
        return JSONResponse({"detail": message(exc)}, status_code=status)

    async def invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": validation_items(exc.errors())}, status_code=422)

    for kind, _ in _STATUS:
        app.add_exception_handler(kind, ours)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(Exception, ours)


def _finite(obj):
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


class FiniteJSONResponse(JSONResponse):
    """JSON with NaN and infinities as null (JSON has no such numbers; Starlette would
    raise, a 500): library answers carry NaN where a figure is undefined."""

    def render(self, content) -> bytes:
        try:
            return super().render(content)
        except ValueError:
            return super().render(_finite(content))

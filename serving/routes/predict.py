"""``POST /predict``: the hot path.

It takes the raw request: FastAPI's parameter and dependency solving cost ~40% of a
one-row request here (profiled), so headers, token and body are read directly; the
OpenAPI document still describes body and security. Limits come from settings
(``api.max_body_bytes`` -> 413, ``api.max_rows`` / ``api.max_instruments`` -> 422
naming the field); NaN and infinite feature values are refused naming the row and
feature (pydantic would otherwise read ``1e999`` as inf). The model call runs on the
runtime's predict threads, off the event loop.
"""
from __future__ import annotations

import datetime as dt
import time
from typing import Annotated

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, ValidationError, model_validator

from serving.auth import BEARER_SCHEME
from serving.context import ApiContext
from serving.errors import ERROR_RESPONSES, TooLarge

VERSION_HEADER = "X-Model-Version"
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]


class PredictRequest(BaseModel):
    """Either ``instruments`` + ``date`` (features read from the lake), ``rows``, or
    ``windows`` (sequence models: each instrument's recent rows)."""
    instruments: list[str] | None = Field(None, examples=[["AAPL", "MSFT"]])
    date: dt.date | None = Field(None, examples=["2024-03-28"],
                                 description="with instruments: the date read; with rows or "
                                             "windows (optional): the date they are of, which "
                                             "picks a rolling version's step")
    rows: list[dict[str, FiniteFloat | None]] | None = Field(
        None, description="feature rows, one object per row: {feature: value}; values are "
                          "finite numbers or null (missing)")
    windows: list[list[dict[str, FiniteFloat | None]]] | None = Field(
        None, description="one window per prediction: an instrument's feature rows, oldest "
                          "first, the row predicted last (a sequence model reads its last "
                          "lookback/seq_len rows; shorter windows are padded as in training)")
    key: str | None = Field(None, description="sticky key: the same key always gets the same "
                                              "version for the life of an experiment")
    data_version: int | None = Field(None, description="data version the posted rows came from")

    @model_validator(mode="after")
    def _one_input(self):
        if sum(x is not None for x in (self.instruments, self.rows, self.windows)) != 1:
            raise ValueError("give either instruments (with date), rows or windows")
        if self.instruments is not None and self.date is None:
            raise ValueError("instruments need a date (YYYY-MM-DD)")
        if self.rows is not None and not self.rows:
            raise ValueError("rows is empty")
        if self.windows is not None and (not self.windows or not all(self.windows)):
            raise ValueError("windows is empty or holds an empty window")
        return self


class PredictAnswer(BaseModel):
    version: str
    predictions: list[float]
    request_id: str
    instruments: list[str] | None = None
    date: str | None = None
    data_version: int | None = None
    features_version: int | None = None


def _too_many(field: str, n: int, limit: int) -> RequestValidationError:
    return RequestValidationError([{"loc": ("body", field), "type": "too_long",
                                    "msg": f"{field} has {n} items; at most {limit} "
                                           f"(api.max_{field})"}])


async def _body(request: Request, limit: int) -> bytes:
    length = request.headers.get("content-length")
    if length is not None:
        if not length.isdigit() or int(length) > limit:
            raise TooLarge(f"request body of {length} bytes is over the limit of {limit} "
                           "(api.max_body_bytes)")
        return await request.body()
    chunks, size = [], 0                 # chunked upload: count as it arrives
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"request body is over the limit of {limit} bytes "
                           "(api.max_body_bytes)")
        chunks.append(chunk)
    return b"".join(chunks)


def router(ctx: ApiContext) -> APIRouter:
    r = APIRouter(tags=["predict"])
    runtime, auth, api = ctx.runtime, ctx.auth, ctx.settings.api
    max_body, max_rows, max_instruments = api.max_body_bytes, api.max_rows, api.max_instruments
    doc = {"requestBody": {"required": True, "content": {"application/json": {
        "schema": PredictRequest.model_json_schema(ref_template="#/components/schemas/{model}")}}},
        "parameters": [{"name": h, "in": "header", "required": False, "schema": {"type": "string"},
                        "description": "sticky key when the body has none"}
                       for h in ("X-Sticky-Key", "X-Client-Id")],
        "security": [{BEARER_SCHEME: []}]}

    @r.post("/predict", openapi_extra=doc, response_model=PredictAnswer,
            responses={**ERROR_RESPONSES,
                       200: {"description": f"predictions; the version also in {VERSION_HEADER}"},
                       503: {"description": "no version deployed yet",
                             **{k: v for k, v in ERROR_RESPONSES[503].items()
                                if k != "description"}}})
    async def predict(request: Request) -> JSONResponse:
        headers = request.headers
        auth.check(headers.get("authorization"), "viewer")
        raw = await _body(request, max_body)
        try:
            body = PredictRequest.model_validate_json(raw)
        except ValidationError as exc:
            raise RequestValidationError(
                [dict(e, loc=("body", *e["loc"])) for e in exc.errors(include_url=False)]) \
                from None
        key = body.key or headers.get("x-sticky-key") or headers.get("x-client-id")
        if body.instruments is None:
            field = "rows" if body.rows is not None else "windows"
            given = body.rows if body.rows is not None else body.windows
            n = len(given) if body.rows is not None else sum(len(w) for w in given)
            if n > max_rows:   # a window's rows count against the same limit
                raise RequestValidationError([{"loc": ("body", field), "type": "too_long",
                                               "msg": f"{field} hold {n} rows; at most "
                                                      f"{max_rows} (api.max_rows)"}])
            answer = await runtime.predict_rows_async(body.rows, key, body.data_version,
                                                      body.date, body.windows)
            payload = {"version": answer.version, "predictions": answer.predictions}
        else:
            t0 = time.perf_counter()
            if len(body.instruments) > max_instruments:
                raise _too_many("instruments", len(body.instruments), max_instruments)
            if key is None and len(body.instruments) == 1:
                key = body.instruments[0]       # an instrument sticks to its arm
            answer, cs = await runtime.predict_instruments_async(body.instruments, body.date,
                                                                 key, t0)
            payload = {"version": answer.version, "predictions": answer.predictions,
                       "instruments": cs.instruments, "date": cs.date,
                       "data_version": answer.data_version,
                       "features_version": cs.features_version}
        payload["request_id"] = answer.request_id
        return JSONResponse(payload, headers={VERSION_HEADER: answer.version})

    return r

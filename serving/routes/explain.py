"""Explanations: ``GET /api/explain/{model_id}`` (global, grouped by family; computed
once per version and kept with it) and ``POST /api/explain/{model_id}/local`` (of the
features table's row -- or, for a model that reads windows, its window -- of an
instrument on a date, of a posted row, or of a posted window)."""
from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field, model_validator

from serving.auth import Principal
from serving.context import ApiContext
from serving.errors import ERROR_RESPONSES

FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]


class LocalRequest(BaseModel):
    """Either ``instrument`` + ``date`` (the features table's row, or a sequence model's
    window of the instrument's rows up to the date), ``row`` or ``window``."""
    instrument: str | None = Field(None, examples=["AAPL"])
    date: dt.date | None = Field(None, examples=["2024-03-28"],
                                 description="with instrument: the date read; with row or "
                                             "window (optional): the date it is of, which "
                                             "picks a rolling version's step")
    row: dict[str, FiniteFloat | None] | None = Field(
        None, description="{feature: value}; null is a missing value")
    window: list[dict[str, FiniteFloat | None]] | None = Field(
        None, description="an instrument's feature rows, oldest first, the row predicted "
                          "last (a sequence model reads its last lookback/seq_len rows; a "
                          "shorter window is padded as in training; other models read the "
                          "last row)")

    @model_validator(mode="after")
    def _one_input(self):
        if sum(x is not None for x in (self.row, self.window, self.instrument)) != 1:
            raise ValueError("give either row, window, or instrument with date")
        if self.instrument is not None and self.date is None:
            raise ValueError("instrument needs a date (YYYY-MM-DD)")
        if self.window is not None and not self.window:
            raise ValueError("window holds no rows")
        return self


class LocalExplanation(BaseModel):
    model_id: str
    prediction: float
    base_value: float
    values: dict[str, float]
    groups: dict[str, float]
    method: str
    instrument: str | None = None
    date: str | None = None


class GlobalExplanation(BaseModel):
    model_id: str
    method: str
    rows: int
    base_value: float
    importance: dict[str, float] = Field(description="mean |SHAP| per feature, largest first")
    groups: dict[str, float] = Field(description="per feature family: mean |sum of its "
                                                 "features' SHAP values|")
    rows_from: str
    computed_at: float


def router(ctx: ApiContext) -> APIRouter:
    r = APIRouter(tags=["explain"], responses=ERROR_RESPONSES)

    @r.get("/api/explain/{model_id:path}", response_model=GlobalExplanation)
    async def global_explanation(model_id: str, _who: Principal = Depends(ctx.viewer)):
        return await ctx.blocking(ctx.explanations().global_, model_id)

    @r.post("/api/explain/{model_id:path}/local", response_model=LocalExplanation)
    async def local_explanation(model_id: str, body: LocalRequest,
                                _who: Principal = Depends(ctx.viewer)):
        max_rows = ctx.settings.api.max_rows
        if body.window is not None and len(body.window) > max_rows:
            raise RequestValidationError([{"loc": ("body", "window"), "type": "too_long",
                                           "msg": f"window holds {len(body.window)} rows; "
                                                  f"at most {max_rows} (api.max_rows)"}])
        return await ctx.blocking(ctx.explanations().local, model_id, body.row,
                                  body.instrument, body.date, body.window)

    return r

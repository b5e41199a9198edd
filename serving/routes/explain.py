"""Explanations: ``GET /api/explain/{model_id}`` (global, grouped by family; computed
once per version and kept with it) and ``POST /api/explain/{model_id}/local``."""
from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field, model_validator

from serving.auth import Principal
from serving.context import ApiContext
from serving.errors import ERROR_RESPONSES

FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]


class LocalRequest(BaseModel):
    """Either ``instrument`` + ``date`` (the features table's row) or ``row``."""
    instrument: str | None = Field(None, examples=["AAPL"])
    date: dt.date | None = Field(None, examples=["2024-03-28"])
    row: dict[str, FiniteFloat | None] | None = Field(
        None, description="{feature: value}; null is a missing value")

    @model_validator(mode="after")
    def _one_input(self):
        if (self.row is None) == (self.instrument is None):
            raise ValueError("give either row, or instrument with date")
        if self.instrument is not None and self.date is None:
            raise ValueError("instrument needs a date (YYYY-MM-DD)")
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
        return await ctx.blocking(ctx.explanations().local, model_id, body.row,
                                  body.instrument, body.date)

    return r

"""DataFrames as JSON records: dates ISO, NaN/NaT/inf as null, numpy scalars plain."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd


def _value(v):
    if v is None or v is pd.NaT:
        return None
    if isinstance(v, pd.Timestamp):
        return v.isoformat() if (v.hour or v.minute or v.second or v.tzinfo) else \
            v.date().isoformat()
    if hasattr(v, "isoformat"):
        return v.isoformat()
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def records(frame: pd.DataFrame) -> list[dict]:
    return [{k: _value(v) for k, v in row.items()} for row in frame.to_dict("records")]

"""Yahoo raw bars -> canonical adjusted bars, exactly as Qlib's converter does.

``factor = Adj Close / Close``; open, high, low = raw * factor; close = Adj Close;
volume = Volume / factor; vwap = (High + Low + Close) / 3 * factor.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from cluster.schema import BAR_COLUMNS


def yahoo_to_canonical(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` has numeric Yahoo columns, ``Date`` (parseable) and ``Name``.

    Returns the canonical bars frame (``BAR_COLUMNS``), ``date`` as
    ``datetime64[ns]`` at midnight, one row per input row, same order.
    """
    close = frame["Close"].to_numpy(dtype="float64")
    adj = frame["Adj Close"].to_numpy(dtype="float64")
    factor = adj / close
    out = pd.DataFrame({
        "instrument": frame["Name"].astype("str").array,
        "date": pd.to_datetime(frame["Date"]).to_numpy(dtype="datetime64[ns]"),
        "open": frame["Open"].to_numpy(dtype="float64") * factor,
        "high": frame["High"].to_numpy(dtype="float64") * factor,
        "low": frame["Low"].to_numpy(dtype="float64") * factor,
        "close": adj,
        "volume": frame["Volume"].to_numpy(dtype="float64") / factor,
        "factor": factor,
        "vwap": (frame["High"].to_numpy(dtype="float64") + frame["Low"].to_numpy(dtype="float64")
                 + close) / 3.0 * factor,
    }, index=frame.index)
    return out[BAR_COLUMNS]


def default_vwap(bars: pd.DataFrame) -> np.ndarray:
    """vwap for canonical bars that lack one: (high + low + close) / 3, adjusted."""
    return ((bars["high"] + bars["low"] + bars["close"]) / 3.0).to_numpy(dtype="float64")

"""Hypothesis strategies for valid market data."""
from __future__ import annotations

import numpy as np
import pandas as pd
from hypothesis import strategies as st

from cluster.schema import BAR_COLUMNS

TICKERS = ["AAA", "BB", "CCCC", "D", "EE.X", "FF-B"]
CALENDAR = pd.bdate_range("2019-01-01", periods=40)


@st.composite
def valid_bars(draw, max_instruments: int = 3, max_days: int = 15) -> pd.DataFrame:
    """Canonical bars (adjusted prices): one row per (instrument, date), valid OHLC."""
    names = draw(st.lists(st.sampled_from(TICKERS), min_size=1, max_size=max_instruments,
                          unique=True))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    rows = []
    for name in names:
        n = draw(st.integers(1, max_days))
        start = draw(st.integers(0, len(CALENDAR) - n))
        # random gaps: each instrument keeps a subset of consecutive calendar days
        keep = sorted(set(rng.choice(np.arange(start, start + n), size=n, replace=True)))
        price = float(rng.uniform(1, 500))
        factor = float(draw(st.sampled_from([1.0, 0.5, 0.9517, 1 / 3])))
        for i in keep:
            price *= float(np.exp(rng.normal(0, 0.02)))
            o = price * float(np.exp(rng.normal(0, 0.01)))
            c = price
            h = max(o, c) * (1 + float(rng.uniform(0, 0.02)))
            lo = min(o, c) * (1 - float(rng.uniform(0, 0.02)))
            vol = float(draw(st.sampled_from([0.0, 100.0, 12345.0]))) if rng.random() < 0.1 \
                else float(rng.integers(1, 10**7))
            rows.append({"instrument": name, "date": CALENDAR[i], "open": o, "high": h,
                         "low": lo, "close": c, "volume": vol, "factor": factor,
                         "vwap": (h + lo + c) / 3})
    frame = pd.DataFrame(rows, columns=BAR_COLUMNS)
    frame["date"] = frame["date"].astype("datetime64[ns]")
    return frame.sort_values(["instrument", "date"]).reset_index(drop=True)


def to_yahoo(bars: pd.DataFrame) -> pd.DataFrame:
    """Canonical -> Yahoo columns (raw prices = adjusted / factor)."""
    f = bars["factor"]
    return pd.DataFrame({
        "Date": bars["date"].dt.strftime("%Y-%m-%d"),
        "High": bars["high"] / f, "Low": bars["low"] / f, "Open": bars["open"] / f,
        "Close": bars["close"] / f, "Volume": bars["volume"] * f, "Adj Close": bars["close"],
        "Name": bars["instrument"],
    })

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


def feature_frame(n_instruments: int = 30, n_days: int = 160, n_features: int = 8,
                  seed: int = 0, signal: float = 0.4) -> pd.DataFrame:
    """Features-table-like rows (instrument, date, f0.., LABEL0) with a planted signal
    in f0 and f1, plus NaN and inf as raw Alpha158 has them."""
    rng = np.random.default_rng(seed)
    dates = pd.bdate_range("2019-01-01", periods=n_days)
    idx = pd.MultiIndex.from_product([[f"S{i:03d}" for i in range(n_instruments)], dates],
                                     names=["instrument", "date"])
    x = rng.standard_normal((len(idx), n_features)).astype(np.float32)
    label = signal * x[:, 0] - 0.5 * signal * x[:, 1] + rng.standard_normal(len(idx))
    frame = pd.DataFrame(x, index=idx, columns=[f"f{i}" for i in range(n_features)]).reset_index()
    frame["LABEL0"] = (label * 0.01).astype(np.float32)
    frame.loc[rng.integers(0, len(frame), 20), "f2"] = np.nan
    frame.loc[rng.integers(0, len(frame), 5), "f3"] = np.inf
    frame["feature_set"] = "fs-test"
    frame["data_version"] = 3
    return frame

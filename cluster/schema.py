"""The canonical bars schema every source yields (see DESIGN.md).

Prices are adjusted the way Qlib adjusts them: ``close`` is the adjusted close,
``factor = adj_close / raw_close``, open/high/low are multiplied by ``factor``,
volume is divided by it and ``vwap`` is given or ``(high + low + close) / 3``.
"""
from __future__ import annotations

import pyarrow as pa

KEY = ["instrument", "date"]
PRICE_COLUMNS = ["open", "high", "low", "close"]
VALUE_COLUMNS = ["open", "high", "low", "close", "volume", "factor", "vwap"]
BAR_COLUMNS = KEY + VALUE_COLUMNS

BARS_SCHEMA = pa.schema(
    [("instrument", pa.string()), ("date", pa.date32())]
    + [(c, pa.float64()) for c in VALUE_COLUMNS]
)

# Yahoo Finance export columns (as in ../shared/data): raw prices plus Adj Close.
YAHOO_COLUMNS = ["Date", "High", "Low", "Open", "Close", "Volume", "Adj Close", "Name"]
YAHOO_NUMERIC = ["High", "Low", "Open", "Close", "Volume", "Adj Close"]
YAHOO_PRICES = ["High", "Low", "Open", "Close", "Adj Close"]

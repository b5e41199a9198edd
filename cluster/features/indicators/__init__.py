"""Classic technical indicators per instrument, with exact incremental updates.

SMA, EMA, Bollinger bands (and their width and %b), parabolic SAR, RSI, slow
stochastic, Williams %R, CCI, OBV, A/D and ATR with TA-Lib 0.8's values; rolling
VWAP and historical volatility of our own. One numba kernel computes them all,
for full runs (from no state) and incremental ones (from each instrument's state)
alike, so an update over new rows gives exactly what a full run over the whole
history gives.

* ``spec``: parameters -> columns, definitions (hashed into the feature-set id),
  warm-ups, the layout of a state;
* ``kernel``: the streaming kernel (TA-Lib's arithmetic; TA-Lib is the tests'
  oracle, not a run-time dependency);
* ``state``: ``IndicatorStates``, the states of many instruments as fixed-width
  arrays (one row per instrument), with an Arrow table form;
* ``frames``: bars frames in, indicator frames and states out.
"""
from cluster.features.indicators.frames import (
    compute_indicators,
    compute_indicators_with_state,
    indicator_values,
    update_indicator_values,
    update_indicators,
)
from cluster.features.indicators.spec import (
    STATE_VERSION,
    TAIL_COLUMNS,
    TALIB_VERSION,
    indicator_columns,
    indicator_definitions,
    indicator_lookback,
    indicator_warmup,
    state_fields,
    tail_layout,
)
from cluster.features.indicators.state import IndicatorStates, describe_state

__all__ = [
    "STATE_VERSION",
    "TAIL_COLUMNS",
    "TALIB_VERSION",
    "IndicatorStates",
    "compute_indicators",
    "compute_indicators_with_state",
    "describe_state",
    "indicator_columns",
    "indicator_definitions",
    "indicator_lookback",
    "indicator_values",
    "indicator_warmup",
    "state_fields",
    "tail_layout",
    "update_indicator_values",
    "update_indicators",
]

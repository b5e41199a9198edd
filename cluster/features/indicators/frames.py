"""Bars in, indicator frames and states out: the functions the pipeline calls.

Input is canonical bars (``cluster.schema.BAR_COLUMNS``; read here:
``instrument, date, high, low, close, volume, vwap``): real trading days, no NaN
rows, one or many instruments, each instrument's rows contiguous and sorted by
date. Output keeps the input's rows and index: ``instrument, date`` and one
float64 column per indicator (``indicator_columns(params)``), NaN during each
indicator's warm-up (``indicator_warmup(params)``).

A full run is an update from no state: one pass of the kernel gives the values
and each instrument's state, so a full run and any split into updates do the
very same arithmetic.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from cluster.config import IndicatorParams
from cluster.features.indicators import kernel
from cluster.features.indicators.spec import BAR_INPUTS, Spec, spec as spec_of
from cluster.features.indicators.state import IndicatorStates

try:  # pandas >= 3: cheap frame assembly from ready blocks
    from pandas.api.internals import create_dataframe_from_blocks as _from_blocks
except ImportError:  # pragma: no cover - older pandas
    _from_blocks = None


@dataclass
class _Bars:
    """What the computations need from a bars frame, read once."""
    index: pd.Index
    inst: Any                   # instrument column as a frame block
    date: Any                   # date column as a frame block
    cols: tuple                 # high, low, close, vwap, volume (float64, contiguous)
    dates: np.ndarray           # int64 nanoseconds
    starts: np.ndarray          # row offsets of the instruments' runs (+ the end)
    names: list                 # instrument of each run


def _block(values):
    """A column's values as a frame block (2-D for NumPy dtypes)."""
    return values.reshape(1, -1) if isinstance(values, np.ndarray) else values


def _take(block, rows):
    if rows is None:
        return block
    return block[:, rows] if isinstance(block, np.ndarray) else block.take(rows)


def _floats(values) -> np.ndarray:
    """Contiguous, writeable float64 (so the kernel compiles for one layout only)."""
    arr = np.ascontiguousarray(np.asarray(values, dtype=np.float64))
    return arr if arr.flags.writeable else arr.copy()


def _column_values(bars: pd.DataFrame, names) -> list:
    """Each column's values (ndarray for NumPy dtypes, else the ExtensionArray)."""
    try:  # ~10x cheaper than bars[c] per column, which matters for daily updates
        get, loc = bars._get_column_array, bars.columns.get_loc
        values = [get(loc(c)) for c in names]
    except Exception:  # pragma: no cover - other pandas versions
        values = [bars[c].values for c in names]
    return [np.asarray(v) if isinstance(v, pd.arrays.DatetimeArray) and v.tz is None else v
            for v in values]


def _read_bars(bars: pd.DataFrame) -> _Bars:
    """Validate ``bars`` and split them into instrument runs.

    Refuses missing columns, an instrument split over several runs, and dates that
    do not strictly increase within an instrument.
    """
    missing = [c for c in BAR_INPUTS if c not in bars.columns]
    if missing:
        raise ValueError(f"bars lack column(s) {missing}; need {list(BAR_INPUTS)}")
    inst, date, *floats = _column_values(bars, BAR_INPUTS)
    cols = tuple(_floats(v) for v in (floats[0], floats[1], floats[2], floats[4], floats[3]))
    if isinstance(date, np.ndarray) and date.dtype.kind == "M":
        dates = date
    else:
        when = pd.to_datetime(bars["date"])
        if getattr(when.dtype, "tz", None) is not None:
            when = when.dt.tz_convert(None)
        dates = when.to_numpy(dtype="datetime64[ns]")
    if len(dates) and np.isnat(dates).any():
        raise ValueError("bars: date has missing values")
    dates = dates.astype("datetime64[ns]", copy=False).view("i8")
    n = len(bars)
    # Object compares beat Arrow's per-call overhead on small frames.
    keys = np.asarray(inst, dtype=object) if n < 4096 else inst
    change = np.flatnonzero(np.asarray(keys[1:] != keys[:-1], dtype=bool)) + 1
    starts = np.concatenate(([0], change, [n]) if n else ([0],)).astype(np.int64)
    firsts = keys[starts[:-1]] if isinstance(keys, np.ndarray) else keys.take(starts[:-1])
    names = np.asarray(firsts, dtype=object).tolist()
    if len(set(names)) != len(names):
        raise ValueError("bars: each instrument's rows must be contiguous")
    same = np.ones(max(n - 1, 0), dtype=bool)
    same[change - 1] = False
    if not np.all(dates[1:][same] > dates[:-1][same]):
        raise ValueError("bars: dates must strictly increase within each instrument "
                         "(sorted, no duplicate dates)")
    return _Bars(bars.index, _block(inst), _block(date), cols, dates, starts, names)


def _frame(b: _Bars, out: np.ndarray, s: Spec, rows=None) -> pd.DataFrame:
    """``instrument, date`` (rows ``rows``) next to the indicators ``out`` (one row
    per column, taken over as the frame's float block without a copy)."""
    index = b.index if rows is None else b.index.take(rows)
    inst, date = _take(b.inst, rows), _take(b.date, rows)
    if _from_blocks is not None:
        try:
            return _from_blocks([(inst, np.array([0])), (date, np.array([1])),
                                 (out, np.arange(2, 2 + out.shape[0]))],
                                index=index, columns=s.column_index)
        except Exception:  # pragma: no cover - fall back to the public constructor
            pass
    frame = pd.DataFrame(out.T, index=index, columns=list(s.columns), copy=False)
    frame.insert(0, "date", date[0] if isinstance(date, np.ndarray) else date)
    frame.insert(0, "instrument", inst[0] if isinstance(inst, np.ndarray) else inst)
    return frame


def compute_indicators(bars: pd.DataFrame, params: IndicatorParams | None = None
                       ) -> pd.DataFrame:
    """Indicators for every row of ``bars``: same rows, order and index; columns
    ``instrument, date`` then ``indicator_columns(params)`` (float64)."""
    return update_indicators(None, bars, params)[0]


def compute_indicators_with_state(bars: pd.DataFrame, params: IndicatorParams | None = None
                                  ) -> tuple[pd.DataFrame, IndicatorStates]:
    """``compute_indicators(bars, params)`` and each instrument's state after its
    last row."""
    return update_indicators(None, bars, params)


def update_indicators(states: IndicatorStates | None, new_bars: pd.DataFrame,
                      params: IndicatorParams | None = None
                      ) -> tuple[pd.DataFrame, IndicatorStates]:
    """Indicators for the rows of ``new_bars`` dated after their instrument's state.

    ``states``: from an earlier call with the same params (None: no state); an
    instrument without a state starts from scratch. Rows at or before the state's
    last date are skipped. Returns the frame of the computed rows (``new_bars``
    order and index, columns as ``compute_indicators``) and the states of all
    instruments (those of ``states`` without new rows passed through). Neither
    argument is modified.
    """
    b, out, rows, new_states = _update(states, _read_bars(new_bars), params)
    return _frame(b, out, spec_of(params), rows), new_states


def indicator_values(bars: pd.DataFrame, params: IndicatorParams | None = None
                     ) -> tuple[np.ndarray, IndicatorStates]:
    """``compute_indicators_with_state``'s values alone: one float64 row per
    column of ``indicator_columns(params)``, one column per row of ``bars``."""
    _, out, _, states = _update(None, _read_bars(bars), params)
    return out, states


def update_indicator_values(states: IndicatorStates | None, new_bars: pd.DataFrame,
                            params: IndicatorParams | None = None
                            ) -> tuple[np.ndarray, np.ndarray | None, IndicatorStates]:
    """``update_indicators``'s values alone: (one float64 row per column, one column
    per computed row; the positions of those rows in ``new_bars``, None: all of
    them; the new states)."""
    _, out, rows, new_states = _update(states, _read_bars(new_bars), params)
    return out, rows, new_states


def _update(states: IndicatorStates | None, b: _Bars, params: IndicatorParams | None):
    """(bars, values of the computed rows, their positions in ``b`` (None: all),
    the new states)."""
    s = spec_of(params)
    if states is None:
        states = IndicatorStates.empty(params)
    states.check(params)
    m = len(b.names)
    n0 = np.zeros(m, dtype=np.int64)
    last = np.full(m, np.iinfo(np.int64).min, dtype=np.int64)
    carry = np.zeros((m, len(s.fields)))
    tails = np.zeros((m, s.width))
    known = states.rows(b.names) if len(states) else np.full(m, -1, dtype=np.int64)
    have = np.flatnonzero(known >= 0)
    if len(have):
        rows = known[have]
        n0[have], last[have] = states.n[rows], states.last[rows]
        carry[have], tails[have] = states.carry[rows], states.tail[rows]

    # Keep only the rows after each state's last date.
    cols, dates, starts, rows = b.cols, b.dates, b.starts, None
    names = b.names
    counts = np.diff(starts)
    keep = dates > np.repeat(last, counts)
    if not keep.all():
        rows = np.flatnonzero(keep)
        kept = np.add.reduceat(keep.astype(np.int64), starts[:-1]) if m else counts
        live = np.flatnonzero(kept > 0)
        cols = tuple(c[rows] for c in cols)
        dates = dates[rows]
        counts = kept[live]
        starts = np.concatenate(([0], np.cumsum(counts))).astype(np.int64)
        carry, tails, n0 = carry[live], tails[live], n0[live]
        names = [names[j] for j in live.tolist()]

    out = np.full((len(s.columns), int(starts[-1])), np.nan)
    if not len(names):
        return b, out, rows, states
    new_tails = kernel.run(s, cols, starts, n0, carry, tails, out)
    updated = IndicatorStates(s.fingerprint, names, n0 + counts, dates[starts[1:] - 1],
                              new_tails, carry)
    return b, out, rows, states.merge(updated)

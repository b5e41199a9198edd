"""Feature computation for whole instruments: a full history, or only new days.

Alpha158 runs on each instrument's bars reindexed onto the trading calendar (NaN
rows where it has no bar, as Qlib stores them); the indicators run on its real
bars and land on their calendar rows. ``compute_full`` also returns what the factor cache
keeps; ``compute_append`` continues from that cache and gives, for the rows it
emits, the same values a full recompute would.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

from cluster.features import alpha158, indicators
from cluster.features.featureset import FeatureSet
from cluster.lake import tables
from cluster.schema import VALUE_COLUMNS

KEY = ["instrument", "date"]


def tail_length(horizon: int = alpha158.LABEL_HORIZON) -> int:
    """Rows the cache keeps per instrument: the look-back of the rows it may re-emit
    (the last ``horizon`` rows, whose label the next days complete) plus those rows."""
    return alpha158.LOOKBACK + horizon


@dataclass
class Computed:
    features: pa.Table      # the features table's rows (``fs.schema``)
    tail: pd.DataFrame      # instrument, date, bar columns, indicator columns
    states: indicators.IndicatorStates
    meta: pd.DataFrame      # index instrument: data_version, first_date, last_date, rows


def compute_full(bars: pd.DataFrame, calendar: pd.DatetimeIndex, fs: FeatureSet,
                 data_version: int) -> Computed:
    """Every row of the given whole instruments (``bars`` sorted by instrument, date).

    Works on arrays: Alpha158 on the calendar grid, the indicators on the real bars
    scattered onto their grid rows, the table built from the value arrays
    directly (no frame joins or sorts: the grid is in key order)."""
    bars = bars.sort_values(KEY, kind="stable").reset_index(drop=True)
    grid, at = alpha158.reindex_with_rows(bars, calendar)
    alpha = alpha158.alpha158_values(grid, fs.label_horizon)        # 159 x rows, float32
    values, states = indicators.indicator_values(bars, fs.params)   # 22 x bars, float64
    ind = np.full((len(values), len(grid)), np.nan)
    ind[:, at] = values
    starts, ends = _runs(grid)
    features = _table(grid["instrument"].array, _ns(grid["date"]), alpha, ind, fs,
                      data_version)
    tail = _tail(grid, ind, fs, starts, ends)
    meta = _meta(grid, starts, ends, data_version)
    return Computed(features, tail, states, meta)


def _runs(grid: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Start and end rows of each instrument's run in the (key-ordered) grid."""
    return _run_bounds(pd.factorize(grid["instrument"])[0])


def _table(instrument, dates_ns: np.ndarray, alpha: np.ndarray, ind: np.ndarray,
           fs: FeatureSet, data_version: int) -> pa.Table:
    """The features table's rows from their key and the value arrays (NaN is stored
    as null, as ``tables.to_arrow`` does)."""
    n = len(dates_ns)
    days = dates_ns.view("datetime64[ns]").astype("datetime64[D]")
    arrays = [pa.array(instrument, type=pa.string()), pa.array(days, type=pa.date32())]
    arrays += _with_nulls(alpha, pa.float32()) + _with_nulls(ind, pa.float64())
    arrays += [pa.repeat(pa.scalar(fs.id, pa.string()), n),
               pa.array(np.full(n, data_version, dtype=np.int64))]
    return pa.Table.from_arrays(arrays, schema=fs.schema)


def compute_append(new_bars: pd.DataFrame, tail: pd.DataFrame,
                   states: indicators.IndicatorStates,
                   calendar: pd.DatetimeIndex, fs: FeatureSet, data_version: int,
                   meta: pd.DataFrame) -> Computed:
    """New days of instruments whose cached history is unchanged.

    ``new_bars``: only bars dated after each instrument's cached last date.
    Emits the new rows plus the last ``fs.label_horizon`` cached rows (their label now has
    the closes it needs); reads no bars history: the look-back is ``tail``.

    On arrays: each instrument's series is its cached tail rows, then the calendar
    rows after them up to its last new bar (NaN where it has no bar), the new bars
    and their updated indicators placed by position.
    """
    h = fs.label_horizon
    ind_cols = fs.indicator_columns
    new_bars = new_bars.sort_values(KEY, kind="stable").reset_index(drop=True)
    b_inst = new_bars["instrument"].to_numpy(dtype=object)
    b_ns = _ns(new_bars["date"])
    b_start, b_end = _run_bounds(b_inst)
    names = b_inst[b_start]
    m = len(names)
    # the cached rows of these instruments (the tail is in key order)
    t_inst = tail["instrument"].to_numpy(dtype=object)
    t_start, t_end = _run_bounds(t_inst)
    t_names = t_inst[t_start]
    at = np.searchsorted(t_names, names) if len(t_names) else np.zeros(m, dtype=np.int64)
    at = np.minimum(at, max(len(t_names) - 1, 0))
    if not len(t_names) or (t_names[at] != names).any():
        missing = [n for n in names if n not in set(t_names.tolist())]
        raise KeyError(f"no cached tail for {missing[:10]}")
    o_start, o_n = t_start[at], t_end[at] - t_start[at]
    t_ns = _ns(tail["date"])
    cal = pd.DatetimeIndex(calendar).unique().sort_values().as_unit("ns").asi8
    p_last = np.searchsorted(cal, t_ns[o_start + o_n - 1])     # each one's last cached day
    # the new bars' calendar days (planned: after the cached last day, one per day)
    p_bar = np.searchsorted(cal, b_ns)
    k_bar = np.repeat(np.arange(m), b_end - b_start)
    off_cal = (p_bar >= len(cal)) | (cal[np.minimum(p_bar, len(cal) - 1)] != b_ns)
    bad = np.flatnonzero(off_cal | (p_bar <= p_last[k_bar])
                         | np.r_[False, (p_bar[1:] == p_bar[:-1]) & (k_bar[1:] == k_bar[:-1])])
    if len(bad):
        row = new_bars.iloc[int(bad[0])]
        raise ValueError(f"bar of {row['instrument']} on {row['date']} is not a new calendar "
                         "day after its cached rows")
    n_new = p_bar[b_end - 1] - p_last
    # the series: per instrument, its cached rows then its new calendar rows
    s_len = o_n + n_new
    s_off = np.concatenate(([0], np.cumsum(s_len))).astype(np.int64)
    total = int(s_off[-1])
    k_row = np.repeat(np.arange(m), s_len)
    i_row = np.arange(total, dtype=np.int64) - s_off[k_row]    # row within its series
    cached = i_row < o_n[k_row]
    src = o_start[k_row] + i_row                               # tail row of cached rows
    s_ns = np.where(cached, t_ns[np.where(cached, src, 0)],
                    cal[np.minimum(p_last[k_row] + i_row - o_n[k_row] + 1, len(cal) - 1)])
    target = s_off[k_bar] + o_n[k_bar] + (p_bar - p_last[k_bar] - 1)  # series row of each bar
    old_rows, old_at = src[cached], np.flatnonzero(cached)
    columns = {}
    for col in VALUE_COLUMNS:
        values = np.full(total, np.nan)
        values[old_at] = tail[col].to_numpy(dtype=np.float64)[old_rows]
        values[target] = new_bars[col].to_numpy(dtype=np.float64)
        columns[col] = values
    ind = np.full((len(ind_cols), total), np.nan)
    old_ind = tail[ind_cols].to_numpy(dtype=np.float64)
    ind[:, old_at] = old_ind[old_rows].T
    values, kept, new_states = indicators.update_indicator_values(states.take(names),
                                                                  new_bars, fs.params)
    ind[:, target if kept is None else target[kept]] = values
    s_inst = np.repeat(names, s_len)
    s_dates = s_ns.view("datetime64[ns]")
    series = pd.DataFrame({"instrument": s_inst, "date": s_dates, **columns}, copy=False)
    # emit: the new rows and the label-horizon cached rows before them (whose label the
    # new closes complete); the tail holds the LOOKBACK rows their windows need
    emit = np.minimum(o_n, h) + n_new
    alpha, rows = alpha158.alpha158_tail_values(series, emit, h)
    features = _table(s_inst[rows], s_ns[rows], alpha, ind[:, rows], fs, data_version)
    keep = np.minimum(s_len, tail_length(h))
    last_rows = _last_rows(s_off[1:], keep)
    new_tail = pd.concat([series.take(last_rows).reset_index(drop=True),
                          pd.DataFrame(ind[:, last_rows].T, columns=ind_cols, copy=False)],
                         axis=1)
    new_meta = meta.loc[list(names)].copy()
    new_meta["data_version"] = data_version
    new_meta["last_date"] = b_ns[b_end - 1].view("datetime64[ns]")
    new_meta["rows"] = new_meta["rows"] + n_new
    return Computed(features, new_tail, new_states, new_meta)


def _ns(dates) -> np.ndarray:
    return pd.DatetimeIndex(dates).as_unit("ns").asi8


def _run_bounds(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and end of each run of equal keys."""
    change = np.flatnonzero(keys[1:] != keys[:-1]) + 1
    n = len(keys)
    if not n:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return (np.concatenate(([0], change)).astype(np.int64),
            np.concatenate((change, [n])).astype(np.int64))


def _last_rows(ends: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The last ``lengths[k]`` rows before each ``ends[k]``, in order."""
    offsets = np.concatenate(([0], np.cumsum(lengths)[:-1])).astype(np.int64)
    return np.arange(int(lengths.sum()), dtype=np.int64) + np.repeat(ends - lengths - offsets,
                                                                      lengths)


def _with_nulls(values: np.ndarray, typ: pa.DataType) -> list[pa.Array]:
    """One Arrow array per row of ``values``, NaN as null, over the rows' own memory:
    the validity bitmaps of all rows in one vectorised pass (``pa.array`` with
    ``from_pandas`` costs ~10 ns a value, row by row)."""
    values = np.ascontiguousarray(values)
    valid = ~np.isnan(values)
    nulls = valid.shape[1] - valid.sum(axis=1)
    bitmaps = np.packbits(valid, axis=1, bitorder="little")
    return [pa.Array.from_buffers(typ, values.shape[1], [
        pa.py_buffer(bitmaps[j]) if nulls[j] else None, pa.py_buffer(values[j])],
        null_count=int(nulls[j])) for j in range(len(values))]


def _tail(grid: pd.DataFrame, ind: np.ndarray, fs: FeatureSet, starts: np.ndarray,
          ends: np.ndarray) -> pd.DataFrame:
    """The last ``tail_length()`` grid rows of each instrument, with its indicators."""
    rows = _last_rows(ends, np.minimum(ends - starts, tail_length(fs.label_horizon)))
    out = grid[KEY + VALUE_COLUMNS].take(rows).reset_index(drop=True)
    values = pd.DataFrame(ind[:, rows].T, columns=fs.indicator_columns, copy=False)
    return pd.concat([out, values], axis=1)


def _meta(grid: pd.DataFrame, starts: np.ndarray, ends: np.ndarray,
          data_version: int) -> pd.DataFrame:
    dates = grid["date"].to_numpy(dtype="datetime64[ns]")
    meta = pd.DataFrame({"first_date": dates[starts], "last_date": dates[ends - 1],
                         "rows": (ends - starts).astype(np.int64)},
                        index=pd.Index(grid["instrument"].array.take(starts), name="instrument"))
    meta["data_version"] = np.int64(data_version)
    return meta

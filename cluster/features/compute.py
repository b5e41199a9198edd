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
    features = _table(grid, alpha, ind, fs, data_version)
    tail = _tail(grid, ind, fs, starts, ends)
    meta = _meta(grid, starts, ends, data_version)
    return Computed(features, tail, states, meta)


def _runs(grid: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Start and end rows of each instrument's run in the (key-ordered) grid."""
    codes, _ = pd.factorize(grid["instrument"])
    change = np.flatnonzero(codes[1:] != codes[:-1]) + 1
    n = len(codes)
    return (np.concatenate(([0], change)).astype(np.int64) if n else np.zeros(0, np.int64),
            np.concatenate((change, [n])).astype(np.int64) if n else np.zeros(0, np.int64))


def _table(grid: pd.DataFrame, alpha: np.ndarray, ind: np.ndarray, fs: FeatureSet,
           data_version: int) -> pa.Table:
    """The features table's rows from the grid's key and the value arrays (NaN is
    stored as null, as ``tables.to_arrow`` does)."""
    n = len(grid)
    days = grid["date"].to_numpy(dtype="datetime64[ns]").astype("datetime64[D]")
    arrays = [pa.array(grid["instrument"].array, type=pa.string()),
              pa.array(days, type=pa.date32())]
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
    """
    # a few hundred rows: numpy object strings take/merge faster than Arrow-backed ones
    new_bars = new_bars.astype({"instrument": object}).sort_values(
        KEY, kind="stable").reset_index(drop=True)
    names = list(dict.fromkeys(new_bars["instrument"]))
    old = tail[tail["instrument"].isin(names)].astype({"instrument": object})
    last = old.groupby("instrument")["date"].max()
    ends = new_bars.groupby("instrument")["date"].max()
    # calendar rows after each instrument's cached last date, up to its new last date
    grid_new = alpha158.reindex_to_calendar(
        pd.concat([old.groupby("instrument").tail(1)[["instrument", "date", *VALUE_COLUMNS]],
                   new_bars[["instrument", "date", *VALUE_COLUMNS]]]), calendar)
    grid_new = grid_new[grid_new["date"] > grid_new["instrument"].map(last)]
    # the series carries the indicators too: cached rows have theirs, new calendar
    # rows get the updated ones (NaN where the day has no bar), so the emitted rows
    # and the new tail take them by position instead of joining on the key
    ind_new, new_states = indicators.update_indicators(states.take(names), new_bars,
                                                       fs.params)
    ind_cols = fs.indicator_columns
    grid_new = grid_new.merge(ind_new[KEY + ind_cols], on=KEY, how="left")
    series = pd.concat([old[KEY + VALUE_COLUMNS + ind_cols], grid_new])
    series = series.sort_values(KEY, kind="stable").reset_index(drop=True)
    # emit: the new rows and the label-horizon cached rows before them (whose label the
    # new closes complete); the tail holds the LOOKBACK rows their windows need
    emit = (old.groupby("instrument").size().clip(upper=fs.label_horizon)
            .add(grid_new.groupby("instrument").size(), fill_value=0).astype(int))
    alpha = alpha158.compute_alpha158_tail(series, emit.to_dict(),  # keeps series' index
                                           fs.label_horizon)
    features = _features(pd.concat([alpha, series.loc[alpha.index, ind_cols]], axis=1),
                         fs, data_version)
    new_tail = series.groupby("instrument", sort=False).tail(
        tail_length(fs.label_horizon)).reset_index(
        drop=True)
    added = grid_new.groupby("instrument").size()
    new_meta = meta.loc[names].copy()
    new_meta["data_version"] = data_version
    new_meta["last_date"] = ends.reindex(names).to_numpy()
    new_meta["rows"] = new_meta["rows"] + added.reindex(names).fillna(0).astype(int).to_numpy()
    return Computed(features, new_tail, new_states, new_meta)


def _features(frame: pd.DataFrame, fs: FeatureSet, data_version: int) -> pa.Table:
    """Rows with Alpha158, label and indicator columns -> the features table's rows."""
    out = pd.concat([
        frame[KEY],
        frame[fs.alpha_columns + [fs.label]].astype(np.float32),
        frame[fs.indicator_columns].astype(np.float64),
    ], axis=1)
    out = out.assign(feature_set=fs.id, data_version=np.int64(data_version))
    out = out.sort_values(KEY, kind="stable").reset_index(drop=True)
    return tables.to_arrow(out, fs.schema)


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
    lengths = np.minimum(ends - starts, tail_length(fs.label_horizon))
    offsets = np.concatenate(([0], np.cumsum(lengths)[:-1])).astype(np.int64)
    rows = np.arange(int(lengths.sum()), dtype=np.int64) + np.repeat(ends - lengths - offsets,
                                                                      lengths)
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

"""Feature computation for whole instruments: a full history, or only new days.

Alpha158 runs on each instrument's bars reindexed onto the trading calendar (NaN
rows where it has no bar, as Qlib stores them); the indicators run on its real
bars and are joined back. ``compute_full`` also returns what the factor cache
keeps; ``compute_append`` continues from that cache and gives, for the rows it
emits, the same values a full recompute would.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from cluster.features import alpha158, indicators
from cluster.features.featureset import FeatureSet
from cluster.schema import VALUE_COLUMNS

KEY = ["instrument", "date"]


def tail_length() -> int:
    """Rows the cache keeps per instrument: the look-back of the rows it may re-emit
    (the last LOOKAHEAD rows, whose label the next days complete) plus those rows."""
    return alpha158.LOOKBACK + alpha158.LOOKAHEAD


@dataclass
class Computed:
    features: pd.DataFrame  # instrument, date, feature columns, feature_set, data_version
    tail: pd.DataFrame      # instrument, date, bar columns, indicator columns
    states: indicators.IndicatorStates
    meta: pd.DataFrame      # index instrument: data_version, first_date, last_date, rows


def compute_full(bars: pd.DataFrame, calendar: pd.DatetimeIndex, fs: FeatureSet,
                 data_version: int) -> Computed:
    """Every row of the given whole instruments (``bars`` sorted by instrument, date)."""
    bars = bars.sort_values(KEY, kind="stable").reset_index(drop=True)
    grid = alpha158.reindex_to_calendar(bars, calendar)
    alpha = alpha158.compute_alpha158(grid)
    ind, states = indicators.compute_indicators_with_state(bars, fs.params)
    features = _assemble(alpha, ind, fs, data_version)
    tail = _tail(grid, ind, fs)
    meta = _meta(grid, data_version)
    return Computed(features, tail, states, meta)


def compute_append(new_bars: pd.DataFrame, tail: pd.DataFrame,
                   states: indicators.IndicatorStates,
                   calendar: pd.DatetimeIndex, fs: FeatureSet, data_version: int,
                   meta: pd.DataFrame) -> Computed:
    """New days of instruments whose cached history is unchanged.

    ``new_bars``: only bars dated after each instrument's cached last date.
    Emits the new rows plus the last LOOKAHEAD cached rows (their label now has
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
    # emit: the new rows and the LOOKAHEAD cached rows before them (whose label the
    # new closes complete); the tail holds the LOOKBACK rows their windows need
    emit = (old.groupby("instrument").size().clip(upper=alpha158.LOOKAHEAD)
            .add(grid_new.groupby("instrument").size(), fill_value=0).astype(int))
    alpha = alpha158.compute_alpha158_tail(series, emit.to_dict())  # keeps series' index
    features = _features(pd.concat([alpha, series.loc[alpha.index, ind_cols]], axis=1),
                         fs, data_version)
    new_tail = series.groupby("instrument", sort=False).tail(tail_length()).reset_index(
        drop=True)
    added = grid_new.groupby("instrument").size()
    new_meta = meta.loc[names].copy()
    new_meta["data_version"] = data_version
    new_meta["last_date"] = ends.reindex(names).to_numpy()
    new_meta["rows"] = new_meta["rows"] + added.reindex(names).fillna(0).astype(int).to_numpy()
    return Computed(features, new_tail, new_states, new_meta)


def _assemble(alpha: pd.DataFrame, ind: pd.DataFrame, fs: FeatureSet,
              data_version: int) -> pd.DataFrame:
    return _features(alpha.merge(ind[KEY + fs.indicator_columns], on=KEY, how="left"),
                     fs, data_version)


def _features(frame: pd.DataFrame, fs: FeatureSet, data_version: int) -> pd.DataFrame:
    """Rows with Alpha158, label and indicator columns -> the features table's layout."""
    out = pd.concat([
        frame[KEY],
        frame[fs.alpha_columns + [fs.label]].astype(np.float32),
        frame[fs.indicator_columns].astype(np.float64),
    ], axis=1)
    out = out.assign(feature_set=fs.id, data_version=np.int64(data_version))
    return out.sort_values(KEY, kind="stable").reset_index(drop=True)


def _tail(grid: pd.DataFrame, ind: pd.DataFrame, fs: FeatureSet) -> pd.DataFrame:
    last = grid.groupby("instrument", sort=False).tail(tail_length())
    out = last[KEY + VALUE_COLUMNS].merge(ind[KEY + fs.indicator_columns], on=KEY, how="left")
    return out.sort_values(KEY, kind="stable").reset_index(drop=True)


def _meta(grid: pd.DataFrame, data_version: int) -> pd.DataFrame:
    g = grid.groupby("instrument", sort=True)["date"]
    meta = pd.DataFrame({"first_date": g.min(), "last_date": g.max(), "rows": g.size()})
    meta["data_version"] = np.int64(data_version)
    meta.index.name = "instrument"
    return meta

"""Walk-forward validation folds (expanding window) with a purge gap.

The label of day t reads the closes of the next ``horizon`` trading days, so a
training row on day t "uses" the dates t+1 .. t+horizon. A fold's training
window therefore ends ``horizon`` trading days before its validation window
starts: no training label reaches into validation -- the same rule as
``purge_segments``, which leaves these folds unchanged when the engine applies it.

Tuning never sees the test segment: folds are cut from the dates before the
test segment of ``default_segments`` (themselves purged against it), so model
selection does not read test-period prices either.

    region = tuning_window(dates, horizon)           # train+valid, purged vs test
    folds = walk_forward_folds(region, 3, horizon)   # [{"train": (a, b), "valid": (c, d)}, ...]
"""
from __future__ import annotations

import pandas as pd

from cluster.features.qlib_bridge import default_segments

TRAIN_BLOCKS = 3  # blocks in the first training window; one block per validation window
_FMT = "%Y-%m-%d"


def _calendar(dates) -> pd.DatetimeIndex:
    return pd.DatetimeIndex(sorted(set(pd.to_datetime(list(dates)))))


def tuning_window(dates, horizon: int, segments: dict | None = None) -> pd.DatetimeIndex:
    """Trading days the folds may use: everything before the test segment, less the
    last ``horizon`` days whose labels would read test-period closes."""
    cal = _calendar(dates)
    segments = segments or default_segments(cal)
    if "test" not in segments:
        return cal
    pos = int(cal.searchsorted(pd.Timestamp(segments["test"][0])))
    return cal[:max(pos - horizon, 0)]


def walk_forward_folds(calendar, n_folds: int, horizon: int,
                       train_blocks: int = TRAIN_BLOCKS) -> list[dict[str, tuple[str, str]]]:
    """``n_folds`` expanding folds over ``calendar`` (its trading days, in order).

    The calendar is cut into ``train_blocks + n_folds`` equal blocks (the last
    block takes the remainder). Fold k validates on block ``train_blocks + k``
    and trains on every day before it, less the ``horizon``-day purge gap.
    With one fold this is a 75/25 train/valid split.
    """
    cal = _calendar(calendar)
    if n_folds < 1:
        raise ValueError(f"need at least one fold, got {n_folds}")
    if horizon < 0:
        raise ValueError(f"horizon must be >= 0, got {horizon}")
    size = len(cal) // (train_blocks + n_folds)
    first_valid = train_blocks * size
    if size < 2 or first_valid - horizon < 1:
        raise ValueError(f"{len(cal)} trading days are too few for {n_folds} fold(s) with a "
                         f"{horizon}-day purge gap: each validation window needs >= 2 days and "
                         "the first training window >= 1 day after purging")
    folds = []
    for k in range(n_folds):
        start = first_valid + k * size
        end = len(cal) - 1 if k == n_folds - 1 else start + size - 1
        train_end = start - horizon - 1  # the last train label reads up to day start-1
        folds.append({"train": (cal[0].strftime(_FMT), cal[train_end].strftime(_FMT)),
                      "valid": (cal[start].strftime(_FMT), cal[end].strftime(_FMT))})
    return folds


def label_dates(calendar, day, horizon: int) -> pd.DatetimeIndex:
    """The trading days whose closes the label of ``day`` reads (day+1 .. day+horizon)."""
    cal = _calendar(calendar)
    pos = int(cal.get_loc(pd.Timestamp(day)))
    return cal[pos + 1:pos + 1 + horizon]

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
    trial_folds = selection_folds(region, 3, horizon)  # + the inner early-stopping split

Unbiased selection: a trial is scored on days its early stopping never saw. Each
walk-forward fold is split once more (:func:`inner_split`): the last
``ES_FRACTION`` of its training days become the early-stopping window, the rest
(purged by the horizon) is trained on, and the fold's validation days are only
scored. In the engine's names a trial fold is ``{"train": inner train, "valid":
early stopping, "test": the scored days}``. :func:`rolling_folds` gives the same
three-way folds for ``jobs.tune --rolling STEP``: rolling steps over the tuning
window, scored on each step's next ``STEP`` days.
"""
from __future__ import annotations

import pandas as pd

from cluster.features.qlib_bridge import default_segments

TRAIN_BLOCKS = 3  # blocks in the first training window; one block per validation window
ES_FRACTION = 0.25  # of a fold's training days: the early-stopping window
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


def inner_split(fold: dict, calendar, horizon: int, fraction: float = ES_FRACTION
                ) -> dict[str, tuple[str, str]]:
    """A walk-forward fold -> ``{"train", "valid", "test"}``: the fold's training days
    split into inner train and an early-stopping window (its last ``fraction``, at
    least 2 days), purged by ``horizon``; ``test`` is the fold's validation window."""
    cal = _calendar(calendar)
    lo = int(cal.searchsorted(pd.Timestamp(fold["train"][0])))
    hi = int(cal.searchsorted(pd.Timestamp(fold["train"][1]), side="right")) - 1
    n = hi - lo + 1
    es = max(2, int(round(n * fraction)))
    es_start = hi - es + 1
    train_end = es_start - horizon - 1
    if train_end < lo:
        raise ValueError(f"fold {fold} has too few training days ({n}) for an early-stopping "
                         f"window of {es} days and a {horizon}-day purge")
    return {"train": (cal[lo].strftime(_FMT), cal[train_end].strftime(_FMT)),
            "valid": (cal[es_start].strftime(_FMT), cal[hi].strftime(_FMT)),
            "test": tuple(fold["valid"])}


def selection_folds(calendar, n_folds: int, horizon: int,
                    fraction: float = ES_FRACTION) -> list[dict[str, tuple[str, str]]]:
    """Walk-forward folds, each with its inner early-stopping split (engine names)."""
    return [inner_split(f, calendar, horizon, fraction)
            for f in walk_forward_folds(calendar, n_folds, horizon)]


def rolling_folds(calendar, horizon: int, step: int, window: str = "expanding",
                  train_days: int | None = None) -> list[dict[str, tuple[str, str]]]:
    """Rolling steps inside the tuning window (the protocol of ``jobs.train
    --rolling``): the last fifth of the window is scored, ``step`` days at a time;
    each step early-stops on as many days before it as are scored in all, and
    trains on what lies before (purged by the engine, as in rolling training)."""
    from cluster.training.rolling import rolling_segments
    cal = _calendar(calendar)
    score = max(int(step), len(cal) // 5)
    if len(cal) < 2 * score + 2 + 2 * horizon:
        raise ValueError(f"{len(cal)} trading days are too few to tune rolling steps of {step}")
    t0, v0 = len(cal) - score, len(cal) - 2 * score
    first = {"train": (cal[0], cal[v0 - 1]), "valid": (cal[v0], cal[t0 - 1]),
             "test": (cal[t0], cal[-1])}
    return rolling_segments(cal, first, step, window, train_days, horizon)

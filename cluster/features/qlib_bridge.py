"""Qlib bridge: the features table as a Qlib ``DatasetH``; bars as a provider dir.

``build_dataset`` feeds Qlib's own ``StaticDataLoader`` / ``DataHandlerLP`` with
Qlib's ``DropnaLabel`` and ``CSZScoreNorm`` on the label for learning, so any
Qlib model (``LGBModel``, ``XGBModel``, ``LinearModel``) trains on it as it
would on Qlib's ``Alpha158`` handler.

Segments never leak: the label of day t is ``close[t+2] / close[t+1] - 1``, so
the last ``horizon`` trading days of a segment, whose labels reach into the next
segment, are purged from it.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from cluster.features.label import LABEL_HORIZON, LABEL_NAME  # defaults; callers pass
from cluster.sources.qlib_provider import write_qlib_provider  # settings.qlib.label_horizon
# The real shared data (2015-01-12 .. 2020-01-10): Qlib-style fixed segments.
REAL_DATA_SEGMENTS = {
    "train": ("2015-01-12", "2017-12-29"),
    "valid": ("2018-01-01", "2018-12-31"),
    "test": ("2019-01-01", "2020-01-10"),
}
LEARN_PROCESSORS = [{"class": "DropnaLabel"},
                    {"class": "CSZScoreNorm", "kwargs": {"fields_group": "label"}}]


def default_segments(dates, fractions=(0.6, 0.2, 0.2)) -> dict[str, tuple[str, str]]:
    """The real-data segments when the dates cover them, else 60/20/20 by trading day."""
    cal = pd.DatetimeIndex(sorted(set(pd.to_datetime(dates))))
    if len(cal) < 10:
        raise ValueError(f"need at least 10 trading days to make segments, got {len(cal)}")
    if cal[0] <= pd.Timestamp("2015-01-12") and cal[-1] >= pd.Timestamp("2020-01-10"):
        return dict(REAL_DATA_SEGMENTS)
    n = len(cal)
    a = int(n * fractions[0])
    b = int(n * (fractions[0] + fractions[1]))
    fmt = "%Y-%m-%d"
    return {"train": (cal[0].strftime(fmt), cal[a - 1].strftime(fmt)),
            "valid": (cal[a].strftime(fmt), cal[b - 1].strftime(fmt)),
            "test": (cal[b].strftime(fmt), cal[-1].strftime(fmt))}


def purge_segments(segments: dict[str, tuple], calendar, horizon: int = LABEL_HORIZON
                   ) -> dict[str, tuple[pd.Timestamp, pd.Timestamp]]:
    """End every segment ``horizon`` trading days before the next one starts."""
    cal = pd.DatetimeIndex(sorted(set(pd.to_datetime(calendar))))
    items = sorted(((k, (pd.Timestamp(s), pd.Timestamp(e))) for k, (s, e) in segments.items()),
                   key=lambda kv: kv[1][0])
    out = {}
    for i, (name, (start, end)) in enumerate(items):
        if i + 1 < len(items):
            next_start = items[i + 1][1][0]
            pos = cal.searchsorted(next_start)  # first calendar day of the next segment
            limit = cal[max(pos - horizon - 1, 0)]
            end = min(end, limit)
        if end < start:
            raise ValueError(f"segment {name!r} is empty after purging {horizon} day(s)")
        out[name] = (start, end)
    return out


def to_qlib_frame(features: pd.DataFrame, feature_columns: list[str] | None = None,
                  label: str = LABEL_NAME) -> pd.DataFrame:
    """Features table rows -> Qlib's layout: index (datetime, instrument), columns
    ("feature", name) ... ("label", LABEL0)."""
    if feature_columns is None:
        from cluster.features.alpha158 import ALPHA158_NAMES
        feature_columns = ALPHA158_NAMES
    cols = list(feature_columns)
    frame = features.rename(columns={"date": "datetime"}).set_index(["datetime", "instrument"])
    frame = frame.sort_index()
    parts = {("feature", c): frame[c] for c in cols}
    if label in frame:
        parts[("label", label)] = frame[label]
    out = pd.DataFrame(parts)
    out.columns = pd.MultiIndex.from_tuples(out.columns)
    return out


def build_dataset(features: pd.DataFrame, segments: dict[str, tuple] | None = None,
                  feature_columns: list[str] | None = None, label: str = LABEL_NAME,
                  horizon: int = LABEL_HORIZON, learn_processors: list | None = None,
                  infer_processors: list | None = None):
    """A Qlib ``DatasetH`` over ``features`` with purged segments."""
    from qlib.data.dataset import DatasetH
    from qlib.data.dataset.handler import DataHandlerLP
    from qlib.data.dataset.loader import StaticDataLoader

    segments = segments or default_segments(features["date"])
    purged = purge_segments(segments, features["date"], horizon)
    handler = DataHandlerLP(
        data_loader=StaticDataLoader(config=to_qlib_frame(features, feature_columns, label)),
        learn_processors=LEARN_PROCESSORS if learn_processors is None else learn_processors,
        infer_processors=infer_processors or [])
    return DatasetH(handler, segments=purged)


def export_qlib(bars: pd.DataFrame, directory: Path, calendar=None) -> Path:
    """Bars -> a Qlib provider directory that Qlib's ``D.features`` reads."""
    return write_qlib_provider(bars, Path(directory), calendar)

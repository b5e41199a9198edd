"""Model inputs for "instruments on a date": rows of the features table.

A replica reads a date's whole cross-section once and keeps it (keyed by the
table version), so a stream of per-instrument requests costs one Delta read per
date and table version, not one per request. The table version is looked up at
most every ``ttl_s`` seconds: a features run becomes visible within that time.

Sequence models read a window per instrument: its last ``L`` rows of the features
table up to the date (the instrument's own rows, as training builds windows:
a day without a row is skipped, not padded; an instrument with less history is
NaN-padded at the front). The history of a date is read once per table version
and window length, looking back as far as the longest window needs.
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cluster.features.alpha158 import LABEL_NAME
from cluster.lake.features import FeaturesTable
from cluster.models.torch_windows import last_rows_windows
from serving.versions import InputError, LoadedVersion, ModelInputs


def serving_feature_set(settings) -> str:
    """The feature set served: the features table's, else the configured definitions'."""
    table = FeaturesTable(settings.lake_dir)
    if table.exists():
        fs = table.last_meta().get("feature_set")
        if fs:
            return str(fs)
        head = table.read_arrow(columns=["feature_set"], dedupe=False).column("feature_set")
        if len(head):
            return str(head[0])
    from cluster.features.featureset import feature_set_for
    return feature_set_for(settings).id


@dataclass
class CrossSection:
    """The features of the requested instruments on one date."""
    date: str
    instruments: list[str]
    frame: pd.DataFrame                     # indexed by instrument, in request order
    features_version: int
    reader: "FeatureReader | None" = None   # for the history windows of sequence models

    def matrix(self, features: list[str]) -> np.ndarray:
        missing = [f for f in features if f not in self.frame.columns]
        if missing:
            raise InputError(f"the features table lacks column(s) {missing[:10]}")
        return self.frame[features].to_numpy(dtype=np.float32)

    def inputs_for(self, version: LoadedVersion) -> ModelInputs:
        """The version's inputs: the date's rows, or each instrument's last
        ``version.window`` rows for a sequence model."""
        dates = np.full(len(self.instruments), np.datetime64(self.date, "ns"),
                        dtype="datetime64[ns]")
        if version.window <= 1 or self.reader is None:
            return ModelInputs(self.matrix(version.features)[:, None, :], dates)
        history = self.reader.history(self.features_version, self.date, version.window)
        missing = [f for f in version.features if f not in history.columns]
        if missing:
            raise InputError(f"the features table lacks column(s) {missing[:10]}")
        return ModelInputs(last_rows_windows(history, self.instruments, version.features,
                                             version.window), dates)

    @property
    def data_versions(self) -> list[int | None]:
        if "data_version" not in self.frame:
            return [None] * len(self.frame)
        return [None if v != v else int(v) for v in self.frame["data_version"].tolist()]

    @property
    def realised(self) -> list[float]:
        """Realised returns where the label is already known (NaN otherwise)."""
        if LABEL_NAME not in self.frame:
            return [float("nan")] * len(self.frame)
        return self.frame[LABEL_NAME].astype("float64").tolist()


class FeatureReader:
    def __init__(self, lake_dir: Path, ttl_s: float = 2.0, max_dates: int = 16):
        self.table = FeaturesTable(lake_dir)
        self.ttl_s = ttl_s
        self.max_dates = max_dates
        self._version: int | None = None
        self._checked = 0.0
        self._cache: OrderedDict[tuple[int, str], pd.DataFrame] = OrderedDict()
        self._history: OrderedDict[tuple[int, str, int], pd.DataFrame] = OrderedDict()
        self._first_date: dict[int, pd.Timestamp | None] = {}
        self._lock = threading.Lock()

    def _current_version(self) -> int:
        now = time.monotonic()
        if self._version is None or now - self._checked > self.ttl_s:
            if not self.table.exists():
                raise InputError("no features table yet: run `python -m jobs.features`, or "
                                 "post feature rows instead of instruments")
            self._version, self._checked = self.table.version(), now
        return self._version

    def _day(self, version: int, date: str) -> pd.DataFrame:
        key = (version, date)
        with self._lock:
            frame = self._cache.get(key)
            if frame is not None:
                self._cache.move_to_end(key)
                return frame
        frame = self.table.read(version, start=date, end=date).set_index("instrument")
        with self._lock:
            self._cache[key] = frame
            while len(self._cache) > self.max_dates:
                self._cache.popitem(last=False)
        return frame

    def _table_start(self, version: int) -> pd.Timestamp | None:
        if version not in self._first_date:
            head = self.table.read_arrow(version, columns=[], dedupe=False).column("date")
            self._first_date[version] = pd.Timestamp(min(head.to_pylist())) if len(head) \
                else None
        return self._first_date[version]

    def history(self, version: int, date: str, length: int) -> pd.DataFrame:
        """Rows of every instrument on or before ``date``: at least each instrument's
        last ``length`` rows (all it has when its history is shorter)."""
        key = (version, date, int(length))
        with self._lock:
            frame = self._history.get(key)
            if frame is not None:
                self._history.move_to_end(key)
                return frame
        end = pd.Timestamp(date)
        first = self._table_start(version)
        span = int(length * 1.5) + 10          # calendar days: weekends and holidays
        while True:
            start = end - pd.Timedelta(days=span)
            frame = self.table.read(version, start=start.date(), end=end.date())
            on_day = frame.loc[frame["date"] == end, "instrument"].unique()
            counts = frame["instrument"].value_counts()
            short = [i for i in on_day if counts.get(i, 0) < length]
            if not short or first is None or start <= first:
                break
            span *= 2
        with self._lock:
            self._history[key] = frame
            while len(self._history) > 4:       # a few dates x window lengths
                self._history.popitem(last=False)
        return frame

    def cross_section(self, instruments: list[str], date) -> CrossSection:
        try:
            day = pd.Timestamp(date).date().isoformat()
        except (TypeError, ValueError):
            raise InputError(f"date {date!r} is not YYYY-MM-DD") from None
        version = self._current_version()
        frame = self._day(version, day)
        missing = [i for i in instruments if i not in frame.index]
        if missing:
            raise InputError(f"no features for {missing[:10]} on {day}"
                             + (f" (and {len(missing) - 10} more)" if len(missing) > 10 else ""))
        return CrossSection(day, list(instruments), frame.loc[list(instruments)], version, self)

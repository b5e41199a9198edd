"""The factor cache: per (instrument, feature set), the bars data version its
features were computed from, its date range, the indicators' recursive state,
and the tail of its rows (reindexed bars and indicator values of the last
LOOKBACK + LOOKAHEAD calendar rows), plus the trading calendar.

With it, a run with no new data costs one small file read, and a one-day update
reads no bars history at all: the look-back comes from here.

It is derived data, rebuilt by any full run, so it is one file (not a Delta
table), replaced atomically (write to a temporary name, then rename): a crash
leaves the previous snapshot, and a snapshot whose feature set or data version
does not match what the features table says is ignored (the run recomputes).
"""
from __future__ import annotations

import os
import pickle
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from cluster.features.indicators import IndicatorStates

CACHE_FORMAT = 2  # 2: indicator states as IndicatorStates arrays


@dataclass
class CacheSnapshot:
    feature_set: str
    data_version: int
    meta: pd.DataFrame        # index instrument: data_version, first_date, last_date, rows
    states: IndicatorStates   # indicator states, one row per instrument
    tail: pd.DataFrame        # instrument, date, bar columns, indicator columns
    calendar: pd.DatetimeIndex


class FeatureCache:
    def __init__(self, lake_dir: Path):
        self.path = Path(lake_dir) / "_feature_cache" / "snapshot.pkl"

    def load(self, feature_set: str, features_version: int | None = None
             ) -> CacheSnapshot | None:
        """The snapshot, when it is for ``feature_set`` and was saved after the
        features table reached ``features_version`` (None: don't check)."""
        try:
            with open(self.path, "rb") as f:
                doc = pickle.load(f)
        except FileNotFoundError:
            return None
        except Exception:  # unreadable: recompute rather than trust it
            return None
        if doc.get("format") != CACHE_FORMAT or doc.get("feature_set") != feature_set:
            return None
        if features_version is not None and doc.get("features_version") != features_version:
            return None
        return doc["snapshot"]

    def info(self) -> dict:
        try:
            with open(self.path, "rb") as f:
                doc = pickle.load(f)
        except Exception:
            return {}
        return {k: doc.get(k) for k in ("feature_set", "data_version", "features_version")}

    def save(self, snap: CacheSnapshot, features_version: int | None) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        doc = {"format": CACHE_FORMAT, "feature_set": snap.feature_set,
               "data_version": snap.data_version, "features_version": features_version,
               "snapshot": snap}
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".snapshot-")
        try:
            with os.fdopen(fd, "wb") as f:
                pickle.dump(doc, f, protocol=pickle.HIGHEST_PROTOCOL)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

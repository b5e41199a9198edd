"""The factor cache: per (instrument, feature set), the bars data version its
features were computed from, its date range, the indicators' recursive state,
and the tail of its rows (reindexed bars and indicator values of the last
LOOKBACK + LOOKAHEAD calendar rows), plus the trading calendar.

With it, a run with no new data costs one small file read, and a one-day update
reads no bars history at all: the look-back comes from here.

It is derived data, rebuilt by any full run, so it is one file per feature set
(not a Delta table: one slot each, so computing another feature set never evicts
this one), replaced atomically (write to a temporary name, then rename): a crash
leaves the previous snapshot. A snapshot is used only while the features table
has no commit for its feature set after the version it was saved at
(maintenance commits and other feature sets' commits leave it valid); otherwise
the run recomputes.
"""
from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from cluster.features.indicators import IndicatorStates
from cluster.lake import storage

CACHE_FORMAT = 3  # 2: indicator states as IndicatorStates arrays; 3: one file per feature set


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
        # beside the tables: a folder, or the lake's bucket prefix (cluster.lake.storage)
        self.root = storage.location(lake_dir) / "_feature_cache"

    def path_for(self, feature_set: str) -> Path:
        return self.root / f"{feature_set}.pkl"

    def _doc(self, feature_set: str) -> dict | None:
        try:
            doc = pickle.loads(storage.read_bytes(self.path_for(feature_set)))
        except FileNotFoundError:
            return None
        except Exception:  # unreadable: recompute rather than trust it
            return None
        if doc.get("format") != CACHE_FORMAT or doc.get("feature_set") != feature_set:
            return None
        return doc

    def load(self, feature_set: str, valid=None) -> CacheSnapshot | None:
        """The snapshot of ``feature_set``, when ``valid(features_version)`` (the
        features table has not changed that feature set since it was saved) holds;
        ``valid`` None: don't check."""
        doc = self._doc(feature_set)
        if doc is None:
            return None
        if valid is not None and not valid(doc.get("features_version")):
            return None
        return doc["snapshot"]

    def info(self, feature_set: str) -> dict:
        doc = self._doc(feature_set) or {}
        return {k: doc.get(k) for k in ("feature_set", "data_version", "features_version")}

    def save(self, snap: CacheSnapshot, features_version: int | None) -> None:
        doc = {"format": CACHE_FORMAT, "feature_set": snap.feature_set,
               "data_version": snap.data_version, "features_version": features_version,
               "snapshot": snap}
        storage.write_bytes_atomic(self.path_for(snap.feature_set),
                                   pickle.dumps(doc, protocol=pickle.HIGHEST_PROTOCOL))

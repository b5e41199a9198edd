"""The factor cache: per (instrument, feature set), the bars data version its
features were computed from, its date range, the indicators' recursive state,
and the tail of its rows (reindexed bars and indicator values of the last
LOOKBACK + LOOKAHEAD calendar rows), plus the trading calendar.

With it, a run with no new data costs a log read, and a one-day update reads
no bars history at all: the look-back comes from here. Two small tables, both
overwritten by each run: ``feature_cache`` (one row per instrument; its commit
metadata holds the feature set, data version and calendar) and ``feature_tail``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
from deltalake import write_deltalake

from cluster.lake import tables

META_SCHEMA = pa.schema([
    ("instrument", pa.string()), ("data_version", pa.int64()), ("first_date", pa.date32()),
    ("last_date", pa.date32()), ("rows", pa.int64()), ("indicator_state", pa.string())])


@dataclass
class CacheSnapshot:
    feature_set: str
    data_version: int
    meta: pd.DataFrame        # index instrument: data_version, first_date, last_date, rows
    states: dict[str, dict]   # instrument -> indicator state
    tail: pd.DataFrame        # instrument, date, bar columns, indicator columns
    calendar: pd.DatetimeIndex


class FeatureCache:
    def __init__(self, lake_dir: Path):
        self.meta_path = tables.table_path(lake_dir, "feature_cache")
        self.tail_path = tables.table_path(lake_dir, "feature_tail")

    def info(self) -> dict:
        """The cache's feature set and data version, from the log alone."""
        if not tables.exists(self.meta_path):
            return {}
        history = tables.open_table(self.meta_path).history(1)
        return tables.commit_meta(history[0]) if history else {}

    def load(self, feature_set: str) -> CacheSnapshot | None:
        info = self.info()
        if info.get("feature_set") != feature_set or not tables.exists(self.tail_path):
            return None
        tail_dt = tables.open_table(self.tail_path)
        stamp = tables.commit_meta(tail_dt.history(1)[0])
        if (stamp.get("feature_set"), stamp.get("data_version")) != (
                feature_set, info.get("data_version")):
            return None
        meta = tables.to_frame(tables.open_table(self.meta_path).to_pyarrow_table())
        states = {i: json.loads(s) for i, s in zip(meta["instrument"], meta["indicator_state"])}
        meta = meta.drop(columns="indicator_state").set_index("instrument")
        tail = tables.to_frame(tail_dt.to_pyarrow_table())
        tail = tail.sort_values(["instrument", "date"], kind="stable").reset_index(drop=True)
        calendar = pd.DatetimeIndex(pd.to_datetime(info["calendar"]))
        return CacheSnapshot(feature_set, int(info["data_version"]), meta, states, tail, calendar)

    def save(self, snap: CacheSnapshot) -> None:
        meta = snap.meta.reset_index()
        table = pa.table({
            "instrument": pa.array(meta["instrument"].astype(str).tolist(), pa.string()),
            "data_version": pa.array(meta["data_version"].astype("int64")),
            "first_date": _dates(meta["first_date"]),
            "last_date": _dates(meta["last_date"]),
            "rows": pa.array(meta["rows"].astype("int64")),
            "indicator_state": pa.array([json.dumps(snap.states.get(i, {}))
                                         for i in meta["instrument"]], pa.string()),
        }, schema=META_SCHEMA)
        tail = snap.tail.copy()
        tail_table = pa.Table.from_pandas(tail.assign(date=_dates(tail["date"])),
                                          preserve_index=False)
        # Both commits name the snapshot; load() trusts them only when they agree,
        # so a crash between the two makes the next run recompute, not misread.
        stamp = {"feature_set": snap.feature_set, "data_version": snap.data_version}
        write_deltalake(str(self.tail_path), tail_table, mode="overwrite",
                        schema_mode="overwrite", commit_properties=tables.commit_properties(stamp))
        info = {**stamp, "calendar": [f"{d:%Y-%m-%d}" for d in snap.calendar]}
        write_deltalake(str(self.meta_path), table, mode="overwrite", schema_mode="overwrite",
                        commit_properties=tables.commit_properties(info))


def _dates(values) -> pa.Array:
    days = pd.to_datetime(pd.Series(values)).to_numpy(dtype="datetime64[ns]").astype(
        "datetime64[D]")
    return pa.array(days, pa.date32())

"""The monitoring tables (Delta, append-only, one sorted file per commit):

- ``monitoring``: one row per model version, kind (``live`` = served + batch,
  ``shadow``) and trading day evaluated: realised IC, RankIC, hit rate, top-k
  long-short return, their rolling 20/60-day means, the IC decay against the
  version's test RankIC, the day's drift score and served p99 latency;
- ``drift``: per model version, day and feature: PSI, KS and the verdict;
- ``alerts``: every alert transition (``raised``, ``resolved``, ``acked``), so the
  current state of an alert is its latest row;
- ``ab_daily``: per rollout (experiment), arm and trading day, the served
  prediction rows and their realised RankIC (``cluster/monitoring/abdaily.py``),
  what the A/B statistics read instead of the whole predictions table. A day is
  re-evaluated (a newer row, latest ``evaluated_at`` wins) only if its served rows
  changed.

A run appends only the days it evaluated (or the transitions it made), so a
daily run writes the same few rows on day 250 as on day 1.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow as pa

from cluster.lake import tables

MONITORING_SCHEMA = pa.schema([
    ("model", pa.string()), ("version", pa.string()), ("model_id", pa.string()),
    ("kind", pa.string()), ("date", pa.date32()), ("rows", pa.int64()),
    ("ic", pa.float64()), ("rank_ic", pa.float64()), ("hit_rate", pa.float64()),
    ("ls_return", pa.float64()),
    ("ic_20", pa.float64()), ("rank_ic_20", pa.float64()),
    ("ic_60", pa.float64()), ("rank_ic_60", pa.float64()),
    ("test_rank_ic", pa.float64()), ("ic_decay_20", pa.float64()),
    ("ic_decay_60", pa.float64()),
    ("drift_score", pa.float64()), ("drifting_features", pa.int64()),
    ("requests", pa.int64()), ("p99_ms", pa.float64()),
    ("evaluated_at", pa.timestamp("us", tz="UTC")),
])
DRIFT_SCHEMA = pa.schema([
    ("model_id", pa.string()), ("date", pa.date32()), ("feature", pa.string()),
    ("psi", pa.float64()), ("ks", pa.float64()), ("ks_p", pa.float64()),
    ("n", pa.int64()), ("tail", pa.float64()), ("drifting", pa.bool_()),
    ("psi_day", pa.float64()), ("ks_day", pa.float64()),
])
ALERTS_SCHEMA = pa.schema([
    ("alert_id", pa.string()), ("rule", pa.string()), ("model", pa.string()),
    ("version", pa.string()), ("subject", pa.string()), ("day", pa.date32()),
    ("state", pa.string()), ("value", pa.float64()), ("threshold", pa.float64()),
    ("message", pa.string()), ("action", pa.string()), ("action_result", pa.string()),
    ("actor", pa.string()), ("time", pa.timestamp("us", tz="UTC")),
])
AB_DAILY_SCHEMA = pa.schema([
    ("rollout_id", pa.string()), ("arm", pa.string()), ("date", pa.date32()),
    ("rows", pa.int64()),                 # served prediction rows of the arm that day
    ("keys", pa.int64()),                 # instruments with a realised label
    ("rank_ic", pa.float64()),            # null below abtest.MIN_KEYS keys
    ("evaluated_at", pa.timestamp("us", tz="UTC")),
])
SORT = {"monitoring": ["model_id", "kind", "date"], "drift": ["model_id", "date", "feature"],
        "alerts": ["time", "alert_id"], "ab_daily": ["rollout_id", "date", "arm"]}
SCHEMAS = {"monitoring": MONITORING_SCHEMA, "drift": DRIFT_SCHEMA, "alerts": ALERTS_SCHEMA,
           "ab_daily": AB_DAILY_SCHEMA}


class Table:
    """One of the monitoring tables under ``lake_dir``."""

    def __init__(self, lake_dir: Path, name: str):
        self.name = name
        self.schema = SCHEMAS[name]
        self.path = tables.table_path(lake_dir, name)

    def exists(self) -> bool:
        return tables.exists(self.path)

    def append(self, frame: pd.DataFrame, meta: dict | None = None) -> int | None:
        """One commit of ``frame``'s rows, sorted (one data file); returns the version."""
        if frame.empty and meta is None:
            return None
        frame = frame.sort_values(SORT[self.name], kind="stable") if len(frame) else frame
        for field in self.schema:
            if field.name not in frame:
                frame = frame.assign(**{field.name: None})
        table = to_arrow(frame, self.schema)
        tables.write(self.path, table, mode="append",
                     commit_properties=tables.commit_properties(meta or {}),
                     **({} if self.exists() else {"configuration": tables.TABLE_CONFIG}))
        return tables.open_table(self.path).version()

    def read(self, filters: list | None = None, columns: list[str] | None = None
             ) -> pd.DataFrame:
        if not self.exists():
            empty = self.schema.empty_table()
            return to_frame(empty.select(columns) if columns else empty)
        dt = tables.open_table(self.path)
        return to_frame(pa.table(dt.to_pyarrow_table(columns=columns, filters=filters or None)))

    def last_meta(self) -> dict:
        """The metadata of the newest commit that carried ours. Maintenance's commits
        (``kind: maintenance``: compaction, properties) carry their own and are passed
        over: the watermark of the last run must survive a maintenance pass."""
        if not self.exists():
            return {}
        for entry in tables.open_table(self.path).history(20):
            meta = tables.commit_meta(entry)
            if meta and meta.get("kind") != "maintenance":
                return meta
        return {}


def to_frame(table: pa.Table) -> pd.DataFrame:
    """Arrow -> pandas: dates as datetime64[ns], timestamps kept in UTC."""
    frame = table.to_pandas(date_as_object=False)
    for name, typ in zip(table.schema.names, table.schema.types):
        if pa.types.is_date(typ):
            frame[name] = frame[name].astype("datetime64[ns]")
    return frame


def to_arrow(frame: pd.DataFrame, schema: pa.Schema) -> pa.Table:
    data = {}
    for field in schema:
        col = frame[field.name]
        if pa.types.is_date32(field.type):
            vals = pd.to_datetime(col).to_numpy(dtype="datetime64[ns]").astype("datetime64[D]")
            arr = pa.array(vals, type=pa.date32(), mask=pd.isna(col).to_numpy())
        elif pa.types.is_timestamp(field.type):
            arr = pa.array(pd.to_datetime(col, utc=True), type=field.type)
        else:
            arr = pa.array(col.astype(object).where(pd.notna(col), None).tolist(),
                           type=field.type)
        data[field.name] = arr
    return pa.table(data, schema=schema)


def dumps(obj) -> str:
    return json.dumps(obj, default=str)

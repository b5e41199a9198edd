"""The ``predictions`` table's schema and readers: served, shadow and batch predictions.

One row per predicted instrument (or posted row). Serving's sink
(``serving/predictions.py``) and batch scoring (``jobs.predict``) both append in
this schema; monitoring reads it. Columns:

- ``time``, ``request_id``, ``key`` (the sticky key), ``instrument``, ``date``;
- ``version``: the model version whose output this is (the one that answered);
- ``arm``: the version the traffic policy chose for the request; it differs from
  ``version`` when the chosen arm failed and the stable version answered;
- ``data_version`` (bars) and ``features_version`` (features table) of the inputs;
- ``rollout_id`` and ``revision``: the rollout (experiment) and the control plane's
  revision of the policy that routed the request (null for batch rows);
- ``output``, ``latency_ms``; ``shadow`` (recorded, never returned) and ``source``
  (``served`` | ``shadow`` | ``batch``).

The last five columns were added later: they are nullable, old files lack them and
read as nulls (``source`` is then derived from ``shadow``).
"""
from __future__ import annotations

from datetime import date as Date
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from cluster.lake import tables

TABLE = "predictions"
SOURCES = ("served", "shadow", "batch")

SCHEMA = pa.schema([
    ("time", pa.timestamp("us", tz="UTC")),
    ("request_id", pa.string()),
    ("key", pa.string()),
    ("version", pa.string()),
    ("instrument", pa.string()),
    ("date", pa.date32()),
    ("data_version", pa.int64()),
    ("output", pa.float64()),
    ("latency_ms", pa.float64()),
    ("shadow", pa.bool_()),
    # added for monitoring (nullable: files written before them lack them)
    ("features_version", pa.int64()),
    ("arm", pa.string()),
    ("rollout_id", pa.string()),
    ("revision", pa.int64()),
    ("source", pa.string()),
])
NEW_COLUMNS = ("features_version", "arm", "rollout_id", "revision", "source")
# A buffered row: the SCHEMA fields in order, time as epoch seconds, date as ISO text.
Row = tuple
_DATE = SCHEMA.get_field_index("date")


def rows_table(rows: list[Row]) -> pa.Table:
    """Buffered rows -> an Arrow table in SCHEMA (one array per column)."""
    cols = list(zip(*rows)) if rows else [[] for _ in SCHEMA]
    # rows of the first ten columns only (older producers): the new columns are null
    cols += [[None] * len(rows)] * (len(SCHEMA) - len(cols))
    times = pa.array([int(t * 1_000_000) for t in cols[0]], pa.int64()).cast(SCHEMA[0].type)
    dates = pa.array([Date.fromisoformat(d) if d else None for d in cols[_DATE]], pa.date32())
    arrays = [times] + [dates if i == _DATE else pa.array(cols[i], SCHEMA[i].type)
                        for i in range(1, len(SCHEMA))]
    return pa.Table.from_arrays(arrays, schema=SCHEMA)


def path(lake_dir: Path) -> Path:
    return tables.table_path(lake_dir, TABLE)


def needs_schema_merge(dt) -> bool:
    """True when an existing table predates the monitoring columns (the first append
    then adds them; later appends are plain)."""
    names = {f.name for f in dt.schema().fields}
    return any(c not in names for c in NEW_COLUMNS)


def conform(table: pa.Table) -> pa.Table:
    """Any stored version of the table -> SCHEMA (missing columns as nulls, ``source``
    derived from ``shadow`` where it is null)."""
    for field in SCHEMA:
        if field.name not in table.column_names:
            table = table.append_column(field, pa.nulls(len(table), field.type))
    table = table.select(SCHEMA.names)
    src = table.column("source")
    if src.null_count:
        derived = pc.if_else(pc.fill_null(table.column("shadow"), False), "shadow", "served")
        table = table.set_column(SCHEMA.get_field_index("source"), "source",
                                 pc.coalesce(src, derived))
    return table.cast(SCHEMA)


def read_arrow(lake_dir: Path, start=None, end=None, version: int | None = None,
               columns: list[str] | None = None) -> pa.Table:
    """Predictions with ``date`` in [start, end] (whole table without bounds); files
    are pruned on their date statistics."""
    p = path(lake_dir)
    if not tables.exists(p):
        out = SCHEMA.empty_table()
        return out.select(columns) if columns else out
    dt = tables.open_table(p, version)
    filters = []
    if start is not None:
        filters.append(("date", ">=", pd.Timestamp(start).date()))
    if end is not None:
        filters.append(("date", "<=", pd.Timestamp(end).date()))
    stored = {f.name for f in dt.schema().fields}
    want = None
    if columns:
        want = [c for c in dict.fromkeys([*columns, "shadow"]) if c in stored]
    table = pa.table(dt.to_pyarrow_table(columns=want, filters=filters or None))
    table = conform(table)
    return table.select(columns) if columns else table


def read_predictions(lake_dir: Path, start=None, end=None, columns=None) -> pd.DataFrame:
    """The predictions table as a DataFrame (empty when nothing was written yet)."""
    return read_arrow(lake_dir, start, end, columns=columns).to_pandas(date_as_object=False)


def batch_rows(frame: pd.DataFrame, version: str, output: np.ndarray, run_id: str,
               now: float) -> pa.Table:
    """Batch scoring's rows (``source='batch'``) for ``frame``'s (instrument, date,
    data_version, features_version)."""
    n = len(frame)
    dates = frame["date"].to_numpy(dtype="datetime64[ns]").astype("datetime64[D]")

    def ints(col):
        if col not in frame:
            return pa.nulls(n, pa.int64())
        return pa.array(frame[col].to_numpy(dtype="float64"), pa.float64(),
                        from_pandas=True).cast(pa.int64())
    arrays = {
        "time": pa.array(np.full(n, int(now * 1_000_000), dtype=np.int64)).cast(SCHEMA[0].type),
        "request_id": pa.array([run_id] * n, pa.string()),
        "key": pa.nulls(n, pa.string()),
        "version": pa.array([version] * n, pa.string()),
        "instrument": pa.array(frame["instrument"].astype(str).to_numpy(), pa.string()),
        "date": pa.array(dates, pa.date32()),
        "data_version": ints("data_version"),
        "output": pa.array(np.asarray(output, dtype=np.float64)),
        "latency_ms": pa.nulls(n, pa.float64()),
        "shadow": pa.array(np.zeros(n, dtype=bool)),
        "features_version": ints("features_version"),
        "arm": pa.array([version] * n, pa.string()),
        "rollout_id": pa.nulls(n, pa.string()),
        "revision": pa.nulls(n, pa.int64()),
        "source": pa.array(["batch"] * n, pa.string()),
    }
    return pa.table(arrays, schema=SCHEMA)


def append(lake_dir: Path, table: pa.Table, dt=None):
    """Append ``table`` (SCHEMA) in one commit, through the open table ``dt`` when
    given; returns the table handle to keep. A table that predates the monitoring
    columns gets them (nullable) with this append; old files read them as nulls."""
    p = path(lake_dir)
    if dt is None and tables.exists(p):
        dt = tables.delta_table(p)
    if dt is None:
        tables.write(p, table, mode="append", configuration=tables.TABLE_CONFIG)
        return tables.delta_table(p)
    merge = needs_schema_merge(dt)
    tables.write(dt, table, mode="append", **({"schema_mode": "merge"} if merge else {}))
    return dt


def table_version(lake_dir: Path) -> int | None:
    p = path(lake_dir)
    return tables.open_table(p).version() if tables.exists(p) else None


def first_date_added_since(lake_dir: Path, version: int | None):
    """The earliest ``date`` of the data files added after ``version`` (from the log's
    file statistics, no data read); None when nothing was added."""
    p = path(lake_dir)
    if not tables.exists(p):
        return None
    dt = tables.open_table(p)
    if version is not None and dt.version() <= version:
        return None
    now = tables.add_actions(dt)
    if version is not None:
        old = set(tables.add_actions(tables.open_table(p, version)).column("path").to_pylist())
        keep = pa.array([x not in old for x in now.column("path").to_pylist()])
        now = now.filter(keep)
    if now.num_rows == 0 or "min.date" not in now.column_names:
        return None
    return pc.min(now.column("min.date")).as_py()


def per_hour(lake_dir: Path, since, until=None) -> pd.DataFrame:
    """Predictions made per hour from ``since`` (a timestamp, UTC): columns ``hour``
    (UTC, the hour's start), ``version``, ``source`` and ``count`` (rows). Only
    ``time, version, source`` are read, with a filter on ``time``: files are appended
    in time order, so Delta skips every file older than ``since`` on its statistics
    and the cost stays that of the window, whatever the table's age."""
    p = path(lake_dir)
    if not tables.exists(p):
        return count_per_hour(SCHEMA.empty_table())
    filters = [("time", ">=", _utc(since))] + ([("time", "<", _utc(until))] if until else [])
    dt = tables.open_table(p)
    stored = {f.name for f in dt.schema().fields}
    cols = [c for c in ("time", "version", "source", "shadow") if c in stored]
    return count_per_hour(conform(pa.table(dt.to_pyarrow_table(columns=cols, filters=filters))))


def _utc(ts):
    ts = pd.Timestamp(ts)
    return (ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")).to_pydatetime()


def count_per_hour(table: pa.Table) -> pd.DataFrame:
    """Rows of a predictions table (``time, version, source``) counted per hour."""
    if table.num_rows == 0:
        return pd.DataFrame({"hour": pd.Series(dtype="datetime64[us, UTC]"),
                             "version": pd.Series(dtype=object),
                             "source": pd.Series(dtype=object), "count": pd.Series(dtype="int64")})
    hours = pc.floor_temporal(table.column("time"), unit="hour")
    grouped = pa.table({"hour": hours, "version": table.column("version"),
                        "source": table.column("source")}) \
        .group_by(["hour", "version", "source"]).aggregate([("hour", "count")])
    out = grouped.select(["hour", "version", "source", "hour_count"]) \
        .rename_columns(["hour", "version", "source", "count"]).to_pandas()
    return out.sort_values(["hour", "version", "source"], ignore_index=True)

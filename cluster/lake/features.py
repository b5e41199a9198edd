"""The ``features`` table: append-only, newest computation of a row wins.

A full run overwrites the table (one commit): its workers write the data files
in parallel and the driver commits the list of them. An incremental run appends only
the rows it computed: new dates, and rows whose values changed (restated bars;
the last two rows of an instrument, whose label needs the next two closes).
Each row carries the bars ``data_version`` it was computed from; readers keep,
for every (instrument, date), the row with the highest one. Appending instead of
merging keeps a one-day update a small write, whatever the table's size.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from deltalake import ColumnProperties, Schema, WriterProperties, write_deltalake
from deltalake.transaction import AddAction, create_table_with_add_actions

from cluster.lake import tables


# ~180 float columns of distinct values: dictionary encoding them is wasted work (it
# made the full write 5x slower, measured); the two repeated string columns keep
# their dictionaries. LZ4 (raw): the full table (241 stocks x 5 years) writes in
# 0.65 s against ZSTD's 1.1-1.3 s and reads in half the time, for files 16% larger
# (208 MB vs 179 MB), measured; the features are rewritten at every full run.
DICTIONARY_COLUMNS = ("instrument", "feature_set")
WRITER = WriterProperties(
    compression="LZ4_RAW",
    default_column_properties=ColumnProperties(dictionary_enabled=False),
    column_properties={c: ColumnProperties(dictionary_enabled=True)
                       for c in DICTIONARY_COLUMNS})
PARQUET_COMPRESSION = "lz4"  # pyarrow's name for LZ4_RAW
# Columns whose min/max go into a data file's log entry: what readers prune on.
STATS_COLUMNS = ("instrument", "date")


class FeaturesTable:
    def __init__(self, lake_dir: Path):
        self.path = tables.table_path(lake_dir, "features")

    def exists(self) -> bool:
        return tables.exists(self.path)

    def version(self) -> int | None:
        return tables.open_table(self.path).version() if self.exists() else None

    def last_meta(self) -> dict:
        if not self.exists():
            return {}
        history = tables.open_table(self.path).history(1)
        return tables.commit_meta(history[0]) if history else {}

    # -- writing -----------------------------------------------------------
    def write_file(self, table: pa.Table, name: str) -> dict:
        """Write ``table`` as one data file under the table's folder, not committed:
        readers see it only once :meth:`commit_files` lists it. Many workers call
        this in parallel (the lake is on storage they all see); the returned add
        action is small, so only it travels back to the committing driver."""
        self.path.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, self.path / name, compression=PARQUET_COMPRESSION,
                       use_dictionary=[c for c in DICTIONARY_COLUMNS if c in table.column_names])
        return {"path": name, "size": (self.path / name).stat().st_size,
                "modification_time": int(time.time() * 1000),
                "stats": json.dumps(_file_stats(table))}

    def commit_files(self, files: list[dict], schema: pa.Schema, meta: dict,
                     mode: str = "overwrite") -> int:
        """One commit adding the data files :meth:`write_file` wrote (``overwrite``:
        they replace every current file); returns the new version."""
        actions = [AddAction(f["path"], f["size"], {}, f["modification_time"], True,
                             f["stats"]) for f in files]
        props = tables.commit_properties(meta)
        if self.exists():
            tables.open_table(self.path).create_write_transaction(
                actions, mode=mode, schema=schema, commit_properties=props)
        else:
            create_table_with_add_actions(str(self.path), Schema.from_arrow(schema), actions,
                                          mode="error", commit_properties=props)
        return self.version()

    def discard_files(self, prefix: str) -> int:
        """Remove uncommitted data files named ``prefix*`` (a failed run's): the
        log never listed them, so no version loses anything."""
        listed = {p for p in tables.add_actions(tables.open_table(self.path))
                  .column("path").to_pylist()} if self.exists() else set()
        removed = 0
        for path in self.path.glob(f"{prefix}*"):
            if path.name not in listed:
                path.unlink(missing_ok=True)
                removed += 1
        return removed

    def append(self, table: pa.Table, meta: dict) -> int:
        """Append rows (one commit); returns the new version. Written through the
        opened table, which then knows its new version without reading the log again."""
        target = tables.open_table(self.path) if self.exists() else None
        write_deltalake(target if target is not None else str(self.path), table,
                        mode="append", writer_properties=WRITER,
                        commit_properties=tables.commit_properties(meta))
        return target.version() if target is not None else self.version()

    # -- reading -----------------------------------------------------------
    def read(self, version: int | None = None, instruments: list[str] | None = None,
             start=None, end=None, columns: list[str] | None = None,
             dedupe: bool = True) -> pd.DataFrame:
        """Features as of a version, one row per (instrument, date), sorted."""
        table = self.read_arrow(version, instruments, start, end, columns, dedupe)
        return tables.to_frame(table)

    def read_arrow(self, version=None, instruments=None, start=None, end=None, columns=None,
                   dedupe: bool = True) -> pa.Table:
        dt = tables.open_table(self.path, version)
        files = self._files(dt, instruments, start, end)
        schema = pa.schema(dt.schema().to_arrow()) if hasattr(dt.schema(), "to_arrow") else None
        want = None
        if columns is not None:
            want = list(dict.fromkeys(["instrument", "date", *columns, "data_version"]))
        if not files:
            empty = pa.table({f.name: pa.array([], f.type) for f in schema}) if schema else \
                pa.table({})
            return empty.select(want) if want and schema else empty
        dataset = ds.dataset(files, format="parquet", schema=schema)
        expr = None
        if instruments is not None:
            expr = ds.field("instrument").isin(list(instruments))
        if start is not None:
            e = ds.field("date") >= pa.scalar(pd.Timestamp(start).date(), pa.date32())
            expr = e if expr is None else expr & e
        if end is not None:
            e = ds.field("date") <= pa.scalar(pd.Timestamp(end).date(), pa.date32())
            expr = e if expr is None else expr & e
        table = dataset.to_table(columns=want, filter=expr)
        sort = [("instrument", "ascending"), ("date", "ascending"),
                ("data_version", "ascending")]
        table = table.sort_by(sort)
        if dedupe and table.num_rows:
            table = _keep_last_per_key(table)
        if columns is not None:
            table = table.select(list(dict.fromkeys(["instrument", "date", *columns])))
        return table

    def _files(self, dt, instruments, start, end) -> list[str]:
        """Data files that may hold the wanted rows, pruned with the log's min/max stats."""
        actions = tables.add_actions(dt)
        if actions.num_rows == 0:
            return []
        keep = pa.array([True] * actions.num_rows)
        if instruments is not None and "min.instrument" in actions.column_names:
            lo, hi = min(instruments), max(instruments)
            keep = pc.and_(keep, pc.and_(
                pc.fill_null(pc.less_equal(actions["min.instrument"], hi), True),
                pc.fill_null(pc.greater_equal(actions["max.instrument"], lo), True)))
        if start is not None and "max.date" in actions.column_names:
            s = pa.scalar(pd.Timestamp(start).date(), pa.date32())
            keep = pc.and_(keep, pc.fill_null(pc.greater_equal(actions["max.date"], s), True))
        if end is not None and "min.date" in actions.column_names:
            e = pa.scalar(pd.Timestamp(end).date(), pa.date32())
            keep = pc.and_(keep, pc.fill_null(pc.less_equal(actions["min.date"], e), True))
        root = str(self.path)
        return [f"{root}/{p}" for p in actions.filter(keep).column("path").to_pylist()]


def _file_stats(table: pa.Table) -> dict:
    """Delta file statistics: row count, and min/max/null count of STATS_COLUMNS."""
    stats = {"numRecords": table.num_rows, "minValues": {}, "maxValues": {}, "nullCount": {}}
    for name in STATS_COLUMNS:
        if name not in table.column_names or not table.num_rows:
            continue
        column = table.column(name)
        bounds = pc.min_max(column)
        lo, hi = bounds["min"].as_py(), bounds["max"].as_py()
        if lo is not None:
            stats["minValues"][name], stats["maxValues"][name] = str(lo), str(hi)
        stats["nullCount"][name] = column.null_count
    return stats


def _keep_last_per_key(table: pa.Table) -> pa.Table:
    """``table`` sorted by (instrument, date, data_version): keep each key's last row."""
    inst, date = table.column("instrument"), table.column("date")
    n = table.num_rows
    if n < 2:
        return table
    same_next = pc.and_(pc.equal(inst.slice(0, n - 1), inst.slice(1)),
                        pc.equal(date.slice(0, n - 1), date.slice(1)))
    if not pc.any(same_next).as_py():
        return table
    keep = pa.concat_arrays([pc.invert(same_next).combine_chunks(), pa.array([True])])
    return table.filter(keep)

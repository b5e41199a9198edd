"""The ``features`` table: append-only, newest computation of a row wins.

A full run overwrites the table (one commit). An incremental run appends only
the rows it computed: new dates, and rows whose values changed (restated bars;
the last two rows of an instrument, whose label needs the next two closes).
Each row carries the bars ``data_version`` it was computed from; readers keep,
for every (instrument, date), the row with the highest one. Appending instead of
merging keeps a one-day update a small write, whatever the table's size.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
from deltalake import ColumnProperties, WriterProperties, write_deltalake

from cluster.lake import tables


# ~180 float columns of distinct values: dictionary encoding them is wasted work (it
# made the full write 5x slower, measured); ZSTD compresses floats better than snappy
# at about the same speed. The two repeated string columns keep their dictionaries.
WRITER = WriterProperties(
    compression="ZSTD",
    default_column_properties=ColumnProperties(dictionary_enabled=False),
    column_properties={c: ColumnProperties(dictionary_enabled=True)
                       for c in ("instrument", "feature_set")})


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
    def overwrite(self, batches: Iterable[pa.RecordBatch], schema: pa.Schema, meta: dict) -> int:
        """Replace the whole table with streamed batches (one commit); returns the version."""
        reader = pa.RecordBatchReader.from_batches(schema, iter(batches))
        write_deltalake(str(self.path), reader, mode="overwrite", schema_mode="overwrite",
                        writer_properties=WRITER,
                        commit_properties=tables.commit_properties(meta))
        return self.version()

    def append(self, table: pa.Table, meta: dict) -> int:
        write_deltalake(str(self.path), table, mode="append", writer_properties=WRITER,
                        commit_properties=tables.commit_properties(meta))
        return self.version()

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

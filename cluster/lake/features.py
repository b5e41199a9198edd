"""The ``features`` table: append-only, newest computation of a row wins.

The table holds one or more feature sets; every read names the one it wants
(default: the one computed last). A full run replaces its own feature set's rows
(one commit): its workers write the data files in parallel and the driver
commits the list of them, removing that feature set's previous files. An
incremental run appends only the rows it computed: new dates, and rows whose
values changed (restated bars; the last rows of an instrument, whose label needs
the next closes). Each row carries the bars ``data_version`` it was computed
from; readers keep, for every (feature_set, instrument, date), the row with the
highest one, and ``jobs.maintain`` rewrites the table keeping only those rows.
Appending instead of merging keeps a one-day update a small write.

Every feature commit carries a Delta application transaction
``features:<feature set>``: two runs of the same feature set that commit at once
conflict (the second is refused and re-plans), so they never both append the
same rows; maintenance and other feature sets' commits do not conflict with them.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
from deltalake import DeltaTable

from cluster.errors import LakeError
from cluster.lake import storage, tables
from cluster.lake.registry import spec_for


# ~180 float columns of distinct values: dictionary encoding them is wasted work (it
# made the full write 5x slower, measured); the two repeated string columns keep
# their dictionaries. LZ4 (raw): the full table (241 stocks x 5 years) writes in
# 0.65 s against ZSTD's 1.1-1.3 s and reads in half the time, for files 16% larger
# (208 MB vs 179 MB), measured; the features are rewritten at every full run.
# (registry.py's features spec says the same for maintenance's rewrites.)
DICTIONARY_COLUMNS = ("instrument", "feature_set")
PARQUET_COMPRESSION = "lz4"  # pyarrow's name for LZ4_RAW
# Columns whose min/max go into a data file's log entry: what readers prune on.
STATS_COLUMNS = ("feature_set", "instrument", "date", "data_version")
MAINTENANCE_KINDS = ("maintenance", "migration")


def app_id(feature_set: str) -> str:
    return f"features:{feature_set}"


class FeaturesTable:
    def __init__(self, lake_dir: Path):
        self.path = tables.table_path(lake_dir, "features")
        self.spec = spec_for("features")

    def exists(self) -> bool:
        return tables.exists(self.path)

    def version(self) -> int | None:
        return tables.open_table(self.path).version() if self.exists() else None

    def open(self) -> DeltaTable | None:
        try:
            return tables.open_table(self.path)
        except LakeError:
            return None

    def last_meta(self, feature_set: str | None = None, before: int | None = None) -> dict:
        """Metadata of the newest feature commit (of ``feature_set`` when given) at or
        before version ``before``; maintenance commits are skipped."""
        if not self.exists():
            return {}
        version = self.version() if before is None else before
        for v in range(version, -1, -1):
            meta = tables.commit_meta_at(self.path, v)
            if meta.get("kind") not in MAINTENANCE_KINDS and meta.get("feature_set") \
                    and feature_set in (None, meta.get("feature_set")):
                return meta
            if not meta and not tables.commit_entry_exists(self.path, v):
                break  # the log before here was cleaned up
        return {}

    def feature_sets(self) -> list[str]:
        """Feature sets with rows in the latest version (from the log's statistics)."""
        if not self.exists():
            return []
        actions = tables.add_actions(self.open())
        if "min.feature_set" not in actions.column_names:
            return []
        names = set(actions["min.feature_set"].to_pylist()) | set(
            actions["max.feature_set"].to_pylist())
        return sorted(names - {None})

    def unchanged_since(self, version: int, feature_set: str,
                        latest: int | None = None) -> bool:
        """True when no commit after ``version`` (up to ``latest``, default the
        newest) changed ``feature_set``'s rows: every later commit is maintenance (no
        data change) or another feature set's."""
        latest = self.version() if latest is None else latest
        if latest is None or version > latest:
            return False
        for v in range(version + 1, latest + 1):
            meta = tables.commit_meta_at(self.path, v)
            if meta.get("kind") in MAINTENANCE_KINDS:
                continue
            if meta.get("feature_set") and meta.get("feature_set") != feature_set:
                continue
            return False
        return True

    # -- writing -----------------------------------------------------------
    def write_file(self, table: pa.Table, name: str) -> dict:
        """Write ``table`` as one data file under the table's folder, not committed:
        readers see it only once :meth:`commit_files` lists it. Many workers call
        this in parallel (the lake is on storage they all see); the returned add
        action is small, so only it travels back to the committing driver."""
        return tables.write_data_file(
            self.path, table, name, row_group_rows=self.spec.row_group_rows,
            stats_columns=STATS_COLUMNS, compression=PARQUET_COMPRESSION,
            dictionary=[c for c in DICTIONARY_COLUMNS if c in table.column_names],
            # ~180 float columns nobody prunes on: their min/max cost ~14% of the write
            row_group_stats=list(STATS_COLUMNS), sorted_by=self.spec.cluster_by)

    def commit_files(self, files: list[dict], schema: pa.Schema, meta: dict,
                     replace: bool = False, base: DeltaTable | None = None) -> int:
        """One commit adding the data files :meth:`write_file` wrote; ``replace``:
        they replace every row of ``meta["feature_set"]`` (a full run). ``base``: the
        table as the run planned on (default: now). Raises ``tables.WriteConflict``
        when another run of the same feature set committed first."""
        fs = meta["feature_set"]
        if base is None and self.exists():
            base = self.open()
        removes, extra = ([], [])
        if replace and base is not None:
            removes, extra = self._without_feature_set(base, fs)
        try:
            return tables.commit_files(self.path, base, files + extra, schema, meta,
                                       removes=removes,
                                       app=(app_id(fs), int(meta.get("data_version") or 0)))
        except BaseException:
            tables.discard_files(self.path, extra)
            raise

    def _without_feature_set(self, dt: DeltaTable, fs: str) -> tuple[list, list[dict]]:
        """Remove actions for every file holding rows of ``fs``; a file that also holds
        other feature sets is rewritten with those only (returned as new files)."""
        actions = tables.add_actions(dt)
        if actions.num_rows == 0:
            return [], []
        paths = actions.column("path").to_pylist()
        lo = actions["min.feature_set"].to_pylist() if "min.feature_set" in \
            actions.column_names else [None] * len(paths)
        hi = actions["max.feature_set"].to_pylist() if "max.feature_set" in \
            actions.column_names else [None] * len(paths)
        gone, kept_rows = [], []
        for path, a, b in zip(paths, lo, hi):
            if a is not None and b is not None and not (a <= fs <= b):
                continue
            if a == b == fs:
                gone.append(path)
                continue
            # no feature_set min/max in the log (a table made before its spec named
            # log_stats_columns, until jobs.maintain sets them), or a file that mixes
            # feature sets: its one (dictionary-encoded) column first, the whole file
            # only when it mixes them
            dataset = storage.dataset(f"{self.path}/{path}", format="parquet")
            sets = pc.unique(dataset.to_table(columns=["feature_set"]).column(
                "feature_set")).to_pylist()
            if fs not in sets:
                continue
            gone.append(path)
            if sets != [fs]:
                table = dataset.to_table()
                others = table.filter(pc.not_equal(table.column("feature_set"), fs))
                kept_rows.append(self.write_file(others, tables.data_file_name("part-kept")))
        return tables.remove_actions(dt, gone, data_change=True), kept_rows

    def discard_files(self, prefix: str) -> int:
        """Remove uncommitted data files named ``prefix*`` (a failed run's): the
        log never listed them, so no version loses anything."""
        listed = {p for p in tables.add_actions(tables.open_table(self.path))
                  .column("path").to_pylist()} if self.exists() else set()
        removed = 0
        for name in storage.listdir(self.path):
            if name.startswith(prefix) and name not in listed:
                storage.delete(self.path / name)
                removed += 1
        return removed

    def append(self, table: pa.Table, meta: dict, base: DeltaTable | None = None) -> int:
        """Append rows (one commit, sorted as the table is clustered); returns the new
        version. Raises ``tables.WriteConflict`` as :meth:`commit_files` does."""
        order = [(c, "ascending") for c in self.spec.cluster_by if c in table.column_names]
        files = [self.write_file(table.sort_by(order), tables.data_file_name())]
        try:
            return self.commit_files(files, table.schema, meta, base=base)
        except BaseException:
            tables.discard_files(self.path, files)
            raise

    # -- reading -----------------------------------------------------------
    def read(self, version: int | None = None, instruments: list[str] | None = None,
             start=None, end=None, columns: list[str] | None = None,
             dedupe: bool = True, feature_set: str | None = None) -> pd.DataFrame:
        """Features of ``feature_set`` (default: the one computed last) as of a
        version, one row per (instrument, date), sorted."""
        table = self.read_arrow(version, instruments, start, end, columns, dedupe, feature_set)
        return tables.to_frame(table)

    def read_arrow(self, version=None, instruments=None, start=None, end=None, columns=None,
                   dedupe: bool = True, feature_set: str | None = None) -> pa.Table:
        dt = tables.open_table(self.path, version)
        if feature_set is None:
            feature_set = self.last_meta(before=dt.version()).get("feature_set")
        files = self._files(dt, instruments, start, end, feature_set)
        schema = pa.schema(dt.schema().to_arrow()) if hasattr(dt.schema(), "to_arrow") else None
        want = None
        if columns is not None:
            want = list(dict.fromkeys(["instrument", "date", *columns, "data_version"]))
        if not files:
            empty = pa.table({f.name: pa.array([], f.type) for f in schema}) if schema else \
                pa.table({})
            return empty.select(want) if want and schema else empty
        dataset = storage.dataset(files, format="parquet", schema=schema)
        expr = tables.row_filter(instruments, start, end, feature_set=feature_set)
        table = dataset.to_table(columns=want, filter=expr)
        sort = [("instrument", "ascending"), ("date", "ascending"),
                ("data_version", "ascending")]
        table = table.sort_by(sort)
        if dedupe and table.num_rows:
            table = _keep_last_per_key(table)
        if columns is not None:
            table = table.select(list(dict.fromkeys(["instrument", "date", *columns])))
        return table

    def _files(self, dt, instruments, start, end, feature_set=None) -> list[str]:
        """Data files that may hold the wanted rows, pruned with the log's min/max stats."""
        ranges = []
        if feature_set is not None:
            ranges.append(("feature_set", feature_set, feature_set))
        if instruments is not None:
            ranges.append(("instrument", min(instruments), max(instruments)))
        day = (lambda v: None if v is None else pa.scalar(pd.Timestamp(v).date(), pa.date32()))
        if start is not None or end is not None:
            ranges.append(("date", day(start), day(end)))
        return tables.prune(dt, ranges)


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

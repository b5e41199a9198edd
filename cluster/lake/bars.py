"""The ``bars`` table: one Delta commit per ingest, one data version per commit.

Layout (see ``registry.py``): not partitioned. Each ingest commits its new rows
as few data files sorted by (instrument, date), with row groups of
``row_group_rows`` rows, and every row carries the ``data_version`` that last
wrote it. Readers prune files on the log's min/max statistics and row groups on
the files' own, so one instrument is a few row groups, and "what changed after
version k" is the rows with ``data_version > k`` in the files whose statistics
reach past k: after maintenance that is only the files committed since.

Every commit (ingest or maintenance) carries its own summary as commit metadata
(source, date range, rows, status) and the catalog of its version: the instrument
list and the trading calendar, compressed. Listing versions, instruments and the
calendar therefore reads only the Delta log, never the data files.

Commits are made at exactly the version after the one the ingest read (see
``tables.commit_files``): two ingests of overlapping keys at once cannot both
add the same (instrument, date); the loser re-reads and tries again.
"""
from __future__ import annotations

import base64
import json
import logging
import random
import time
import zlib
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
from deltalake import DeltaTable

from cluster.errors import LakeError
from cluster.lake import layout, storage, tables
from cluster.lake.registry import spec_for
from cluster.schema import BAR_COLUMNS, BARS_SCHEMA, KEY, VALUE_COLUMNS

log = logging.getLogger(__name__)

VERSION_COLUMN = "data_version"
STORED_SCHEMA = BARS_SCHEMA.append(pa.field(VERSION_COLUMN, pa.int64()))
COMMIT_ATTEMPTS = 50
SMALL_FILE_ROW_GROUP = 1_024
_EMPTY_STATS = {"rows": 0, "instruments": 0, "start": None, "end": None}


@dataclass
class CommitResult:
    data_version: int
    created: bool
    rows_added: int
    rows_restated: int
    summary: dict
    instruments_changed: list[str]
    start: pd.Timestamp | None  # range of the dates added or restated
    end: pd.Timestamp | None


@dataclass
class Catalog:
    """The instruments and trading calendar of one version."""
    instruments: list[str]
    calendar: pd.DatetimeIndex

    def encode(self) -> dict:
        days = self.calendar.to_numpy(dtype="datetime64[D]").astype(np.int64)
        steps = np.diff(days, prepend=0)
        return {"instruments": _pack("\n".join(self.instruments)),
                "calendar": _pack(",".join(map(str, steps.tolist())))}

    @classmethod
    def decode(cls, doc: dict) -> "Catalog":
        names = _unpack(doc["instruments"])
        steps = _unpack(doc["calendar"])
        days = np.cumsum(np.array(steps.split(","), dtype=np.int64)) if steps else \
            np.array([], dtype=np.int64)
        return cls(names.split("\n") if names else [],
                   pd.DatetimeIndex(days.astype("datetime64[D]").astype("datetime64[ns]")))

    def union(self, instruments, dates) -> "Catalog":
        return Catalog(sorted(set(self.instruments) | set(instruments)),
                       self.calendar.union(pd.DatetimeIndex(dates)))


def _pack(text: str) -> str:
    return base64.b64encode(zlib.compress(text.encode(), 9)).decode()


def _unpack(blob: str) -> str:
    return zlib.decompress(base64.b64decode(blob)).decode()


class BarsTable:
    def __init__(self, lake_dir: Path):
        self.path = tables.table_path(lake_dir, "bars")
        self.spec = spec_for("bars")
        self._pinned: DeltaTable | None = None
        self._pinned_meta: dict | None = None

    def pinned(self, version: int | None = None) -> "BarsTable":
        """A read-only view of this table as of ``version`` (latest when None), whose
        log is read once: every read through it that asks for that version (or for
        none) reuses the snapshot instead of opening the table again."""
        view = BarsTable(self.path.parent)
        view._pinned = self._open(version)
        return view

    def _open(self, version: "int | DeltaTable | None" = None) -> DeltaTable:
        if isinstance(version, DeltaTable):  # already opened by the caller
            return version
        if self._pinned is not None and version in (None, self._pinned.version()):
            return self._pinned
        dt = tables.open_table(self.path, version)
        if version is None:
            layout.check("bars", dt)
        return dt

    def exists(self) -> bool:
        return self._pinned is not None or tables.exists(self.path)

    def version(self) -> int | None:
        """The table's latest Delta version (maintenance commits included)."""
        return self._open().version() if self.exists() else None

    def resolve(self, data_version: int, latest: int | None = None) -> int:
        """The Delta version to read data version ``data_version`` at: the newest one
        holding exactly its data (the maintenance commits after a data version change
        no data, and after them its rows are in compacted files). This is the lake's
        version map: data versions keep their numbers through maintenance."""
        latest = self.version() if latest is None else latest
        if latest is None or data_version < 0 or data_version > latest:
            raise LakeError(f"bars has no data version {data_version}"
                            + (f" (versions 0..{latest})" if latest is not None else ""))
        v = data_version
        if not tables.commit_entry_exists(self.path, v):  # log cleaned: start at its oldest
            v = max(v, tables.earliest_version(self.path))
        meta = data_meta(self.path, v)
        if int(meta.get("data_version", v)) != data_version or (
                meta.get("kind") in MAINTENANCE_KINDS and "data_version" not in meta):
            raise LakeError(f"bars data version {data_version} is no longer readable: no "
                            "protected version holds it (vacuumed)")
        while v < latest and tables.commit_meta_at(self.path, v + 1).get("kind") \
                in MAINTENANCE_KINDS:
            v += 1
        return v

    def data_version(self, version: int | None = None) -> int | None:
        """The data version a table version holds: its own number for an ingest,
        the version it preserves for a maintenance commit."""
        if not self.exists():
            return None
        dt = self._open(version)
        meta = self._meta(dt)
        return int(meta.get("data_version", dt.version()))

    # -- reading -----------------------------------------------------------
    def read(self, version: int | None = None, instruments: list[str] | None = None,
             start=None, end=None, columns: list[str] | None = None) -> pd.DataFrame:
        """Bars as of data version ``version`` (latest when None), sorted by
        instrument, date."""
        if instruments is not None and not instruments:
            return pd.DataFrame(columns=columns or BAR_COLUMNS)
        at = None
        if version is not None:
            head = self._open()
            at = self.resolve(version, head.version())
            if at == head.version():
                at = None if self._pinned is not None else head
        table = self.read_arrow(at, instruments, start, end, columns)
        order = [(c, "ascending") for c in ("instrument", "date") if c in table.column_names]
        # sorted in Arrow (stable): a pandas sort cost more than the read of a few rows
        return tables.to_frame(table.sort_by(order) if order else table)

    def read_arrow(self, version=None, instruments=None, start=None, end=None,
                   columns=None, after: int | None = None) -> pa.Table:
        dt = self._open(version)
        want = list(columns) if columns is not None else list(BAR_COLUMNS)
        if dt.metadata().partition_columns:  # an old-layout version (before --migrate)
            return self._read_partitioned(dt, instruments, start, end, want)
        files = self._files(dt, instruments, start, end, after)
        if not files:
            return STORED_SCHEMA.empty_table().select(want)
        expr = tables.row_filter(None, start, end)
        if after is not None:
            e = ds.field(VERSION_COLUMN) > after
            expr = e if expr is None else expr & e
        if instruments is not None:  # few row groups of each file hold them
            return tables.read_instruments(files, STORED_SCHEMA, want, instruments, expr)
        return storage.dataset(files, format="parquet", schema=STORED_SCHEMA).to_table(
            columns=want, filter=expr)

    def _read_partitioned(self, dt, instruments, start, end, want) -> pa.Table:
        filters = []
        if instruments is not None:
            filters.append(("instrument", "in", list(instruments)))
        if start is not None:
            filters.append(("date", ">=", pd.Timestamp(start).date()))
        if end is not None:
            filters.append(("date", "<=", pd.Timestamp(end).date()))
        names = [c for c in want if c in tables.schema_names(dt)]
        return pa.table(dt.to_pyarrow_table(columns=names, filters=filters or None))

    def _files(self, dt, instruments=None, start=None, end=None, after=None) -> list[str]:
        """Data files that may hold the wanted rows, pruned on the log's min/max."""
        ranges = []
        if instruments is not None:
            ranges.append(("instrument", min(instruments), max(instruments)))
        if start is not None or end is not None:
            ranges.append(("date", _day(start), _day(end)))
        if after is not None:
            ranges.append((VERSION_COLUMN, ">", int(after)))
        return tables.prune(dt, ranges)

    def files_for(self, instruments: list[str], version: int | None = None) -> list[str]:
        """The data files that may hold any of ``instruments`` (a feature block's)."""
        return self._files(self._open(version), instruments)

    def changes(self, after: int, upto: int | None = None) -> pd.DataFrame:
        """Rows added or restated by data versions ``after+1 .. upto``, as of ``upto``
        (latest when None): the bar columns and ``version`` (the data version that
        last wrote the row). Reads only files whose statistics reach past ``after``."""
        table = self.read_arrow(upto, columns=BAR_COLUMNS + [VERSION_COLUMN], after=after)
        # sorted and renamed in Arrow: pandas' sort and rename cost more than the read
        table = table.sort_by([(c, "ascending") for c in KEY])
        return tables.to_frame(table.rename_columns(
            ["version" if c == VERSION_COLUMN else c for c in table.column_names]))

    def catalog(self, version: int | None = None) -> Catalog:
        """Instruments and trading calendar of a version, from its commit metadata
        (a scan of the two columns only for commits of other writers)."""
        if not self.exists():
            return Catalog([], pd.DatetimeIndex([], dtype="datetime64[ns]"))
        dt = self._open(version)
        meta = self._meta(dt)
        if "catalog" in meta:
            return Catalog.decode(meta["catalog"])
        log.warning("bars version %d has no catalog in its commit (another writer's); "
                    "scanning its instrument and date columns", dt.version())
        table = self.read_arrow(dt.version(), columns=["instrument", "date"])
        names = pc.unique(table.column("instrument")).to_pylist()
        days = pc.unique(table.column("date")).to_numpy(zero_copy_only=False)
        return Catalog(sorted(names), pd.DatetimeIndex(np.sort(days.astype("datetime64[ns]"))))

    def calendar(self, version: int | None = None) -> pd.DatetimeIndex:
        """Every date that has a bar in a version, sorted: the trading calendar."""
        return self.catalog(version).calendar

    def instruments(self, version: int | None = None) -> list[str]:
        return self.catalog(version).instruments

    def stats(self, version: int | None = None) -> dict:
        """Rows, instruments and date range of a version, from its commit metadata."""
        if not self.exists():
            return dict(_EMPTY_STATS)
        meta = self._meta(self._open(version))
        if "rows" in meta:
            return {k: meta.get(k) for k in ("rows", "instruments", "start", "end")}
        actions = tables.add_actions(self._open(version))
        if actions.num_rows == 0:
            return dict(_EMPTY_STATS)
        return {"rows": int(pc.sum(actions["num_records"]).as_py()),
                "instruments": len(self.instruments(version)),
                "start": str(pc.min(actions["min.date"]).as_py()),
                "end": str(pc.max(actions["max.date"]).as_py())}

    def _meta(self, dt: DeltaTable) -> dict:
        """The summary and catalog of ``dt``'s version: from its commit's metadata, or,
        for a maintenance commit that carries none (vacuum's), from the commits before
        it ({} when a commit of another writer comes first)."""
        if dt is self._pinned and self._pinned_meta is not None:
            return self._pinned_meta
        meta = data_meta(self.path, dt.version())
        if dt is self._pinned:
            self._pinned_meta = meta
        return meta

    # -- writing -----------------------------------------------------------
    def commit(self, bars: pd.DataFrame, source: str, extra: dict | None = None) -> CommitResult:
        """Append new (instrument, date) rows and merge restated ones, atomically.

        Identical data makes no commit. New rows only -> one append commit;
        any restated row -> one merge commit covering new and restated rows.
        A concurrent commit makes this one re-read the table and try again.
        """
        if self._pinned is not None:
            raise LakeError("a pinned view of the bars table is read-only")
        bars = bars[BAR_COLUMNS]
        for attempt in range(COMMIT_ATTEMPTS):
            try:
                return self._commit_once(bars, source, extra)
            except tables.WriteConflict as exc:
                log.info("bars: %s; re-reading (attempt %d)", exc, attempt + 1)
                time.sleep(random.uniform(0.005, 0.02 * min(attempt + 1, 10)))
        raise LakeError(f"bars: other writers kept committing first ({COMMIT_ATTEMPTS} tries); "
                        "nothing was written, run the ingest again")

    def _commit_once(self, bars: pd.DataFrame, source: str, extra: dict | None) -> CommitResult:
        base = self._open() if tables.exists(self.path) else None
        if base is None:
            return self._write(base, bars, source, extra, restated=0)
        instruments = sorted(bars["instrument"].unique().tolist())
        existing = self._read_at(base, instruments, bars["date"].min(), bars["date"].max())
        merged, is_new, changed = new_or_changed(bars, existing)
        if not is_new.any() and not changed.any():
            stats = self._summary_of(base)
            return CommitResult(self._data_version_of(base), False, 0, 0, stats, [], None, None)
        delta = merged.loc[is_new | changed, BAR_COLUMNS].reset_index(drop=True)
        delta["_restated"] = changed[is_new | changed]
        return self._write(base, delta, source, extra, restated=int(changed.sum()))

    def _read_at(self, dt, instruments, start, end) -> pd.DataFrame:
        return self._view(dt).read(None, instruments, start, end)

    def _write(self, base: DeltaTable | None, rows: pd.DataFrame, source: str,
               extra: dict | None, restated: int) -> CommitResult:
        version = base.version() + 1 if base is not None else 0
        n_added = len(rows) - restated
        before = self._summary_of(base) if base is not None else dict(_EMPTY_STATS)
        old = self.catalog_of(base) if base is not None else Catalog(
            [], pd.DatetimeIndex([], dtype="datetime64[ns]"))
        changed_instruments = sorted(rows["instrument"].unique().tolist())
        start, end = rows["date"].min(), rows["date"].max()
        catalog = old.union(changed_instruments, rows["date"].unique())
        summary = {
            "kind": "ingest",
            "source": source,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "rows": (before["rows"] or 0) + n_added,
            "instruments": len(catalog.instruments),
            "start": f"{catalog.calendar[0]:%Y-%m-%d}",
            "end": f"{catalog.calendar[-1]:%Y-%m-%d}",
            "rows_added": n_added,
            "rows_restated": restated,
            "status": "ok",
            **(extra or {}),
            "data_version": version,
            "catalog": catalog.encode(),
        }
        rows = rows.sort_values(KEY, kind="stable").reset_index(drop=True)
        table = tables.to_arrow(rows[BAR_COLUMNS].assign(**{VERSION_COLUMN: np.int64(version)}),
                                STORED_SCHEMA)
        files = self._write_sorted(table)
        try:
            removes = self._rewrite_without(base, rows.loc[rows["_restated"]], files) \
                if restated else []
            removes += self._merge_tail(base, {r.path for r in removes}, files)
            tables.commit_files(self.path, base, files, STORED_SCHEMA, summary, exact=True,
                                removes=removes)
        except BaseException:
            tables.discard_files(self.path, files)
            raise
        return CommitResult(version, True, n_added, restated,
                            {k: summary[k] for k in ("rows", "instruments", "start", "end")},
                            changed_instruments, start, end)

    def _write_sorted(self, table: pa.Table) -> list[dict]:
        """``table`` (sorted by instrument, date) as data files of at most
        ``target_file_rows`` rows, not committed yet."""
        # a small (daily or merged tail) file spans every instrument: small row groups
        # let a one-instrument read decode ~1k rows of it, not all (0.42 vs 0.80 ms
        # for a 5,000-stock day, measured)
        groups = self.spec.row_group_rows
        if table.num_rows < self.spec.tail_rows:
            groups = min(groups, SMALL_FILE_ROW_GROUP)
        return tables.write_spec_files(self.path, self.spec, table, sorted_by=KEY,
                                       row_group_rows=groups)

    def _rewrite_without(self, base: DeltaTable, restated: pd.DataFrame,
                         written: list[dict]) -> list:
        """Restated rows: every committed file holding one of their keys is rewritten
        without them (their new values are in this commit's new files). Returns the
        remove actions; the rewritten files are appended to ``written``."""
        keys = restated[KEY].assign(_hit=True)
        names = sorted(restated["instrument"].unique())
        candidates = self._files(base, names, restated["date"].min(), restated["date"].max())
        root = tables.uri_path(base)
        gone = []
        for path in candidates:
            old = storage.dataset(path, format="parquet", schema=STORED_SCHEMA).to_table()
            frame = tables.to_frame(old.select(KEY))
            hit = frame.merge(keys, on=KEY, how="left")["_hit"].eq(True).to_numpy()
            if not hit.any():
                continue
            gone.append(path[len(root) + 1:])
            written.extend(self._write_sorted(old.filter(pa.array(~hit))))
        return tables.remove_actions(base, gone, data_change=True)

    def _merge_tail(self, base: DeltaTable | None, removed: set[str],
                    written: list[dict]) -> list:
        """Bound the small files an ingest leaves: each daily commit is one file
        spanning every instrument, so file min/max prune none of them and a
        one-instrument read opens each. When this commit would leave more than
        ``spec.tail_files`` files of under ``spec.tail_rows`` rows, the committed small
        files are merged into one file sorted by (instrument, date) (one instrument is
        one row group of it); this commit's own rows stay their own file, so the change
        feed of the newest version still reads one small file. Rows keep their
        ``data_version``: reads as of any version and ``changes()`` are unchanged.
        Returns the remove actions; the merged file is appended to ``written``."""
        limit, small_rows = self.spec.tail_files, self.spec.tail_rows
        if base is None or limit <= 0:
            return []
        actions = tables.add_actions(base)
        paths = actions.column("path").to_pylist()
        counts = actions.column("num_records").to_pylist()
        small = [p for p, n in zip(paths, counts) if n is not None and n < small_rows
                 and p not in removed]
        mine = sum(1 for f in written if json.loads(f["stats"])["numRecords"] < small_rows)
        if len(small) + mine <= limit or len(small) < 2:
            return []
        root = tables.uri_path(base)
        merged = storage.dataset([f"{root}/{p}" for p in small], format="parquet",
                                 schema=STORED_SCHEMA).to_table()
        written.extend(self._write_sorted(merged.sort_by([(c, "ascending") for c in KEY])))
        return tables.remove_actions(base, small, data_change=False)

    def _view(self, dt: DeltaTable) -> "BarsTable":
        view = BarsTable(self.path.parent)
        view._pinned = dt
        return view

    def _summary_of(self, dt: DeltaTable) -> dict:
        return self._view(dt).stats()

    def catalog_of(self, dt: DeltaTable) -> Catalog:
        return self._view(dt).catalog()

    def _data_version_of(self, dt: DeltaTable) -> int:
        return self._view(dt).data_version()

    # -- history -----------------------------------------------------------
    def versions(self) -> list[dict]:
        """Every data version, oldest first: id, created at, source, range, rows, status.
        Maintenance commits (which change no data) are not data versions."""
        if not self.exists():
            return []
        out = []
        for entry in sorted(tables.open_table(self.path).history(), key=lambda e: e["version"]):
            meta = tables.commit_meta(entry)
            if meta.get("kind") in MAINTENANCE_KINDS:
                continue
            created = meta.get("created_at") or datetime.fromtimestamp(
                entry.get("timestamp", 0) / 1000, timezone.utc).isoformat(timespec="seconds")
            if not meta:  # a commit made by another Delta writer
                meta = {"source": entry.get("operation", "unknown"), "status": "external"}
            out.append({
                "version": entry["version"],
                "created_at": created,
                "source": meta.get("source"),
                "start": meta.get("start"),
                "end": meta.get("end"),
                "instruments": meta.get("instruments"),
                "rows": meta.get("rows"),
                "rows_added": meta.get("rows_added"),
                "rows_restated": meta.get("rows_restated"),
                "rows_quarantined": meta.get("rows_quarantined", 0),
                "status": meta.get("status"),
            })
        return out

    def diff(self, a: int, b: int) -> dict:
        """What changed from version ``a`` to version ``b``."""
        old = self.read(a)
        new = self.read(b)
        merged = new.merge(old, on=KEY, how="outer", suffixes=("", "_old"), indicator=True)
        added = merged["_merge"] == "left_only"
        removed = merged["_merge"] == "right_only"
        both = (merged["_merge"] == "both").to_numpy()
        restated = np.zeros(len(merged), dtype=bool)
        for c in VALUE_COLUMNS:
            x, y = merged[c].to_numpy(), merged[f"{c}_old"].to_numpy()
            restated |= both & ~((x == y) | (np.isnan(x) & np.isnan(y)))
        old_inst, new_inst = set(old["instrument"]), set(new["instrument"])
        old_dates = set(old["date"])
        new_dates = sorted(d for d in set(new["date"]) if d not in old_dates)
        return {
            "from": a, "to": b,
            "instruments_added": sorted(new_inst - old_inst),
            "instruments_removed": sorted(old_inst - new_inst),
            "dates_added": [f"{pd.Timestamp(d):%Y-%m-%d}" for d in new_dates],
            "rows_added": int(added.sum()),
            "rows_removed": int(removed.sum()),
            "rows_restated": int(restated.sum()),
            "restated": [{"instrument": i, "date": f"{pd.Timestamp(d):%Y-%m-%d}"}
                         for i, d in merged.loc[restated, KEY].head(1000).itertuples(index=False)],
        }



def _day(value):
    return None if value is None else pa.scalar(pd.Timestamp(value).date(), pa.date32())


def new_or_changed(bars: pd.DataFrame, existing: pd.DataFrame):
    """``bars`` joined to the ``existing`` rows of their keys: (joined frame, mask of
    keys not there yet, mask of keys whose values differ)."""
    merged = bars.merge(existing, on=KEY, how="left", suffixes=("", "_old"), indicator=True)
    is_new = (merged["_merge"] == "left_only").to_numpy()
    changed = np.zeros(len(merged), dtype=bool)
    for c in VALUE_COLUMNS:
        a, b = merged[c].to_numpy(), merged[f"{c}_old"].to_numpy()
        changed |= ~is_new & ~((a == b) | (np.isnan(a) & np.isnan(b)))
    return merged, is_new, changed


def data_meta(path: Path, version: int) -> dict:
    """Our metadata describing the data of ``version``: walks back over maintenance
    commits that carry no catalog (at most a few: every ingest commit carries one)."""
    for v in range(version, -1, -1):
        meta = tables.commit_meta_at(path, v)
        if "catalog" in meta or meta.get("kind") not in MAINTENANCE_KINDS:
            return meta
    return {}


MAINTENANCE_KINDS = ("maintenance", "migration")

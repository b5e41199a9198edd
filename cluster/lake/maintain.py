"""Lake maintenance: compact, cluster, checkpoint and vacuum every Delta table.

Steps, per table (``registry.py`` says how each table is clustered):

- ``zorder`` (tables with ``cluster_by``) and ``compact`` (tables with a
  ``dedupe_key``): one rewrite of the table's current files, in chunks of whole
  instruments, sorted by ``cluster_by`` into files of ``target_file_rows`` with
  row groups of ``row_group_rows``; for tables with a dedupe key only the newest
  row per key is kept. delta-rs's z-order interleaves the bits of several
  columns, so one instrument's rows of a (instrument, date) z-order would spread
  over many row groups; a sort keeps them together, which is what readers prune on.
  A table kept by date era (``date_eras``: the features) is rewritten only in the
  calendar years that files written since the last pass touch, so a daily pass
  costs the newest year's rows, not the whole history's.
- ``compact`` (other tables): delta-rs's bin-packing ``optimize.compact``.
- ``checkpoint``: a Delta checkpoint, so opening the table reads one file plus
  the commits after it.
- ``vacuum``: delta-rs's vacuum with ``keep_versions`` = the protected versions
  (``retention.py``), then the log entries older than the oldest protected
  version are deleted, after a checkpoint at that version, so time travel to
  every protected version keeps working.

Every commit maintenance makes changes no data (``dataChange=false``): readers,
the bars' ``data_version`` rows and the factor cache see the same rows before
and after. The rewrite commits at exactly the version it read (a concurrent
writer makes it fail and leaves the table as it was; the next run does it), and
a failed step deletes the files it wrote, so the previous version stays intact.
"""
from __future__ import annotations

import logging
import os
import re
import time
from datetime import date, datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
from deltalake import DeltaTable, WriterProperties
from deltalake.exceptions import CommitFailedError

from cluster.errors import LakeError
from cluster.lake import layout, retention, storage, tables
from cluster.lake.registry import TableSpec, spec_for

log = logging.getLogger(__name__)
STEPS = ("compact", "zorder", "checkpoint", "vacuum")
# What a bars commit says about its data; a maintenance commit that rewrites files
# carries it on (exactly: it commits at the version it read), so readers find the
# catalog in the newest commit.
CARRIED = ("catalog", "rows", "instruments", "start", "end", "data_version", "source")
COMPACT_TARGET_BYTES = 128 * 2**20
_LOG_ENTRY = re.compile(r"^(\d{20})\.(json|crc|checkpoint\..*parquet)$")


def discover(lake_dir: Path) -> list[str]:
    """Names of the Delta tables directly under the lake folder."""
    root = storage.location(lake_dir)
    if not storage.is_remote(root):
        if not root.is_dir():
            return []
        return sorted(p.name for p in root.iterdir() if (p / "_delta_log").is_dir())
    return sorted(n for n in storage.subfolders(root) if tables.exists(root / n))


def maintain(settings, names: list[str] | None = None, steps: list[str] | None = None,
             dry_run: bool = False) -> dict:
    """Run ``steps`` (default all) on ``names`` (default every table); the summary
    ``jobs.maintain`` prints. Publishes ``lake_maintained``."""
    started = time.perf_counter()
    lake = storage.location(settings.lake_dir)
    found = discover(lake)
    names = list(names or found)
    unknown = sorted(set(names) - set(found))
    if unknown:
        raise LakeError(f"no Delta table {unknown} under {lake} (tables: {found})")
    steps = [s for s in STEPS if s in (steps or STEPS)]
    old = layout.old_tables(lake)
    if old:
        raise layout.LayoutError(
            f"the lake at {lake} has an older layout ({'; '.join(f'{k}: {v}' for k, v in old.items())}); "
            f"run `{layout.MIGRATE_COMMAND}` first")
    report = {}
    for name in names:
        report[name] = TableMaintenance(lake, name, settings, dry_run).run(steps)
    summary = {"tables": report, "steps": steps, "dry_run": dry_run,
               "errors": {n: r["error"] for n, r in report.items() if r.get("error")},
               "seconds": round(time.perf_counter() - started, 3)}
    from cluster.events import LakeMaintained, get_bus
    try:
        get_bus(lake).publish(LakeMaintained(
            tables={n: {k: r.get(k) for k in ("files_before", "files_after", "bytes_before",
                                              "bytes_after", "error")}
                    for n, r in report.items()},
            steps=steps, dry_run=dry_run, seconds=summary["seconds"]))
    except Exception as exc:  # the work is done; say so rather than lose the summary
        log.warning("publishing lake_maintained failed: %s", exc)
        summary["errors"]["lake_maintained"] = f"{type(exc).__name__}: {exc}"
    return summary


class TableMaintenance:
    def __init__(self, lake: Path, name: str, settings, dry_run: bool):
        self.name, self.settings, self.dry_run = name, settings, dry_run
        self.path = tables.table_path(lake, name)
        self.spec: TableSpec = spec_for(name)
        self._dt: DeltaTable | None = None

    def table(self) -> DeltaTable:
        """The table at its latest version: opened once, then brought up to date."""
        if self._dt is None:
            self._dt = tables.delta_table(self.path)
        else:
            self._dt.update_incremental()
        return self._dt

    def run(self, steps: list[str]) -> dict:
        started = time.perf_counter()
        before = self.usage()
        out = {f"{k}_before": v for k, v in before.items()}
        out["steps"] = {}
        rewrite = ("zorder" in steps and bool(self.spec.cluster_by)) or \
            ("compact" in steps and bool(self.spec.dedupe_key))
        try:
            out["properties"] = self.ensure_properties()
            if rewrite:
                done = self.retrying(self.rewrite)
                for step in ("compact", "zorder"):
                    if step in steps:
                        out["steps"][step] = done
            elif "compact" in steps:
                out["steps"]["compact"] = self.retrying(self.compact)
            if "zorder" in steps and "zorder" not in out["steps"]:
                out["steps"]["zorder"] = {"skipped": "table is not clustered (registry)"}
            if "vacuum" in steps:  # before the checkpoint, which then covers its commits
                out["steps"]["vacuum"] = self.vacuum()
            if "checkpoint" in steps:
                out["steps"]["checkpoint"] = self.checkpoint()
            out["error"] = None
        except Exception as exc:
            log.exception("maintaining %s failed", self.name)
            out["error"] = f"{type(exc).__name__}: {exc}"
        after = self.usage()
        out.update({f"{k}_after": v for k, v in after.items()})
        out["version"] = self.table().version()
        out["versions_kept"] = out["steps"].get("vacuum", {}).get("versions_kept")
        out["seconds"] = round(time.perf_counter() - started, 3)
        return out

    def retrying(self, step, attempts: int = 3):
        """Run ``step`` again when a writer committed while it ran (an exact commit
        lost the race): it re-reads the table; the last failure is reported."""
        for attempt in range(attempts):
            try:
                return step()
            except (tables.WriteConflict, CommitFailedError) as exc:
                if attempt == attempts - 1:
                    raise
                log.info("%s: %s; trying again", self.name, exc)
                time.sleep(0.1 * (attempt + 1))

    def ensure_properties(self) -> dict:
        """The table properties every lake table needs (``tables.table_config``), also
        on tables other writers created: one metadata commit, the first time."""
        dt = self.table()
        config = dt.metadata().configuration
        missing = {k: v for k, v in tables.table_config(self.name).items()
                   if config.get(k) != v}
        if missing and not self.dry_run:
            dt.alter.set_table_properties(missing, commit_properties=tables.commit_properties(
                self.meta("properties", dt, False)))
        return missing

    # -- usage -------------------------------------------------------------
    def usage(self) -> dict:
        """Files and bytes the latest version references, and what is on disk."""
        actions = tables.add_actions(self.table())
        sizes = storage.file_sizes(self.path)
        return {"files": actions.num_rows,
                "bytes": int(pc.sum(actions["size_bytes"]).as_py() or 0),
                "disk_files": len(sizes), "disk_bytes": int(sum(sizes)),
                "log_files": len(storage.listdir(self.path / "_delta_log"))}

    def meta(self, step: str, dt: DeltaTable, carry: bool) -> dict:
        meta = {"kind": "maintenance", "step": step,
                "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        if carry:
            prev = tables.commit_meta_at(self.path, dt.version())
            if "catalog" not in prev and self.name == "bars":
                from cluster.lake.bars import data_meta
                prev = data_meta(self.path, dt.version())
            meta.update({k: prev[k] for k in CARRIED if k in prev})
        return meta

    # -- compact + cluster (+ dedupe) ----------------------------------------
    def _rewritten_since_data(self, dt: DeltaTable) -> bool:
        """True when no data commit came after the last rewrite (nothing to do)."""
        for v in range(dt.version(), -1, -1):
            meta = tables.commit_meta_at(self.path, v)
            if meta.get("kind") != "maintenance":
                return False
            if meta.get("step") == "rewrite":
                return True
        return False

    def rewrite(self) -> dict:
        dt = self.table()
        actions = tables.add_actions(dt)
        if self.spec.date_eras and "min.date" in actions.column_names and \
                actions["min.date"].null_count == 0 and actions["max.date"].null_count == 0:
            return self._rewrite_eras(dt, actions)  # (a file without date stats: whole)
        paths = actions.column("path").to_pylist()
        rows = int(pc.sum(actions["num_records"]).as_py() or 0) if paths else 0
        if not paths or (len(paths) <= max(1, -(-rows // self.spec.target_file_rows))
                         and self._rewritten_since_data(dt)):
            return {"skipped": "already clustered", "files": len(paths)}
        if self.dry_run:
            return {"would_rewrite_files": len(paths), "rows": rows}
        schema = pa.schema(dt.schema().to_arrow())
        root = tables.uri_path(dt)
        dataset = storage.dataset([f"{root}/{p}" for p in paths], format="parquet", schema=schema)
        order = [(c, "ascending") for c in self.spec.cluster_by if c in schema.names]

        def write(written: list[dict]) -> int:
            kept = 0
            for expr in self._chunks(dataset, rows):
                table = self._latest_sorted(dataset.to_table(filter=expr), order)
                kept += table.num_rows
                written += self._write(table, sorted_by=tuple(c for c, _ in order))
            return kept

        written, kept = self._replace(dt, schema, paths, write)
        return {"files_rewritten": len(paths), "files_written": len(written), "rows_in": rows,
                "rows_out": kept, "rows_dropped": rows - kept}

    def _rewrite_eras(self, dt: DeltaTable, actions: pa.Table) -> dict:
        """The rewrite of a table kept by date era (``spec.date_eras``): only the eras
        that unsealed files (anything but an ``era-<year>-`` file holding that year
        alone: daily appends, a full run's files) touch are rewritten, each from every
        file overlapping it, deduplicated (the key holds the date, so a key's rows are
        all in its era) and sorted, into files of that era alone. Every file removed
        lies wholly in rewritten eras, so no row is lost; sealed eras stay untouched.
        Read in whole-instrument chunks across the dirty eras (a full run's files span
        them all: one read, not one per era), each chunk written as one file per era."""
        paths = actions.column("path").to_pylist()
        rows_of = dict(zip(paths, actions.column("num_records").to_pylist()))
        spans = {p: _year_span(lo, hi) for p, lo, hi in zip(
            paths, actions["min.date"].to_pylist(), actions["max.date"].to_pylist())}
        dirty: set[int] = set()
        for path, span in spans.items():
            if not (len(span) == 1 and path.startswith(f"era-{span[0]}-")):
                dirty |= set(span)
        if not dirty:
            return {"skipped": "already clustered", "files": len(paths)}
        touched = [p for p, span in spans.items() if dirty & set(span)]
        rows = sum(int(rows_of[p] or 0) for p in touched)
        if self.dry_run:
            return {"would_rewrite_files": len(touched), "rows": rows,
                    "eras": sorted(dirty)}
        schema = pa.schema(dt.schema().to_arrow())
        root = tables.uri_path(dt)
        dataset = storage.dataset([f"{root}/{p}" for p in touched], format="parquet",
                                  schema=schema)
        order = [(c, "ascending") for c in self.spec.cluster_by if c in schema.names]

        def write(written: list[dict]) -> int:
            kept = 0
            for expr in self._chunks(dataset, rows):  # whole instruments, every dirty era
                table = self._latest_sorted(dataset.to_table(filter=expr), order)
                kept += table.num_rows
                years = pc.year(table.column("date"))
                for year in pc.unique(years).to_pylist():
                    part = table.filter(pc.is_null(years) if year is None
                                        else pc.equal(years, year))
                    written += self._write(part, sorted_by=tuple(c for c, _ in order),
                                           prefix="part" if year is None else f"era-{year}")
            return kept

        written, kept = self._replace(dt, schema, touched, write)
        return {"files_rewritten": len(touched), "files_written": len(written), "rows_in": rows,
                "rows_out": kept, "rows_dropped": rows - kept, "eras": sorted(dirty),
                "files_kept": len(paths) - len(touched)}

    def _latest_sorted(self, table: pa.Table, order: list) -> pa.Table:
        if self.spec.dedupe_key:
            table = keep_latest(table, self.spec.dedupe_key, self.spec.latest_by)
        return table.sort_by(order) if order else table

    def _replace(self, dt: DeltaTable, schema: pa.Schema, paths: list[str],
                 write) -> tuple[list[dict], int]:
        """``write(written)`` writes the new files (appending their add actions) and
        returns the rows kept; one commit at the version read replaces ``paths`` with
        them (no data change); on any failure the new files are deleted."""
        written: list[dict] = []
        try:
            kept = write(written)
            removes = tables.remove_actions(dt, paths, data_change=False)
            meta = self.meta("rewrite", dt, True)
            tables.commit_files(self.path, dt, written, schema, meta, removes=removes,
                                exact=_carries_catalog(meta), data_change=False)
        except BaseException:
            tables.discard_files(self.path, written)
            raise
        return written, kept

    def _chunks(self, dataset: ds.Dataset, rows: int) -> list:
        """Filters that cut the table into whole-instrument chunks of at most about
        ``target_file_rows`` rows (one chunk, no filter, when it is smaller)."""
        if rows <= self.spec.target_file_rows or "instrument" not in dataset.schema.names:
            return [None]
        counts = dataset.to_table(columns=["instrument"]).column("instrument").value_counts()
        pairs = sorted(zip(counts.field("values").to_pylist(),
                           counts.field("counts").to_pylist()), key=lambda p: (p[0] is None, p[0]))
        chunks, lo, size = [], None, 0
        for i, (value, n) in enumerate(pairs):
            if value is None:
                continue
            lo = value if lo is None else lo
            size += n
            if size >= self.spec.target_file_rows or i == len(pairs) - 1 or pairs[i + 1][0] is None:
                field = ds.field("instrument")
                chunks.append((field >= lo) & (field <= value))
                lo, size = None, 0
        if any(v is None for v, _ in pairs):
            chunks.append(ds.field("instrument").is_null())
        return chunks

    def _write(self, table: pa.Table, sorted_by: tuple[str, ...] = (),
               prefix: str = "part") -> list[dict]:
        return tables.write_spec_files(self.path, self.spec, table, sorted_by=sorted_by,
                                       prefix=prefix)

    def compact(self) -> dict:
        dt = self.table()
        n = tables.add_actions(dt).num_rows
        if n <= 1:
            return {"skipped": "one file or none", "files": n}
        if self.dry_run:
            return {"would_compact_files": n}
        meta = self.meta("compact", dt, True)
        metrics = dt.optimize.compact(
            target_size=COMPACT_TARGET_BYTES,
            writer_properties=WriterProperties(max_row_group_size=self.spec.row_group_rows),
            commit_properties=tables.commit_properties(meta, exact=_carries_catalog(meta)))
        return {"files_removed": metrics.get("numFilesRemoved"),
                "files_added": metrics.get("numFilesAdded")}

    # -- checkpoint ----------------------------------------------------------
    def checkpoint(self) -> dict:
        dt = self.table()
        if not self.dry_run:
            dt.create_checkpoint()
        return {"version": dt.version(), "written": not self.dry_run}

    # -- vacuum + log cleanup -------------------------------------------------
    def protected(self, dt: DeltaTable) -> tuple[list[int], dict]:
        """Versions vacuum keeps and log cleanup leaves loadable; for bars, each
        protected data version is kept at the newest Delta version holding it."""
        latest = dt.version()
        retain = self.settings.lake.retain_versions
        why: dict = {}
        if self.name != "bars":
            return list(range(max(0, latest - retain + 1), latest + 1)), why
        from cluster.lake.bars import BarsTable
        bars = BarsTable(self.path.parent)
        named = retention.protected_data_versions(self.settings)
        recent = set(retention.recent_data_versions(self.path, latest, retain))
        keep = {latest}
        for d in sorted(recent | set(named)):
            try:
                keep.add(bars.resolve(d, latest))
            except LakeError as exc:  # a version of another lake, or gone before
                log.warning("bars: %s", exc)
                continue
            why[d] = named.get(d, []) + (["recent"] if d in recent else [])
        return sorted(keep), why

    def vacuum(self) -> dict:
        dt = self.table()
        keep, why = self.protected(dt)
        removed = dt.vacuum(retention_hours=0, dry_run=self.dry_run,
                            enforce_retention_duration=False, keep_versions=keep,
                            commit_properties=tables.commit_properties(
                                self.meta("vacuum", dt, False)))
        # bars: the log keeps each protected data version's own commit too (its summary,
        # for jobs.data versions), not only the newest version holding its data
        oldest = min([*keep, *why]) if keep else dt.version()
        logs = self.clean_log(oldest)
        out = {"files_removed": len(removed), "log_entries_removed": logs,
               "versions_kept": keep, "dry_run": self.dry_run}
        if self.name == "bars":
            out["data_versions_kept"] = sorted(why)
            out["protected_by"] = {str(k): v for k, v in sorted(why.items())}
        return out

    def clean_log(self, oldest: int) -> int:
        """Delete log entries of versions before ``oldest`` (the oldest protected),
        after writing a checkpoint at ``oldest`` (so it and every later version
        stay loadable) and one at the latest version (what readers start from)."""
        log_dir = self.path / "_delta_log"
        entries = storage.listdir(log_dir)
        doomed = [f for f in entries
                  if (m := _LOG_ENTRY.match(f)) and int(m.group(1)) < oldest]
        if self.dry_run or not doomed:
            return len(doomed)
        if not any(f.startswith(f"{oldest:020d}.checkpoint") for f in entries):
            at = tables.delta_table(self.path)
            at.load_as_version(oldest)
            at.create_checkpoint()
        self.table().create_checkpoint()  # _last_checkpoint -> the latest
        for f in doomed:
            storage.delete(log_dir / f)
        return len(doomed)


def _year_span(lo, hi) -> list[int]:
    """The calendar years a file's date statistics span."""
    return list(range(_year(lo), _year(hi) + 1))


def _year(value) -> int:
    return value.year if hasattr(value, "year") else int(str(value)[:4])


def _carries_catalog(meta: dict) -> bool:
    """A maintenance commit that carries the bars catalog must land at exactly the
    version it read (an ingest in between would make the carried catalog stale); the
    others may be rebased by Delta's conflict checker over concurrent appends (they
    remove only files they read), so a busy table (events, predictions) is still
    maintained while its writers run."""
    return "catalog" in meta


def keep_latest(table: pa.Table, key: tuple[str, ...], latest_by: str) -> pa.Table:
    """Per ``key``, the row with the highest ``latest_by`` (one of them on ties)."""
    if table.num_rows < 2:
        return table
    table = table.sort_by([(c, "ascending") for c in (*key, latest_by)])
    n = table.num_rows
    same_next = None
    for c in key:
        col = table.column(c)
        eq = pc.fill_null(pc.equal(col.slice(0, n - 1), col.slice(1)), False)
        both_null = pc.and_(pc.is_null(col.slice(0, n - 1)), pc.is_null(col.slice(1)))
        eq = pc.or_(eq, both_null)
        same_next = eq if same_next is None else pc.and_(same_next, eq)
    keep = pa.concat_arrays([pc.invert(same_next).combine_chunks(), pa.array([True])])
    return table.filter(keep)

"""``jobs.maintain --migrate``: rewrite an older release's lake in this layout.

Each table in an old layout is rewritten in place by one Delta commit (atomic:
readers see the old files or the new ones, never a mix), so its Delta versions
do not change: what was readable as of each data version stays readable by
time travel (the old versions keep their partitioned files until vacuum's
retention lets them go), lineage and ``jobs.data versions`` keep their numbers,
and no version map is needed. The migration commit itself changes no data.

- ``bars`` (partitioned by instrument, rows without ``data_version``): one file
  set sorted by (instrument, date); each row's ``data_version`` is the version
  that last wrote it, read from the old table's change data feed; the commit
  carries the catalog and summary of the latest data version.
- ``events`` (rows without ``offset``): each row gets the version of the commit
  that wrote it (the change feed again), which was its offset before.
- the factor cache of the old release is removed (its format changed).
"""
from __future__ import annotations

import logging
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable, WriterProperties, write_deltalake

from cluster.errors import LakeError
from cluster.lake import layout, storage, tables
from cluster.lake.registry import spec_for
from cluster.schema import BAR_COLUMNS, KEY

log = logging.getLogger(__name__)


def migrate(lake_dir: Path, dry_run: bool = False) -> dict:
    """Migrate every table in an old layout; returns what was done per table."""
    lake = storage.location(lake_dir)
    old = layout.old_tables(lake)
    out = {}
    for name, reason in old.items():
        if dry_run:
            out[name] = {"reason": reason, "would_migrate": True}
            continue
        out[name] = {"reason": reason, **{"bars": _bars, "events": _events}[name](
            tables.table_path(lake, name))}
    cache = lake / "_feature_cache" / "snapshot.pkl"
    if not dry_run and storage.file_exists(cache):
        storage.delete(cache)
        out["feature_cache"] = {"removed": str(cache)}
    return out


def _meta(dt: DeltaTable, **extra) -> dict:
    return {"kind": "migration", "step": "migrate", "from_version": dt.version(),
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), **extra}


def _last_writer_versions(dt: DeltaTable, key: list[str]) -> pa.Table:
    """Per key, the version of the commit that last inserted or updated it, from the
    change data feed of the whole history."""
    if dt.metadata().configuration.get("delta.enableChangeDataFeed") != "true":
        raise LakeError(f"{tables.uri_path(dt)}: the table keeps no change data feed, so the "
                        "version that wrote each row is unknown; cannot migrate it")
    feed = tables.plain_strings(pa.table(dt.load_cdf(
        starting_version=0, ending_version=dt.version(),
        columns=key + ["_change_type", "_commit_version"])))
    feed = feed.filter(pc.is_in(feed["_change_type"], pa.array(["insert", "update_postimage"])))
    frame = feed.select(key + ["_commit_version"]).to_pandas()
    frame = frame.sort_values("_commit_version", kind="stable").drop_duplicates(key, keep="last")
    return frame.rename(columns={"_commit_version": "written_at"})


def _rewrite(dt: DeltaTable, table: pa.Table, spec, meta: dict) -> int:
    """One overwrite commit: new schema, no partitions, rows as given (sorted)."""
    config = tables.table_config(tables.uri_path(dt).rsplit("/", 1)[-1])
    missing = {k: v for k, v in config.items()
               if dt.metadata().configuration.get(k) != v}
    if missing:  # a metadata-only commit; the data stays as it is until the rewrite
        dt.alter.set_table_properties(missing, commit_properties=tables.commit_properties(
            {"kind": "maintenance", "step": "properties"}))
        dt = tables.delta_table(tables.uri_path(dt))
    write_deltalake(dt, table, mode="overwrite", schema_mode="overwrite", partition_by=[],
                    writer_properties=WriterProperties(max_row_group_size=spec.row_group_rows),
                    commit_properties=tables.commit_properties(meta, exact=True))
    return tables.delta_table(tables.uri_path(dt)).version()


def _bars(path: Path) -> dict:
    from cluster.lake.bars import STORED_SCHEMA, VERSION_COLUMN, Catalog
    dt = tables.delta_table(path)
    frame = tables.to_frame(tables.plain_strings(pa.table(
        dt.to_pyarrow_table(columns=BAR_COLUMNS))))
    written = _last_writer_versions(dt, KEY)
    written["date"] = pd.to_datetime(written["date"]).astype("datetime64[ns]")
    frame = frame.merge(written, on=KEY, how="left")
    # a row the feed does not show (should not happen) is dated to the latest version
    frame[VERSION_COLUMN] = frame.pop("written_at").fillna(dt.version()).astype(np.int64)
    frame = frame.sort_values(KEY, kind="stable").reset_index(drop=True)
    last = tables.commit_meta_at(path, dt.version())
    catalog = Catalog(sorted(frame["instrument"].unique()),
                      pd.DatetimeIndex(np.sort(frame["date"].unique())))
    meta = _meta(dt, data_version=dt.version(), catalog=catalog.encode(),
                 rows=int(len(frame)), instruments=len(catalog.instruments),
                 start=f"{catalog.calendar[0]:%Y-%m-%d}" if len(frame) else None,
                 end=f"{catalog.calendar[-1]:%Y-%m-%d}" if len(frame) else None,
                 source=last.get("source"))
    version = _rewrite(dt, tables.to_arrow(frame, STORED_SCHEMA), spec_for("bars"), meta)
    return {"rows": int(len(frame)), "data_version": dt.version(), "version": version}


def _events(path: Path) -> dict:
    from cluster.events import SCHEMA
    dt = tables.delta_table(path)
    feed = tables.plain_strings(pa.table(dt.load_cdf(starting_version=0,
                                                     ending_version=dt.version())))
    feed = feed.filter(pc.equal(feed["_change_type"], "insert"))
    offsets = feed["_commit_version"].cast(pa.int64())
    table = pa.table({"offset": offsets, **{n: feed[n] for n in SCHEMA.names[1:]}},
                     schema=SCHEMA).sort_by("offset")
    version = _rewrite(dt, table, spec_for("events"), _meta(dt))
    return {"events": table.num_rows, "version": version}

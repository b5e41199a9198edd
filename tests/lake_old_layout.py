"""Write a lake the way the previous release did (before ``jobs.maintain --migrate``):
bars partitioned by instrument with the change data feed on, appends of new rows and
merges of restated ones, no ``data_version`` column; one events commit per event
without offsets. Kept as small as the old code was, for the migration tests."""
from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import pyarrow as pa
from deltalake import CommitProperties, DeltaTable, write_deltalake

from cluster.lake import tables
from cluster.lake.bars import new_or_changed
from cluster.schema import BAR_COLUMNS, BARS_SCHEMA

OLD_EVENTS_SCHEMA = pa.schema([("id", pa.string()), ("type", pa.string()),
                               ("time", pa.timestamp("us", tz="UTC")), ("payload", pa.string())])


def old_commit(lake_dir: Path, bars: pd.DataFrame, source: str = "old") -> bool:
    """The previous ``BarsTable.commit``: returns whether a version was made."""
    path = Path(lake_dir) / "bars"
    bars = bars[BAR_COLUMNS]
    current = None
    if DeltaTable.is_deltatable(str(path)):
        dt = DeltaTable(str(path))
        current = tables.to_frame(pa.table(dt.to_pyarrow_table()))
        merged, is_new, changed = new_or_changed(bars, current)
        if not is_new.any() and not changed.any():
            return False
        rows = merged.loc[is_new | changed, BAR_COLUMNS]
        restated = bool(changed.any())
    else:
        rows, restated = bars, False
    meta = {"kind": "ingest", "source": source, "rows": None, "status": "ok",
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    props = CommitProperties(custom_metadata={"mlops": json.dumps(meta)})
    table = tables.to_arrow(rows, BARS_SCHEMA)
    if not restated:
        write_deltalake(str(path), table, mode="append", partition_by=["instrument"],
                        commit_properties=props,
                        configuration=None if current is not None else
                        {"delta.enableChangeDataFeed": "true"})
    else:
        names = ", ".join(f"'{i}'" for i in sorted(rows["instrument"].unique()))
        (DeltaTable(str(path)).merge(
            table, predicate=f"t.instrument IN ({names}) AND t.instrument = s.instrument "
                             "AND t.date = s.date", source_alias="s", target_alias="t",
            commit_properties=props)
         .when_matched_update_all().when_not_matched_insert_all().execute())
    return True


def old_publish(lake_dir: Path, event) -> None:
    """The previous ``EventBus._append``: one commit per event, no offset column."""
    row = {"id": event.id or uuid.uuid4().hex, "type": event.type, "time": event.time,
           "payload": event.model_dump_json()}
    write_deltalake(str(Path(lake_dir) / "events"),
                    pa.Table.from_pylist([row], schema=OLD_EVENTS_SCHEMA), mode="append",
                    configuration={"delta.enableChangeDataFeed": "true"})

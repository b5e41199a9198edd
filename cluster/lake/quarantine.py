"""The ``quarantine`` table: rejected rows and files, with the reason, never lost."""
from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import pyarrow as pa

from cluster.errors import DataError
from cluster.lake import tables

SCHEMA = pa.schema([
    ("ingest_id", pa.string()),
    ("quarantined_at", pa.timestamp("us", tz="UTC")),
    ("source", pa.string()),
    ("file", pa.string()),
    ("row", pa.int64()),
    ("row_kind", pa.string()),
    ("column", pa.string()),
    ("error_type", pa.string()),
    ("reason", pa.string()),
    ("raw", pa.string()),
])


class QuarantineTable:
    def __init__(self, lake_dir: Path):
        self.path = tables.table_path(lake_dir, "quarantine")

    def append(self, ingest_id: str, source: str, bad_rows: pd.DataFrame,
               file_errors: list[DataError]) -> int:
        now = datetime.now(timezone.utc)
        records = [{
            "ingest_id": ingest_id, "quarantined_at": now, "source": source,
            "file": r["file"], "row": int(r["row"]), "row_kind": r["row_kind"],
            "column": r["column"], "error_type": r["error_type"], "reason": r["reason"],
            "raw": json.dumps(r["raw"], default=str),
        } for r in bad_rows.to_dict("records")]
        records += [{
            "ingest_id": ingest_id, "quarantined_at": now, "source": source, "file": e.file,
            "row": e.row, "row_kind": e.row_kind, "column": e.column,
            "error_type": type(e).__name__, "reason": e.reason, "raw": None,
        } for e in file_errors]
        if records:
            tables.write(self.path, pa.Table.from_pylist(records, schema=SCHEMA), mode="append")
        return len(records)

    def read(self, ingest_id: str | None = None) -> pd.DataFrame:
        if not tables.exists(self.path):
            return pd.DataFrame(columns=SCHEMA.names)
        filters = [("ingest_id", "=", ingest_id)] if ingest_id else None
        return tables.open_table(self.path).to_pandas(filters=filters)

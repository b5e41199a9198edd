"""Where the lake's Delta tables live and how frames cross into Arrow."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
from deltalake import CommitProperties, DeltaTable

from cluster.errors import LakeError

META_KEY = "mlops"


def table_path(lake_dir: Path, name: str) -> Path:
    return Path(lake_dir) / name


def exists(path: Path) -> bool:
    return DeltaTable.is_deltatable(str(path))


def open_table(path: Path, version: int | None = None) -> DeltaTable:
    if not exists(path):
        raise LakeError(f"no Delta table at {path} (nothing ingested yet?)")
    dt = DeltaTable(str(path))
    if version is not None:
        latest = dt.version()
        if version < 0 or version > latest:
            raise LakeError(f"{path.name} has no version {version} (versions 0..{latest})")
        dt.load_as_version(version)
    return dt


def commit_properties(meta: dict) -> CommitProperties:
    return CommitProperties(custom_metadata={META_KEY: json.dumps(meta, default=str)})


def commit_meta(entry: dict) -> dict:
    """The metadata we attached to a commit (``{}`` for commits of other writers)."""
    raw = entry.get(META_KEY)
    if not raw:
        return {}
    try:
        return json.loads(raw) if isinstance(raw, str) else dict(raw)
    except (TypeError, ValueError):
        return {}


def add_actions(dt: DeltaTable) -> pa.Table:
    return pa.table(dt.get_add_actions(flatten=True))


def to_frame(table: pa.Table) -> pd.DataFrame:
    """Arrow -> pandas with dates as datetime64[ns] (Delta stores date32)."""
    frame = table.to_pandas(date_as_object=False)
    for name, typ in zip(table.schema.names, table.schema.types):
        if pa.types.is_date(typ) or pa.types.is_timestamp(typ):
            frame[name] = frame[name].astype("datetime64[ns]")
    return frame


def to_arrow(frame: pd.DataFrame, schema: pa.Schema) -> pa.Table:
    data = {}
    for field in schema:
        col = frame[field.name]
        if pa.types.is_date32(field.type):
            days = col.to_numpy(dtype="datetime64[ns]").astype("datetime64[D]")
            data[field.name] = pa.array(days, type=pa.date32())
        elif pa.types.is_string(field.type) or pa.types.is_large_string(field.type):
            data[field.name] = pa.array(col.array if hasattr(col, "array") else col,
                                        type=pa.string())
        else:
            data[field.name] = pa.array(np.asarray(col), type=field.type, from_pandas=True)
    return pa.table(data, schema=schema)

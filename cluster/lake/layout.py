"""Which layout a lake table has, and the refusal every job gives an old one.

The layout of this release: ``bars`` unpartitioned, each row carrying the
``data_version`` that last wrote it; ``events`` rows carrying their ``offset``.
A lake written by an older release (bars partitioned by instrument, events
without offsets) is rewritten by ``python -m jobs.maintain --migrate``; until
then every other job refuses with that command in the message.
"""
from __future__ import annotations

from pathlib import Path

from deltalake import DeltaTable

from cluster.errors import LayoutError
from cluster.lake import tables

MIGRATE_COMMAND = "python -m jobs.maintain --migrate"


def old_layout_reason(name: str, dt: DeltaTable) -> str | None:
    """Why table ``name`` (opened at its latest version) is in an old layout, or None."""
    columns = set(tables.schema_names(dt))
    if name == "bars":
        if dt.metadata().partition_columns:
            return f"partitioned by {dt.metadata().partition_columns}"
        if "data_version" not in columns:
            return "rows carry no data_version"
    if name == "events" and "offset" not in columns:
        return "rows carry no offset"
    return None


def check(name: str, dt: DeltaTable) -> None:
    reason = old_layout_reason(name, dt)
    if reason:
        raise LayoutError(f"the lake table {name} at {tables.uri_path(dt)} has an older layout "
                          f"({reason}); run `{MIGRATE_COMMAND}` first")


def require_current(lake_dir: Path) -> None:
    """Refuse (LayoutError) when a table of the lake at ``lake_dir`` is in an old layout."""
    for name in ("bars", "events"):
        path = tables.table_path(lake_dir, name)
        if tables.exists(path):
            check(name, tables.delta_table(path))


def old_tables(lake_dir: Path) -> dict[str, str]:
    """Table name -> why it needs migrating, for every table in an old layout."""
    out = {}
    for name in ("bars", "events"):
        path = tables.table_path(lake_dir, name)
        if tables.exists(path):
            reason = old_layout_reason(name, tables.delta_table(path))
            if reason:
                out[name] = reason
    return out

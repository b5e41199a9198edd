"""Typed events: publish/subscribe in process, persisted to an append-only table.

Each persisted event is one commit of the ``events`` Delta table, and its
*offset* is that commit's version, written into the row itself: the commit is
made at exactly the version the row names, or fails and is retried one version
on (several writers may publish at once). Because the offset lives in the data,
compaction and vacuum keep it: another process reads "every event after offset
N" exactly once, in order, whatever maintenance did to the files in between.
Offsets grow strictly but may skip numbers (maintenance commits have versions too).
"""
from __future__ import annotations

import json
import logging
import random
import threading
import time
import uuid
from collections import defaultdict
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Annotated, Any, Callable, Literal, Union

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
from deltalake import DeltaTable
from pydantic import BaseModel, Field, TypeAdapter

from cluster.errors import LakeError
from cluster.lake import layout, storage, tables
from cluster.lake.registry import spec_for

log = logging.getLogger(__name__)


def _now() -> datetime:
    return datetime.now(timezone.utc)


class Event(BaseModel):
    id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    time: datetime = Field(default_factory=_now)


class DataSynced(Event):
    type: Literal["data_synced"] = "data_synced"
    data_version: int
    instruments: list[str]
    start: date | None
    end: date | None
    rows_added: int = 0
    rows_restated: int = 0
    source: str = ""


class FeaturesUpdated(Event):
    type: Literal["features_updated"] = "features_updated"
    feature_set: str
    data_version: int
    features_version: int
    instruments: list[str]
    rows: int = 0


class TrainingProgress(Event):
    type: Literal["training_progress"] = "training_progress"
    run_id: str
    model: str
    stage: str
    name: str | None = None         # the registry name the run registers under
    percent: float = 0.0
    epoch: int | None = None       # torch models
    n_epochs: int | None = None
    round: int | None = None       # boosting rounds (trees)
    n_rounds: int | None = None
    train_loss: float | None = None
    valid_loss: float | None = None
    valid_ic: float | None = None
    message: str = ""


class ModelRegistered(Event):
    type: Literal["model_registered"] = "model_registered"
    name: str
    version: str
    data_version: int | None = None
    feature_set: str | None = None


class DeploymentChanged(Event):
    type: Literal["deployment_changed"] = "deployment_changed"
    deployment: str
    split: dict[str, float]
    state: str
    reason: str = ""


class AlertRaised(Event):
    """An alert rule's breach began (``cluster.monitoring.alerts``)."""
    type: Literal["alert_raised"] = "alert_raised"
    alert: str                              # the alert's id (stable while it lasts)
    severity: Literal["info", "warning", "critical"] = "warning"
    value: float | None = None
    threshold: float | None = None
    message: str = ""
    rule: str = ""
    model: str | None = None
    version: str | None = None
    day: date | None = None
    action: str | None = None


class AlertResolved(AlertRaised):
    """The breach of a raised alert ended."""
    type: Literal["alert_resolved"] = "alert_resolved"


class LakeMaintained(Event):
    """``jobs.maintain`` ran: per table, the steps done and files/bytes before and after."""
    type: Literal["lake_maintained"] = "lake_maintained"
    tables: dict[str, dict] = {}
    steps: list[str] = []
    dry_run: bool = False
    seconds: float = 0.0


_EVENT_CLASSES = (DataSynced, FeaturesUpdated, TrainingProgress, ModelRegistered,
                  DeploymentChanged, AlertRaised, AlertResolved, LakeMaintained)
AnyEvent = Annotated[Union[_EVENT_CLASSES], Field(discriminator="type")]
_ADAPTER = TypeAdapter(AnyEvent)
EVENT_TYPES = [t.model_fields["type"].default for t in _EVENT_CLASSES]

SCHEMA = pa.schema([("offset", pa.int64()), ("id", pa.string()), ("type", pa.string()),
                    ("time", pa.timestamp("us", tz="UTC")), ("payload", pa.string())])
STATS_COLUMNS = ("offset", "type", "time")
# A publisher that keeps losing the race to other writers gives up after this many
# tries (each a few ms; contention is a handful of processes publishing at once).
MAX_ATTEMPTS = 100
Handler = Callable[[Event], Any]


def parse_event(payload: str | dict) -> Event:
    data = json.loads(payload) if isinstance(payload, str) else payload
    return _ADAPTER.validate_python(data)


class EventBus:
    """In-process subscribers plus, when ``lake_dir`` is given, the events table."""

    def __init__(self, lake_dir: Path | None = None):
        self.path = tables.table_path(lake_dir, "events") if lake_dir is not None else None
        self._handlers: dict[str, list[Handler]] = defaultdict(list)
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._table: DeltaTable | None = None  # kept open: a commit reads only new log entries

    def subscribe(self, event_type: str, handler: Handler) -> Callable[[], None]:
        """``event_type`` is one of EVENT_TYPES or ``"*"``. Returns an unsubscribe."""
        if event_type != "*" and event_type not in EVENT_TYPES:
            raise ValueError(f"unknown event type {event_type!r}; one of {EVENT_TYPES}")
        with self._lock:
            self._handlers[event_type].append(handler)

        def unsubscribe() -> None:
            with self._lock:
                if handler in self._handlers[event_type]:
                    self._handlers[event_type].remove(handler)
        return unsubscribe

    def publish(self, event: Event, persist: bool = True) -> None:
        if persist and self.path is not None:
            self._append([event])
        with self._lock:
            handlers = list(self._handlers[event.type]) + list(self._handlers["*"])
        for handler in handlers:
            try:
                handler(event)
            except Exception:  # a subscriber's bug must not break the publisher
                log.exception("event handler %r failed on %s", handler, event.type)

    def _append(self, events: list[Event]) -> None:
        spec = spec_for("events")
        with self._write_lock:
            for attempt in range(MAX_ATTEMPTS):
                base = self._open_for_write()
                offset = base.version() + 1 if base is not None else 0
                rows = [{"offset": offset, "id": e.id, "type": e.type, "time": e.time,
                         "payload": e.model_dump_json()} for e in events]
                written = tables.write_data_file(
                    self.path, pa.Table.from_pylist(rows, schema=SCHEMA), tables.data_file_name(),
                    row_group_rows=spec.row_group_rows, stats_columns=STATS_COLUMNS)
                try:
                    tables.commit_files(self.path, base, [written], SCHEMA,
                                        {"kind": "events", "offset": offset}, exact=True)
                    return
                except tables.WriteConflict:
                    tables.discard_files(self.path, [written])
                    self._table = None if base is None else base
                    time.sleep(random.uniform(0.001, 0.005 * min(attempt + 1, 10)))
            raise LakeError(f"publishing to {self.path}: lost the commit race "
                            f"{MAX_ATTEMPTS} times")

    def _open_for_write(self) -> DeltaTable | None:
        if self._table is None:
            if not tables.exists(self.path):
                return None
            self._table = tables.delta_table(self.path)
            layout.check("events", self._table)
        else:
            self._table.update_incremental()
        return self._table

    def _snapshot(self) -> DeltaTable | None:
        if self.path is None or not tables.exists(self.path):
            return None
        dt = tables.delta_table(self.path)
        layout.check("events", dt)
        return dt

    def read(self, after: int = -1, types: list[str] | None = None) -> list[tuple[int, Event]]:
        """Persisted events with offset > ``after``, oldest first, as (offset, event).
        Reads only the data files whose offset statistics reach past ``after``."""
        dt = self._snapshot()
        if dt is None:
            return []
        actions = tables.add_actions(dt)
        if actions.num_rows == 0:
            return []
        keep = pc.fill_null(pc.greater(actions["max.offset"], after), True)
        root = tables.uri_path(dt)
        files = [f"{root}/{p}" for p in actions.filter(keep).column("path").to_pylist()]
        if not files:
            return []
        expr = ds.field("offset") > after
        if types:
            expr = expr & ds.field("type").isin(list(types))
        table = storage.dataset(files, format="parquet", schema=SCHEMA).to_table(
            columns=["offset", "payload"], filter=expr).sort_by("offset")
        return [(int(o), parse_event(p)) for o, p in zip(table.column("offset").to_pylist(),
                                                        table.column("payload").to_pylist())]

    def last_offset(self) -> int:
        """The offset of the newest persisted event (-1 when none): ``read(after=
        last_offset())`` returns only events published after this call."""
        dt = self._snapshot()
        if dt is None:
            return -1
        actions = tables.add_actions(dt)
        if actions.num_rows == 0:
            return -1
        top = pc.max(actions["max.offset"]).as_py()
        return -1 if top is None else int(top)


_buses: dict[str, EventBus] = {}


def get_bus(lake_dir: Path | None = None) -> EventBus:
    """The process's bus for a lake (default: the settings' lake)."""
    if lake_dir is None:
        from cluster.config import get_settings
        lake_dir = get_settings().lake_dir
    lake_dir = storage.location(lake_dir)
    key = str(lake_dir.resolve())
    if key not in _buses:
        _buses[key] = EventBus(lake_dir)
    return _buses[key]

"""Typed events: publish/subscribe in process, persisted to an append-only table.

Each persisted event is one commit of the ``events`` Delta table, whose change
data feed gives every row its commit version: that version is the event's
*offset*, so another process reads "everything after offset N" exactly, even
when several writers publish at once.
"""
from __future__ import annotations

import json
import logging
import threading
import uuid
from collections import defaultdict
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Annotated, Any, Callable, Literal, Union

import pyarrow as pa
from deltalake import write_deltalake
from pydantic import BaseModel, Field, TypeAdapter

from cluster.lake import tables

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
    percent: float = 0.0
    epoch: int | None = None
    n_epochs: int | None = None
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
    type: Literal["alert_raised"] = "alert_raised"
    alert: str
    severity: Literal["info", "warning", "critical"] = "warning"
    value: float | None = None
    threshold: float | None = None
    message: str = ""


AnyEvent = Annotated[Union[DataSynced, FeaturesUpdated, TrainingProgress, ModelRegistered,
                           DeploymentChanged, AlertRaised], Field(discriminator="type")]
_ADAPTER = TypeAdapter(AnyEvent)
EVENT_TYPES = [t.model_fields["type"].default for t in
               (DataSynced, FeaturesUpdated, TrainingProgress, ModelRegistered,
                DeploymentChanged, AlertRaised)]

SCHEMA = pa.schema([("id", pa.string()), ("type", pa.string()),
                    ("time", pa.timestamp("us", tz="UTC")), ("payload", pa.string())])
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
        rows = [{"id": e.id, "type": e.type, "time": e.time, "payload": e.model_dump_json()}
                for e in events]
        write_deltalake(str(self.path), pa.Table.from_pylist(rows, schema=SCHEMA), mode="append",
                        configuration={"delta.enableChangeDataFeed": "true"})

    def read(self, after: int = -1, types: list[str] | None = None) -> list[tuple[int, Event]]:
        """Persisted events with offset > ``after``, oldest first, as (offset, event)."""
        if self.path is None or not tables.exists(self.path):
            return []
        dt = tables.open_table(self.path)
        if after >= dt.version():
            return []
        feed = pa.table(dt.load_cdf(starting_version=after + 1))
        out = []
        for row in feed.to_pylist():
            if row.get("_change_type", "insert") != "insert":
                continue
            if types and row["type"] not in types:
                continue
            out.append((int(row["_commit_version"]), parse_event(row["payload"])))
        out.sort(key=lambda item: item[0])
        return out

    def last_offset(self) -> int:
        if self.path is None or not tables.exists(self.path):
            return -1
        return tables.open_table(self.path).version()


_buses: dict[str, EventBus] = {}


def get_bus(lake_dir: Path | None = None) -> EventBus:
    """The process's bus for a lake (default: the settings' lake)."""
    if lake_dir is None:
        from cluster.config import get_settings
        lake_dir = get_settings().lake_dir
    key = str(Path(lake_dir).resolve())
    if key not in _buses:
        _buses[key] = EventBus(Path(lake_dir))
    return _buses[key]

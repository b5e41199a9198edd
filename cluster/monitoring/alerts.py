"""Alerts: rules evaluated once per cycle, raised on a breach, kept while it lasts,
resolved when it ends.

A *reading* is one rule evaluated on one subject (a model version, a node) in one
evaluation cycle (a trading day for the model rules, one monitor run for the
resource rules). :class:`AlertBook` turns readings into transitions:

- breached and no active alert for (rule, subject) -> ``raised`` (in this cycle);
- breached and active -> nothing (one alert per breach, however long it lasts);
- not breached and active -> ``resolved``;
- a subject without a reading in a cycle keeps its state (no evidence either way).

Rules (thresholds from ``mlops.monitoring``):

- ``accuracy_drop``: a version's rolling realised RankIC over the last
  ``accuracy_window_days`` evaluated days (at least ``accuracy_min_days`` of them)
  is below its test-segment RankIC by more than ``alert_thresholds.accuracy_drop``:
  value = test RankIC - rolling RankIC, breached when value > threshold;
- ``latency_ms``: the p99 latency of the version's served requests of the day
  above ``alert_thresholds.latency_ms``;
- ``drift_score``: the version's drift score of the day (``cluster.monitoring.drift``)
  above ``alert_thresholds.drift_score``;
- ``object_store``, ``node_cpu``, ``node_memory``: the used fraction of Ray's object
  store and of this node's CPU and memory above ``resource_thresholds``.

Every transition is appended to the ``alerts`` table, published as
``alert_raised`` / ``alert_resolved``, optionally POSTed to a webhook (retries
with exponential back-off), and a raise runs the rule's configured action
(``rollback`` | ``retrain``) through :class:`AlertActions`, which the job layer
implements (this package knows neither serving nor jobs).
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path

import pandas as pd

from cluster.monitoring.store import Table

log = logging.getLogger(__name__)

MODEL_RULES = ("accuracy_drop", "latency_ms", "drift_score")
RESOURCE_RULES = ("object_store", "node_cpu", "node_memory")


@dataclass(frozen=True)
class Reading:
    rule: str
    subject: str                 # model id ("name/version") or node id
    value: float | None
    threshold: float
    breached: bool
    day: date | None = None
    model: str | None = None
    version: str | None = None
    message: str = ""


@dataclass
class Transition:
    alert_id: str
    state: str                   # raised | resolved
    reading: Reading
    action: str | None = None
    action_result: str | None = None
    time: datetime = field(default_factory=lambda: datetime.now(timezone.utc))

    def to_dict(self) -> dict:
        r = self.reading
        return {"alert_id": self.alert_id, "rule": r.rule, "model": r.model,
                "version": r.version, "subject": r.subject,
                "day": r.day.isoformat() if r.day else None, "state": self.state,
                "value": r.value, "threshold": r.threshold, "message": r.message,
                "action": self.action, "action_result": self.action_result,
                "time": self.time.isoformat()}


def alert_id(rule: str, subject: str, day, when: str = "") -> str:
    raw = f"{rule}\x00{subject}\x00{day}\x00{when}"
    return hashlib.blake2b(raw.encode(), digest_size=8).hexdigest()


class AlertBook:
    """The active alerts, keyed by (rule, subject), and the transition rule."""

    def __init__(self, active: dict[tuple[str, str], str] | None = None):
        self.active: dict[tuple[str, str], str] = dict(active or {})   # -> alert_id

    def evaluate(self, readings: list[Reading]) -> list[Transition]:
        """One evaluation cycle; returns the transitions it caused."""
        out = []
        for r in readings:
            key = (r.rule, r.subject)
            if r.breached and key not in self.active:
                aid = alert_id(r.rule, r.subject, r.day, "" if r.day else time.time_ns())
                self.active[key] = aid
                out.append(Transition(aid, "raised", r))
            elif not r.breached and key in self.active:
                out.append(Transition(self.active.pop(key), "resolved", r))
        return out


# -- rules ----------------------------------------------------------------
def model_readings(row: dict, thresholds, accuracy_rank_ic: float | None) -> list[Reading]:
    """The model rules for one version's evaluated day (a monitoring table row plus the
    rolling RankIC of the accuracy rule's window, None while too few days)."""
    model_id = row["model_id"]
    name, _, version = model_id.rpartition("/")
    day = pd.Timestamp(row["date"]).date()
    base = dict(subject=model_id, day=day, model=name, version=version)
    out = []
    test = row.get("test_rank_ic")
    if accuracy_rank_ic is not None and test is not None and test == test:
        drop = float(test) - float(accuracy_rank_ic)
        out.append(Reading("accuracy_drop", value=round(drop, 6),
                           threshold=float(thresholds.accuracy_drop),
                           breached=drop > thresholds.accuracy_drop,
                           message=f"rolling realised RankIC {accuracy_rank_ic:.4f} vs test "
                                   f"RankIC {float(test):.4f}", **base))
    drift = row.get("drift_score")
    if drift is not None and drift == drift:
        out.append(Reading("drift_score", value=round(float(drift), 6),
                           threshold=float(thresholds.drift_score),
                           breached=float(drift) > thresholds.drift_score,
                           message=f"{row.get('drifting_features')} feature(s) drifting",
                           **base))
    p99 = row.get("p99_ms")
    if p99 is not None and p99 == p99 and (row.get("requests") or 0) > 0:
        out.append(Reading("latency_ms", value=float(p99),
                           threshold=float(thresholds.latency_ms),
                           breached=float(p99) > thresholds.latency_ms,
                           message=f"p99 of {row.get('requests')} served request(s)", **base))
    return out


def resource_readings(usage: dict[str, float], thresholds, node: str = "node") -> list[Reading]:
    """``usage``: rule -> used fraction (see ``cluster.monitoring.resources``)."""
    out = []
    for rule in RESOURCE_RULES:
        if rule in usage and usage[rule] is not None:
            limit = float(getattr(thresholds, rule))
            out.append(Reading(rule, subject=node, value=round(float(usage[rule]), 4),
                               threshold=limit, breached=float(usage[rule]) > limit,
                               message=f"{rule} at {usage[rule]:.0%}"))
    return out


# -- the alerts table -------------------------------------------------------
class AlertsTable:
    def __init__(self, lake_dir: Path):
        self.table = Table(lake_dir, "alerts")

    def append(self, transitions: list[Transition], actor: str = "monitor") -> None:
        if transitions:
            rows = pd.DataFrame([t.to_dict() | {"actor": actor} for t in transitions])
            self.table.append(rows)

    def history(self) -> pd.DataFrame:
        return self.table.read()

    def current(self) -> pd.DataFrame:
        """One row per alert: its first row (when and why it was raised) with the latest
        state, resolution day and acknowledgement."""
        h = self.history()
        if h.empty:
            return h.assign(resolved_day=None, acked_by=None)
        h = h.sort_values("time", kind="stable")
        first = h[h["state"] == "raised"].drop_duplicates("alert_id", keep="first")
        moves = h[h["state"] != "acked"].drop_duplicates("alert_id", keep="last")
        acks = h[h["state"] == "acked"].drop_duplicates("alert_id", keep="last")
        out = first.set_index("alert_id")
        out["state"] = moves.set_index("alert_id")["state"]
        resolved = moves[moves["state"] == "resolved"].set_index("alert_id")["day"]
        out["resolved_day"] = resolved
        out["acked_by"] = acks.set_index("alert_id")["actor"]
        return out.reset_index()

    def active(self) -> dict[tuple[str, str], str]:
        cur = self.current()
        if cur.empty:
            return {}
        live = cur[cur["state"] == "raised"]
        return {(r.rule, r.subject): r.alert_id for r in live.itertuples()}

    def ack(self, alert_id_: str, actor: str, message: str = "") -> dict:
        cur = self.current()
        row = cur[cur["alert_id"] == alert_id_]
        if row.empty:
            raise KeyError(f"no alert {alert_id_!r}")
        r = row.iloc[0]
        self.table.append(pd.DataFrame([{
            "alert_id": alert_id_, "rule": r["rule"], "model": r["model"],
            "version": r["version"], "subject": r["subject"], "day": r["day"],
            "state": "acked", "value": r["value"], "threshold": r["threshold"],
            "message": message, "actor": actor, "time": datetime.now(timezone.utc)}]))
        return {"alert_id": alert_id_, "acked_by": actor}


# -- what a transition does beyond the table -------------------------------
class AlertActions:
    """What a rule's action does. The job layer (``jobs/monitor.py``) subclasses it and
    wires ``rollback`` to serving's control plane and ``retrain`` to job submission;
    this default records that nothing was wired. Each returns a short result text."""

    def rollback(self, transition: Transition) -> str:
        return "not wired: no control plane in this process"

    def retrain(self, transition: Transition) -> str:
        return "not wired: no job submission in this process"


def post_webhook(url: str, payload: dict, retries: int = 3, backoff_s: float = 0.5,
                 timeout_s: float = 5.0) -> tuple[bool, int]:
    """POST ``payload`` as JSON; retry on connection errors and 5xx/429 with delays of
    ``backoff_s * 2**attempt``. Returns (delivered, attempts)."""
    body = json.dumps(payload, default=str).encode()
    for attempt in range(retries + 1):
        req = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout_s) as res:
                if 200 <= res.status < 300:
                    return True, attempt + 1
        except urllib.error.HTTPError as exc:
            if exc.code < 500 and exc.code != 429:
                log.warning("webhook %s refused the alert: HTTP %s", url, exc.code)
                return False, attempt + 1
        except (urllib.error.URLError, OSError) as exc:
            log.debug("webhook %s attempt %d failed: %s", url, attempt + 1, exc)
        if attempt < retries:
            time.sleep(backoff_s * 2 ** attempt)
    log.warning("webhook %s: alert not delivered after %d attempts", url, retries + 1)
    return False, retries + 1


class AlertDispatcher:
    """Runs a cycle's transitions: action (on raise), table, events, webhook."""

    def __init__(self, lake_dir: Path, monitoring_settings, bus=None,
                 actions: AlertActions | None = None):
        self.settings = monitoring_settings
        self.table = AlertsTable(lake_dir)
        self.bus = bus
        self.actions = actions or AlertActions()

    def dispatch(self, transitions: list[Transition]) -> list[dict]:
        from cluster.events import AlertRaised, AlertResolved
        for t in transitions:
            if t.state == "raised":
                action = self.settings.actions.get(t.reading.rule)
                if action:
                    t.action = action
                    try:
                        t.action_result = getattr(self.actions, action)(t)
                    except Exception as exc:   # an action's failure must not lose the alert
                        log.exception("%s action for alert %s failed", action, t.alert_id)
                        t.action_result = f"failed: {type(exc).__name__}: {exc}"
        self.table.append(transitions)
        out = []
        for t in transitions:
            d = t.to_dict()
            out.append(d)
            if self.bus is not None:
                cls = AlertRaised if t.state == "raised" else AlertResolved
                r = t.reading
                severity = "critical" if r.rule in ("accuracy_drop",) else "warning"
                try:
                    self.bus.publish(cls(alert=t.alert_id, rule=r.rule, severity=severity,
                                         value=r.value, threshold=r.threshold,
                                         message=r.message, model=r.model, version=r.version,
                                         day=r.day, action=t.action))
                except Exception as exc:
                    log.warning("publishing %s failed: %s", cls.__name__, exc)
            if self.settings.webhook_url:
                ok, attempts = post_webhook(self.settings.webhook_url, d,
                                            self.settings.webhook_retries,
                                            self.settings.webhook_backoff_s)
                d["webhook"] = {"delivered": ok, "attempts": attempts}
        return out


def readings_frame(readings: list[Reading]) -> pd.DataFrame:
    return pd.DataFrame([asdict(r) for r in readings])

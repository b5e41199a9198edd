"""Alerts: Property 6 (raised within one evaluation cycle of a breach, de-duplicated
while it lasts, resolved when it ends), the alerts table, events and the webhook."""
from __future__ import annotations

import json
import threading
from datetime import date, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from hypothesis import given
from hypothesis import strategies as st

from cluster.config import load_settings
from cluster.events import EventBus
from cluster.monitoring import alerts as A

RULES = ("accuracy_drop", "drift_score", "latency_ms")
SUBJECTS = ("m/1", "m/2", "node")

# A metric stream: per evaluation cycle, a value (or None: no reading) per (rule, subject).
streams = st.lists(st.fixed_dictionaries(
    {(r, s): st.one_of(st.none(), st.floats(0, 1, allow_nan=False))
     for r in RULES for s in SUBJECTS}), min_size=1, max_size=25)


@given(streams, st.floats(0.05, 0.95))
def test_property_6_alerts_follow_breaches(stream, threshold):
    book = A.AlertBook()
    active: dict = {}             # the reference: (rule, subject) -> alert id
    raised_ids = []
    for cycle, values in enumerate(stream):
        day = date(2020, 1, 1) + timedelta(days=cycle)
        readings = [A.Reading(rule, subject, v, threshold, v > threshold, day=day)
                    for (rule, subject), v in values.items() if v is not None]
        moves = book.evaluate(readings)
        by_key = {(t.reading.rule, t.reading.subject): t for t in moves}
        assert len(by_key) == len(moves), "one transition per rule and subject per cycle"
        for (rule, subject), v in values.items():
            key, t = (rule, subject), by_key.get((rule, subject))
            if v is None:
                assert t is None                       # no reading: state kept
            elif v > threshold and key not in active:
                assert t is not None and t.state == "raised" and t.reading.day == day
                active[key] = t.alert_id
                raised_ids.append(t.alert_id)
            elif v > threshold:
                assert t is None, "a lasting breach is not raised again"
            elif key in active:
                assert t is not None and t.state == "resolved"
                assert t.alert_id == active.pop(key), "the same alert is resolved"
            else:
                assert t is None
        assert book.active == active
    assert len(raised_ids) == len(set(raised_ids))


def test_model_rules_follow_the_documented_thresholds():
    th = load_settings().monitoring.alert_thresholds
    row = {"model_id": "m/3", "date": "2020-02-03", "test_rank_ic": 0.06, "drift_score": 0.31,
           "drifting_features": 40, "p99_ms": 2000.0, "requests": 9}
    got = {r.rule: r for r in A.model_readings(row, th, accuracy_rank_ic=0.0)}
    assert got["accuracy_drop"].breached and got["accuracy_drop"].value == 0.06
    assert got["drift_score"].breached == (0.31 > th.drift_score)
    assert got["latency_ms"].breached == (2000.0 > th.latency_ms)
    calm = {r.rule: r for r in A.model_readings(row | {"p99_ms": 5.0, "drift_score": 0.0}, th,
                                                accuracy_rank_ic=0.05)}
    assert not any(r.breached for r in calm.values())
    assert "accuracy_drop" not in {r.rule for r in A.model_readings(row, th, None)}, \
        "too few days: no accuracy reading"


def test_alerts_table_events_and_ack(tmp_path):
    settings = load_settings(home=tmp_path)
    bus = EventBus(settings.lake_dir)
    d = A.AlertDispatcher(settings.lake_dir, settings.monitoring, bus)
    book = A.AlertBook(d.table.active())
    r = dict(subject="m/1", threshold=0.3, model="m", version="1")
    d.dispatch(book.evaluate([A.Reading("drift_score", value=0.5, breached=True,
                                        day=date(2020, 1, 2), **r)]))
    # a new process resumes from the table: the lasting breach is not raised again
    book = A.AlertBook(A.AlertsTable(settings.lake_dir).active())
    assert book.evaluate([A.Reading("drift_score", value=0.6, breached=True,
                                    day=date(2020, 1, 3), **r)]) == []
    d.dispatch(book.evaluate([A.Reading("drift_score", value=0.1, breached=False,
                                        day=date(2020, 1, 6), **r)]))
    table = A.AlertsTable(settings.lake_dir)
    cur = table.current()
    assert len(cur) == 1 and cur.iloc[0]["state"] == "resolved"
    assert str(cur.iloc[0]["resolved_day"].date()) == "2020-01-06"
    table.ack(cur.iloc[0]["alert_id"], "ops@desk")
    assert table.current().iloc[0]["acked_by"] == "ops@desk"
    events = [e for _, e in bus.read(-1, ["alert_raised", "alert_resolved"])]
    assert [(e.type, e.rule, str(e.day)) for e in events] == [
        ("alert_raised", "drift_score", "2020-01-02"), ("alert_resolved", "drift_score",
                                                        "2020-01-06")]
    assert events[0].alert == events[1].alert


class _Hook(BaseHTTPRequestHandler):
    fail_first = 0
    received: list = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).received.append(body)
        code = 503 if len(type(self).received) <= type(self).fail_first else 200
        self.send_response(code)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_webhook_is_retried_with_back_off(tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/hook"
    try:
        _Hook.fail_first, _Hook.received = 2, []
        settings = load_settings(home=tmp_path, monitoring={
            "webhook_url": url, "webhook_retries": 3, "webhook_backoff_s": 0.01})
        d = A.AlertDispatcher(settings.lake_dir, settings.monitoring)
        out = d.dispatch(A.AlertBook().evaluate([A.Reading(
            "latency_ms", "m/1", 1500.0, 1000.0, True, day=date(2020, 1, 2), model="m",
            version="1")]))
        assert out[0]["webhook"] == {"delivered": True, "attempts": 3}
        assert len(_Hook.received) == 3 and _Hook.received[-1]["rule"] == "latency_ms"
        assert _Hook.received[-1]["state"] == "raised"
    finally:
        server.shutdown()
        server.server_close()
    # nobody listening: gives up after the retries, the alert is still recorded
    ok, attempts = A.post_webhook(url, {"x": 1}, retries=2, backoff_s=0.01, timeout_s=0.5)
    assert (ok, attempts) == (False, 3)


def test_resource_rules_read_their_thresholds():
    th = load_settings().monitoring.resource_thresholds
    got = {r.rule: r for r in A.resource_readings(
        {"object_store": 0.95, "node_cpu": 0.2, "node_memory": 0.5}, th, node="n1")}
    assert got["object_store"].breached and not got["node_cpu"].breached
    assert not got["node_memory"].breached and got["object_store"].subject == "n1"
    from cluster.monitoring.usage import resource_usage
    usage = resource_usage()          # psutil always; the object store only under Ray
    assert 0.0 <= usage["node_cpu"] <= 1.0 and 0.0 < usage["node_memory"] < 1.0

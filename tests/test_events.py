"""Event bus: typed events, in-process subscribers, an append-only table read by offset."""
import subprocess
import sys
from datetime import date

import pytest

from cluster.events import (AlertRaised, DataSynced, EventBus, TrainingProgress, parse_event)
from tests.conftest import ROOT


def test_publish_subscribe_and_persist(tmp_path):
    bus = EventBus(tmp_path)
    seen, everything = [], []
    bus.subscribe("data_synced", seen.append)
    unsubscribe = bus.subscribe("*", everything.append)
    bus.publish(DataSynced(data_version=0, instruments=["A"], start=date(2020, 1, 1),
                           end=date(2020, 1, 2)))
    bus.publish(AlertRaised(alert="latency", value=1200, threshold=1000))
    unsubscribe()
    bus.publish(TrainingProgress(run_id="r", model="lightgbm", stage="training", percent=50))
    assert [e.type for e in seen] == ["data_synced"]
    assert [e.type for e in everything] == ["data_synced", "alert_raised"]
    events = bus.read()
    assert [(o, e.type) for o, e in events] == [(0, "data_synced"), (1, "alert_raised"),
                                               (2, "training_progress")]
    assert events[0][1].start == date(2020, 1, 1)
    assert [e.type for _, e in bus.read(after=1)] == ["training_progress"]
    assert bus.read(after=2) == []
    assert [e.type for _, e in bus.read(types=["alert_raised"])] == ["alert_raised"]


def test_failing_subscriber_does_not_break_publisher(tmp_path):
    bus = EventBus(None)
    got = []

    def broken(event):
        raise RuntimeError("bug in a subscriber")
    bus.subscribe("alert_raised", broken)
    bus.subscribe("alert_raised", got.append)
    bus.publish(AlertRaised(alert="x"))
    assert len(got) == 1


def test_unknown_type_is_refused():
    with pytest.raises(ValueError, match="unknown event type"):
        EventBus(None).subscribe("data_syncd", print)
    with pytest.raises(Exception):
        parse_event({"type": "nope"})


def test_another_process_reads_from_an_offset(tmp_path):
    bus = EventBus(tmp_path)
    bus.publish(AlertRaised(alert="first"))
    code = ("import sys; from pathlib import Path; from cluster.events import EventBus, AlertRaised;"
            "b = EventBus(Path(sys.argv[1])); b.publish(AlertRaised(alert='from-child'));"
            "print([e.alert for _, e in b.read(after=0)])")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True,
                         text=True, cwd=ROOT, check=True).stdout
    assert "from-child" in out
    assert [e.alert for _, e in bus.read(after=0)] == ["from-child"]


def test_concurrent_publishers_get_distinct_offsets_and_leave_no_stray_file(tmp_path):
    """Three processes publish at once: every event lands once, each with its own
    offset (its commit's version), and a lost commit race leaves no data file behind."""
    code = ("import sys; from pathlib import Path; from cluster.events import EventBus, AlertRaised;"
            "b = EventBus(Path(sys.argv[1]));"
            "[b.publish(AlertRaised(alert=f'{sys.argv[2]}-{i}')) for i in range(8)]")
    EventBus(tmp_path).publish(AlertRaised(alert="seed"))  # the table exists before the race
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path), f"p{k}"], cwd=ROOT)
             for k in range(3)]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    bus = EventBus(tmp_path)
    events = bus.read()
    offsets = [o for o, _ in events]
    assert len(events) == 25 and offsets == sorted(set(offsets))
    assert sorted(e.alert for _, e in events[1:]) == sorted(f"p{k}-{i}" for k in range(3)
                                                            for i in range(8))
    assert bus.last_offset() == offsets[-1]
    data_files = list((tmp_path / "events").glob("*.parquet"))
    assert len(data_files) == 25


def test_maintenance_while_others_publish_loses_and_repeats_nothing(tmp_path):
    """jobs.maintain compacts and vacuums the events table while two processes publish:
    afterwards every event is there once, offsets strictly increasing, and reading after
    any offset gives exactly the events published after it."""
    from cluster.config import load_settings
    from cluster.lake.maintain import maintain
    settings = load_settings(home=tmp_path, lake={"retain_versions": 1})
    bus = EventBus(settings.lake_dir)
    bus.publish(AlertRaised(alert="seed"))
    code = ("import sys, time; from pathlib import Path; from cluster.events import EventBus, "
            "AlertRaised; b = EventBus(Path(sys.argv[1]));"
            "[(b.publish(AlertRaised(alert=f'{sys.argv[2]}-{i}')), time.sleep(0.05)) "
            "for i in range(10)]")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(settings.lake_dir), f"p{k}"],
                              cwd=ROOT) for k in range(2)]
    summaries = []
    while any(p.poll() is None for p in procs):
        summaries.append(maintain(settings, ["events"], ["compact", "zorder", "vacuum"]))
    assert all(p.wait(timeout=120) == 0 for p in procs)
    events = EventBus(settings.lake_dir).read(types=["alert_raised"])
    offsets = [o for o, _ in events]
    assert offsets == sorted(set(offsets))
    assert sorted(e.alert for _, e in events) == sorted(
        ["seed"] + [f"p{k}-{i}" for k in range(2) for i in range(10)])
    everything = EventBus(settings.lake_dir).read()
    for o, _ in everything[::3]:
        assert EventBus(settings.lake_dir).read(after=o) == [x for x in everything if x[0] > o]
    assert summaries and all(not s["errors"] for s in summaries), summaries[-1]["errors"]

"""Rollouts in process: canary promotion, automatic rollback on an injected failure
(errors, slowness, a failed health check, a worse IC) with zero failed client
requests (seed Property 5), blue-green switch-back, sticky A/B, shadow."""
from __future__ import annotations

import collections
import time
import uuid

import pandas as pd
import pytest

from cluster.events import EventBus
from cluster.registry.store import ModelRegistry
from serving.predictions import read_predictions
from tests.test_serving_support import (TOKENS, BrokenModel, FlakyModel, InvertedModel, SlowModel,
                                        auth, deploy, drive, in_process, register, row_body,
                                        serving_home, wait_state)  # noqa: F401 (fixture)

DONE = ("promoted", "rolled_back", "failed")


@pytest.fixture
def stable(serving_home):
    """A fresh deployment whose stable version is a fresh m/N."""
    settings, models = serving_home
    name = f"t-{uuid.uuid4().hex[:8]}"
    with in_process(settings, name) as (client, plane, runtime):
        incumbent = register(settings, models[0])
        deploy(plane, incumbent, "blue_green")
        wait_state(plane, ("promoted",))
        yield settings, models, client, plane, runtime, incumbent


def wait_applied(client, runtime, revision: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while runtime.snapshot.revision < revision:
        assert time.monotonic() < deadline, "the replica did not apply the new policy in time"
        client.get("/healthz")          # lets the in-process server's loop run


def states(settings, *model_ids):
    reg = ModelRegistry(home=settings.home)
    return [reg.state(*m.split("/")) for m in model_ids]


def test_canary_steps_promote_and_registry_and_events_follow(stable):
    settings, models, client, plane, runtime, incumbent = stable
    candidate = register(settings, models[1])
    after = EventBus(settings.lake_dir).last_offset()
    deploy(plane, candidate, "canary", steps=[20, 60], window_s=0.3)
    seen = drive(client, plane, DONE, row_body)
    assert all(code == 200 for code, *_ in seen)
    status = plane.status()
    assert status["state"] == "promoted" and not status["rolled_back"]
    assert status["split"] == {candidate: 1.0, incumbent: 0.0}
    assert status["stable"] == candidate and status["standby"] == incumbent
    assert {v for _, v, _ in seen} == {incumbent, candidate}
    assert states(settings, candidate, incumbent) == ["production", "deprecated"]
    events = [e for _, e in EventBus(settings.lake_dir).read(after, ["deployment_changed"])
              if e.deployment == plane.deployment]
    assert [e.state for e in events] == ["staging", "canary", "canary", "canary", "promoted"]
    assert [e.split.get(candidate, 0.0) for e in events] == [0.0, 0.2, 0.6, 1.0, 1.0]
    history = [h["event"] for h in status["history"]]
    assert history[-2:] == ["canary", "promoted"]


@pytest.mark.parametrize("fault,gates,reason", [
    (FlakyModel, {}, "error rate"),
    (lambda m: SlowModel(m, 0.06), {"p99_ms": 30.0}, "p99 latency"),
])
def test_failing_canary_rolls_back_with_zero_failed_requests(stable, fault, gates, reason):
    """Property 5: a canary that errors (or is slow) is rolled back to the previous
    stable version automatically, and no client request fails along the way."""
    settings, models, client, plane, runtime, incumbent = stable
    candidate = register(settings, fault(models[1]))
    deploy(plane, candidate, "canary", steps=[50, 100], window_s=5.0, gates=dict(gates))
    seen = drive(client, plane, DONE, row_body)
    assert [c for c, *_ in seen] == [200] * len(seen), "a client request failed"
    status = plane.status()
    assert status["state"] == "rolled_back" and status["rolled_back"]
    assert reason in status["rollout"]["reason"]
    assert status["split"] == {incumbent: 1.0} and status["stable"] == incumbent
    assert states(settings, candidate, incumbent) == ["validated", "production"]
    if fault is FlakyModel:
        assert status["stats"][candidate]["errors"] > 0
        # the chosen arm is recorded also when the stable version answered for it
        runtime.sink.flush()
        table = read_predictions(settings.lake_dir)
        fell_back = table[(table.arm == candidate) & (table.version == incumbent)]
        assert len(fell_back) > 0 and set(fell_back.rollout_id) == {status["rollout"]["id"]}
    # after the switch every request is answered by the stable version
    after = [client.post("/predict", json=row_body(i), headers=auth("viewer")) for i in range(20)]
    assert {(r.status_code, r.json()["version"]) for r in after} == {(200, incumbent)}
    assert candidate not in runtime.snapshot.versions, "the rolled-back version is unloaded"


def test_unhealthy_version_is_refused_before_any_traffic(stable):
    settings, models, client, plane, runtime, incumbent = stable
    candidate = register(settings, BrokenModel(models[1]))
    deploy(plane, candidate, "blue_green")
    seen = drive(client, plane, DONE, row_body)
    status = plane.status()
    assert status["state"] == "rolled_back" and "health check" in status["rollout"]["reason"]
    assert {v for _, v, _ in seen} <= {incumbent} and all(c == 200 for c, *_ in seen)
    assert status["split"] == {incumbent: 1.0}
    events = [h for h in status["history"] if h.get("split", {}).get(candidate)]
    assert events == [], "the broken version never had a traffic share"


def test_blue_green_switches_at_once_and_back_instantly(stable):
    settings, models, client, plane, runtime, incumbent = stable
    candidate = register(settings, models[1])
    deploy(plane, candidate, "blue_green", window_s=0.3)
    drive(client, plane, DONE, row_body)
    assert plane.status()["state"] == "promoted"
    # the promoted split is all-or-nothing: every answer now comes from the new version
    answers = {client.post("/predict", json=row_body(i), headers=auth("viewer")).json()["version"]
               for i in range(30)}
    assert answers == {candidate}
    assert set(runtime.snapshot.versions) == {candidate, incumbent}, "old version kept warm"
    res = client.post(f"/api/deployments/{plane.deployment}/rollback",
                      json={"reason": "switch back"}, headers=auth("operator"))
    assert res.status_code == 200 and res.json()["split"] == {incumbent: 1.0, candidate: 0.0}
    # instant: both versions are loaded, so the replica's next sync only swaps the policy
    wait_applied(client, runtime, plane.revision, timeout=1.0)
    versions = {client.post("/predict", json=row_body(i), headers=auth("viewer")).json()["version"]
                for i in range(30)}
    assert versions == {incumbent}
    assert states(settings, candidate, incumbent) == ["deprecated", "production"]


def test_sticky_ab_split_keeps_each_key_on_its_arm(stable):
    settings, models, client, plane, runtime, incumbent = stable
    candidate = register(settings, models[1])
    deploy(plane, candidate, "ab", weights=[50, 50])
    wait_state(plane, ("ab",))      # reported once every live replica routes with the split
    assert runtime.snapshot.policy.shares() == {incumbent: 0.5, candidate: 0.5}
    arms = collections.defaultdict(set)
    for rnd in range(3):
        for k in range(60):
            res = client.post("/predict", json=row_body(k) | {"key": f"client-{k}"},
                              headers=auth("viewer"))
            assert res.status_code == 200
            arms[f"client-{k}"].add(res.json()["version"])
        # a sticky header works like the body key
        res = client.post("/predict", json=row_body(0), headers=auth("viewer") |
                          {"X-Client-Id": "client-0"})
        arms["client-0"].add(res.json()["version"])
    assert all(len(v) == 1 for v in arms.values()), "a sticky key switched arms"
    shares = collections.Counter(next(iter(v)) for v in arms.values())
    assert set(shares) == {incumbent, candidate} and min(shares.values()) >= 15
    assert plane.status()["state"] == "ab", "an A/B test runs until stopped"
    other = register(settings, models[0])
    res = client.post(f"/api/models/{other}/deploy", json={}, headers=auth("operator"))
    assert res.status_code == 409 and "running" in res.json()["detail"]
    res = client.post(f"/api/deployments/{plane.deployment}/promote", headers=auth("operator"))
    assert res.status_code == 200 and res.json()["state"] == "promoted"
    assert states(settings, candidate) == ["production"]


def test_shadow_answers_are_recorded_never_returned(stable):
    settings, models, client, plane, runtime, incumbent = stable
    candidate = register(settings, InvertedModel(models[1]))
    deploy(plane, candidate, "shadow")
    wait_state(plane, ("shadow",))
    wait_applied(client, runtime, plane.revision)
    assert [v.model_id for v in runtime.snapshot.shadows] == [candidate]
    ids = []
    for i in range(25):
        res = client.post("/predict", json={"instruments": ["S001", "S002"],
                                            "date": "2019-05-01"} if i % 2 else row_body(i),
                          headers=auth("viewer"))
        assert res.status_code == 200 and res.json()["version"] == incumbent
        assert res.headers["X-Model-Version"] == incumbent
        ids.append((res.json()["request_id"], res.json()["predictions"]))
    deadline = time.monotonic() + 10
    while runtime._shadow_pending or plane.status()["stats"].get(candidate, {}).get(
            "requests", 0) < len(ids):
        assert time.monotonic() < deadline, "shadow predictions did not reach the statistics"
        client.get("/healthz")
    runtime.sink.flush()
    table = read_predictions(settings.lake_dir)
    for rid, served in ids:
        rows = table[table.request_id == rid]
        live = rows[~rows.shadow]
        shadow = rows[rows.shadow]
        assert set(live.version) == {incumbent} and list(live.output) == pytest.approx(served)
        assert set(shadow.version) == {candidate} and len(shadow) == len(live)
        assert list(shadow.output) != pytest.approx(served), "shadow computed its own answers"
        assert set(live.source) == {"served"} and set(shadow.source) == {"shadow"}
        assert (live.arm == live.version).all() and live.revision.notna().all()
        assert live.rollout_id.notna().all() and set(shadow.rollout_id) == set(live.rollout_id)
        if live.instrument.notna().all():
            assert live.features_version.notna().all()
    assert plane.status()["stats"][candidate]["errors"] == 0
    res = client.post(f"/api/deployments/{plane.deployment}/rollback", headers=auth("operator"))
    assert res.json()["state"] == "rolled_back" and res.json()["shadow"] == []


def test_canary_with_a_worse_ic_is_rolled_back(stable):
    """Where realised returns exist (past dates in the features table), the canary's
    daily IC is compared with the incumbent's."""
    settings, models, client, plane, runtime, incumbent = stable
    candidate = register(settings, InvertedModel(models[0]))
    deploy(plane, candidate, "canary", steps=[50], window_s=30.0,
           gates={"min_ic_dates": 3, "max_ic_drop": 0.05})
    dates = [str(d.date()) for d in pd.bdate_range("2019-05-01", periods=16)]
    instruments = [f"S{i:03d}" for i in range(30)]
    seen = drive(client, plane, DONE, lambda i: {"instruments": instruments,
                                                 "date": dates[i % len(dates)]})
    assert [c for c, *_ in seen] == [200] * len(seen)
    status = plane.status()
    assert status["state"] == "rolled_back", status["rollout"]
    assert "IC" in status["rollout"]["reason"]
    ic = {c["gate"]: c for c in status["rollout"]["gates"]["checks"]}["ic"]
    assert ic["value"] < 0 < ic["incumbent"]


def test_restarted_control_plane_serves_the_last_stable_version(stable):
    from serving.control import ControlPlane
    settings, models, client, plane, runtime, incumbent = stable
    again = ControlPlane(plane.deployment, settings=settings)
    desired = again.desired()
    assert desired["stable"] == incumbent and desired["policy"]["weights"] == {incumbent: 1.0}
    with pytest.raises(Exception, match="already the stable"):
        again.deploy(incumbent, "canary", token=TOKENS["operator"])


def test_monitor_rollback_action_goes_through_the_rollout_controller(stable):
    """An alert whose rule names the ``rollback`` action (jobs.monitor's wiring) switches
    the deployment back to the previous version and records what it did."""
    from datetime import date

    from cluster.monitoring import alerts as A
    from jobs.monitor import JobActions
    settings, models, client, plane, runtime, incumbent = stable
    candidate = register(settings, models[1])
    deploy(plane, candidate, "blue_green", window_s=0.0)
    wait_state(plane, ("promoted",))
    assert plane.status()["stable"] == candidate
    mon = settings.monitoring.model_copy(update={"actions": {"accuracy_drop": "rollback"}})
    name, _, version = candidate.rpartition("/")
    out = A.AlertDispatcher(settings.lake_dir, mon, None, JobActions(settings, control=plane,
                                                           token=TOKENS["operator"])) \
        .dispatch(A.AlertBook().evaluate([A.Reading(
            "accuracy_drop", candidate, 0.09, 0.05, True, day=date(2020, 3, 2), model=name,
            version=version)]))
    status = plane.status()
    assert status["state"] == "rolled_back" and status["stable"] == incumbent
    assert out[0]["action"] == "rollback" and incumbent in out[0]["action_result"]
    assert "accuracy_drop" in status["history"][-1]["detail"]
    row = A.AlertsTable(settings.lake_dir).current().iloc[-1]
    assert row["action"] == "rollback" and row["state"] == "raised"

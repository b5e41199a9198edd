"""The control plane's one authorised path (tokens, audit of every mutating call, the
gates' own moves and refusals included), its reconciliation at start, and the actor
killed mid-canary: Ray restarts it, replicas keep their handle, the rollout resumes
with its gates."""
from __future__ import annotations

import os
import signal
import time
import uuid

import pytest

from serving.auth import AuditLog
from tests.test_serving_support import (TOKENS, FlakyModel, deploy, drive, in_process, register,
                                        row_body, serving_home, wait_state)  # noqa: F401

DONE = ("promoted", "rolled_back", "failed")


def _records(settings, since: int) -> list[dict]:
    return AuditLog.from_settings(settings).read()[since:]


def test_control_calls_need_an_operator_token_and_are_audited(serving_home):
    from serving.control import Forbidden, Unauthorized
    settings, models = serving_home
    name = f"auth-{uuid.uuid4().hex[:6]}"
    start = len(AuditLog.from_settings(settings).read())
    with in_process(settings, name) as (client, plane, _):
        incumbent = register(settings, models[0])
        for token, error in ((None, Unauthorized), ("nope", Unauthorized),
                             (TOKENS["viewer"], Forbidden)):
            with pytest.raises(error):
                plane.deploy(incumbent, "blue_green", token=token)
            with pytest.raises(error):
                plane.rollback("ray-client", token=token)
        assert plane.status()["state"] == "empty" and plane.revision == 0
        refused = _records(settings, start)
        assert [r["result"] for r in refused] == ["refused: 401"] * 4 + ["refused: 403"] * 2
        assert refused[0]["who"] == "anonymous" and refused[-1]["who"].startswith("viewer:")
        assert refused[0]["action"] == f"deploy {name}:{incumbent}"
        assert all("tok-" not in str(r) for r in refused)

        mark = len(AuditLog.from_settings(settings).read())
        deploy(plane, incumbent, "blue_green")
        wait_state(plane, ("promoted",))
        flaky = register(settings, FlakyModel(models[1]))
        deploy(plane, flaky, "canary", steps=[50, 100], window_s=5.0)
        seen = drive(client, plane, DONE, row_body)
        assert {c for c, *_ in seen} == {200} and plane.status()["state"] == "rolled_back"
        records = _records(settings, mark)
        by_action = [(r["action"].split()[0], r["result"], r["who"]) for r in records]
        assert by_action[0] == ("deploy", "ok", by_action[0][2])
        assert by_action[0][2].startswith("operator:")
        # the first deployment's automatic promotion, then the gates' rollback
        auto = [r for r in records if r["who"].startswith("rollout:")]
        assert [(r["action"].split()[0], r["result"]) for r in auto] == [
            ("promote", "ok"), ("rollback", "rolled_back")]
        assert auto[-1]["detail"]["automatic"] is True
        assert "error rate" in auto[-1]["detail"]["reason"]
        assert auto[-1]["action"] == f"rollback {name}:{flaky}"


def test_heartbeats_must_be_sealed_with_the_deployments_key(serving_home):
    """A caller without the deployment's key cannot feed the gates: a forged, altered,
    replayed or stale heartbeat is refused before its numbers are counted, and the
    refusal is audited (at most once a minute)."""
    from serving.control import ControlPlane, Unauthorized
    from serving.heartbeat import HeartbeatSealer, heartbeat_key
    from serving.stats import StatsBook
    settings, models = serving_home
    name = f"beat-{uuid.uuid4().hex[:6]}"
    plane = ControlPlane(name, settings=settings)
    stats = StatsBook()
    for _ in range(50):
        stats.get("m/2").ok(1.0)
    wire = stats.drain()
    mark = len(AuditLog.from_settings(settings).read())
    forger = HeartbeatSealer(b"k" * 32, "r-forged")                 # not the key
    other = HeartbeatSealer(heartbeat_key(settings, "another-deployment"), "r-other")
    for body, mac in (forger.seal(0, {}, wire), other.seal(0, {}, wire),
                      ("{}", "00"), (None, None)):
        with pytest.raises(Unauthorized, match="heartbeat refused"):
            plane.sync(body, mac)
    replica = HeartbeatSealer(heartbeat_key(settings, name), "r-1")
    body, mac = replica.seal(-1, {}, wire)     # a fresh replica: nothing applied yet
    with pytest.raises(Unauthorized, match="not sealed"):     # one byte changed
        plane.sync(body.replace('"requests":50', '"requests":51'), mac)
    assert plane.sync(body, mac) == plane.desired()     # behind: gets the desired state
    assert set(plane.live_replicas()) == {"r-1"}
    with pytest.raises(Unauthorized, match="replay"):
        plane.sync(body, mac)
    stale = HeartbeatSealer(replica.key, "r-2")
    stale_body, stale_mac = stale.seal(0, {}, None)
    plane._heartbeats().max_age_s = -1.0
    with pytest.raises(Unauthorized, match="ago"):
        plane.sync(stale_body, stale_mac)
    assert set(plane.live_replicas()) == {"r-1"}
    (record,) = _records(settings, mark)
    assert record["result"] == "refused: 401" and record["action"] == f"sync {name}:heartbeat"


def test_a_restarted_control_plane_reconciles_the_registry(serving_home):
    from cluster.registry.store import ModelRegistry
    from serving.control import ControlPlane
    settings, models = serving_home
    name = f"rec-{uuid.uuid4().hex[:6]}"
    reg = ModelRegistry.for_settings(settings)
    with in_process(settings, name) as (_client, plane, _):
        stable = register(settings, models[0])
        deploy(plane, stable, "blue_green")
        wait_state(plane, ("promoted",))
    m, v = stable.split("/")
    assert reg.state(m, v) == "production"
    reg.transition(m, v, "deprecated", "someone", "moved by hand behind serving's back")
    mark = len(AuditLog.from_settings(settings).read())
    again = ControlPlane(name, settings=settings)
    assert reg.state(m, v) == "production"
    note = again.status()["history"][-1]
    assert note["event"] == "reconciled" and f"{stable} deprecated -> production" in note["detail"]
    (rec,) = [r for r in _records(settings, mark) if r["action"].startswith("reconcile")]
    assert rec["who"] == f"control:{name}" and rec["detail"]["to"] == "production"


def test_control_actor_killed_mid_canary_comes_back_and_resumes(ray_session, serving_home):
    """SIGKILL the actor's process while a canary holds a step: Ray restarts it, it
    resumes the rollout from its persisted step with the gates on (well within one
    window), the replica keeps its handle and the canary ends by its gates."""
    import ray
    from fastapi.testclient import TestClient

    from serving.app import create_app
    from serving.clients import NAMESPACE, ActorControl, actor_name, control_actor
    from serving.runtime import ServingRuntime
    settings, models = serving_home
    name = f"kill-{uuid.uuid4().hex[:6]}"
    handle = control_actor(name)
    control = ActorControl(handle, name)
    runtime = ServingRuntime(control, settings=settings, deployment=name, sync_interval_s=0.05)
    window = 20.0
    try:
        with TestClient(create_app(runtime)) as client:
            incumbent = register(settings, models[0])
            operator = TOKENS["operator"]
            control.call_sync("deploy", incumbent, "blue_green", None, None, 0.0,
                              {"min_requests": 0}, "test", token=operator)
            drive(client, _Status(control), ("promoted",), row_body, timeout=60)
            candidate = register(settings, models[1])
            control.call_sync("deploy", candidate, "canary", None, [30, 100], window,
                              {"min_requests": 5}, "test", token=operator)
            drive(client, _Status(control), ("canary",), row_body, timeout=60)
            pid = ray.get(handle.__ray_call__.remote(lambda self: os.getpid()))
            killed = time.time()
            os.kill(pid, signal.SIGKILL)
            seen = drive(client, _Status(control), DONE, row_body, timeout=240)
            status = control.call_sync("status")
            assert ray.get(handle.__ray_call__.remote(lambda self: os.getpid())) != pid
    finally:
        ray.kill(ray.get_actor(actor_name(name), namespace=NAMESPACE), no_restart=True)
    assert {c for c, *_ in seen if c is not None} == {200}, "a request failed meanwhile"
    assert status["state"] == "promoted" and status["stable"] == candidate
    resumed = [h for h in status["history"] if h["event"] == "resumed"]
    assert len(resumed) == 1 and "at step 30" in resumed[0]["detail"]
    assert status["rollout"]["resumed"] == 1
    # the step was judged again from the restart on: no unjudged step beyond one window
    assert resumed[0]["time"] - killed < window


class _Status:
    """``drive``'s plane: status over the actor (None while it restarts)."""

    def __init__(self, control):
        self.control = control

    def status(self):
        try:
            return self.control.call_sync("status")
        except Exception:
            return {"state": "restarting"}

"""``/ws/events``: seed Property 2 (every stage of a training run that completes,
fails at a random point, or is stopped from outside is recorded in the events table
and delivered to a WebSocket subscriber in order, exactly once, across a reconnect),
plus the subscription's auth and filters."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import given, strategies as st
from starlette.websockets import WebSocketDisconnect

from cluster.events import EventBus, ModelRegistered, TrainingProgress
from serving.auth import Authenticator
from serving.ws import router

TOKEN = "ws-viewer"
ORDER = ["preparing", "configuring", "training", "evaluating", "completed", "failed"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The WebSocket route on its own app; ``ctx.bus`` is swapped per example."""
    from cluster.config import load_settings
    from cluster.models.zoo import MODEL_TYPES, ModelSpec
    from tests.strategies import feature_frame
    MODEL_TYPES["fake"] = ModelSpec("tests.fake_models", "FastModel", "torch")
    ctx = SimpleNamespace(auth=Authenticator({TOKEN: "viewer"}), bus=None)
    app = FastAPI()
    app.include_router(router(ctx))
    settings = load_settings(home=tmp_path_factory.mktemp("ws_home"))
    frame = feature_frame(n_instruments=4, n_days=60)
    # Each example runs the real engine; only Qlib's dataset build (~0.6 s, the same
    # frame every time) is done once.
    from cluster.training import engine
    from cluster.features.qlib_bridge import default_segments
    dataset = engine.build_dataset(frame, default_segments(frame["date"]),
                                   feature_columns=[f"f{i}" for i in range(8)],
                                   horizon=settings.qlib.label_horizon)
    with pytest.MonkeyPatch.context() as mp, TestClient(app) as client:
        mp.setattr(engine, "build_dataset", lambda *a, **k: dataset)
        yield client, ctx, settings, frame, tmp_path_factory.mktemp("ws_lakes")
    del MODEL_TYPES["fake"]


def receive(client, after: int, run_id: str, stop_after: int | None = None,
            headers: dict | None = None) -> list[tuple[int, dict]]:
    """Subscribe from ``after`` and read until the run's last stage (or ``stop_after``
    messages, then disconnect)."""
    got = []
    sub = {"after": after, "run_id": run_id, "types": ["training_progress"]}
    if headers is None:
        sub["token"] = TOKEN
    with client.websocket_connect("/ws/events", headers=headers or {}) as ws:
        ws.send_text(json.dumps(sub))
        while stop_after is None or len(got) < stop_after:
            msg = json.loads(ws.receive_text())
            if msg.get("heartbeat"):
                continue
            got.append((msg["offset"], msg["event"]))
            if msg["event"]["stage"] in ("completed", "failed"):
                break
    return got


runs = st.fixed_dictionaries({
    "n_epochs": st.integers(1, 5),
    "end": st.sampled_from(["complete", "init", "epoch", "predict", "stop"]),
    "at": st.integers(1, 5),
    "cut": st.integers(1, 12),
})


@given(run=runs)
def test_property_2_every_stage_recorded_and_delivered_once_in_order(setup, run):
    from cluster.training.engine import FeatureData, TrainingEngine, TrainRequest
    from cluster.training.stop import stop_run
    client, ctx, settings, frame, lakes = setup
    bus = EventBus(Path(tempfile.mkdtemp(dir=lakes)))
    ctx.bus = bus
    n, at = run["n_epochs"], min(run["at"], run["n_epochs"])
    if run["end"] == "stop":            # stopped during training: before its last epoch ends
        n = max(n, 2)
        at = min(at, n - 1)
    params = {"n_epochs": n}
    if run["end"] in ("init", "epoch", "predict"):
        params.update(fail_in=run["end"], fail_epoch=at)
    run_id = f"run-{abs(hash(json.dumps(run, sort_keys=True)))}"

    def on_epoch(row):                  # a stop from outside, by the public stop call
        if run["end"] == "stop" and row["epoch"] == at:
            stop_run(run_id)
    before = bus.last_offset()
    result = TrainingEngine(settings, bus).run(
        TrainRequest("fake", params=params, feature_columns=[f"f{i}" for i in range(8)],
                     register=False), FeatureData(frame, 3, "fs-test"), run_id=run_id,
        epoch_callback=on_epoch)

    # recorded: the events table holds every stage of this run, in order
    table = [(o, e) for o, e in bus.read(before, ["training_progress"]) if e.run_id == run_id]
    stages = [e.stage for _, e in table]
    assert stages[0] == "preparing" and stages[-1] in ("completed", "failed")
    assert [ORDER.index(s) for s in stages] == sorted(ORDER.index(s) for s in stages)
    epochs = [e.epoch for _, e in table if e.epoch is not None]
    assert epochs == list(range(1, len(epochs) + 1))
    expected_end = "completed" if run["end"] == "complete" else "failed"
    assert result.state == expected_end == stages[-1]
    if run["end"] == "complete":
        assert stages == ["preparing", "configuring", "training", *["training"] * n,
                          "evaluating", "completed"]
    elif run["end"] == "stop":
        assert table[-1][1].message.startswith("stopped") and epochs == list(range(1, at + 1))
    elif run["end"] == "epoch":
        assert epochs == list(range(1, at)) and "injected" in table[-1][1].message
    assert [s for s in stages if s != "training"] == [
        s for s in dict.fromkeys(stages) if s != "training"]      # each stage once
    assert [s["stage"] for s in result.report["stages"]] == list(dict.fromkeys(stages))

    # delivered: the same events over the WebSocket, exactly once, across a reconnect
    cut = min(run["cut"], len(table))
    first = receive(client, before, run_id, stop_after=cut)
    rest = receive(client, first[-1][0], run_id) if len(first) < len(table) else []
    delivered = first + rest
    assert [o for o, _ in delivered] == [o for o, _ in table]
    assert [e["stage"] for _, e in delivered] == stages
    assert [e["id"] for _, e in delivered] == [e.id for _, e in table]


def test_subscription_auth_and_filters(setup):
    client, ctx, *_ = setup
    bus = EventBus(Path(tempfile.mkdtemp()))
    ctx.bus = bus
    bus.publish(ModelRegistered(name="m", version="1"))
    bus.publish(TrainingProgress(run_id="r1", model="lightgbm", name="stock-lgb", stage="preparing"))
    bus.publish(ModelRegistered(name="other", version="4"))
    for sub, code in [({}, 4401), ({"token": "wrong"}, 4401), ({"token": TOKEN, "after": -5}, 4422),
                      ({"token": TOKEN, "types": ["nope"]}, 4422)]:
        with client.websocket_connect("/ws/events") as ws:
            ws.send_text(json.dumps(sub))
            with pytest.raises(WebSocketDisconnect) as err:
                ws.receive_text()
            assert err.value.code == code, sub
    with client.websocket_connect("/ws/events") as ws:
        ws.send_text("not json")
        with pytest.raises(WebSocketDisconnect) as err:
            ws.receive_text()
        assert err.value.code == 4422

    def first(sub, headers=None):
        with client.websocket_connect("/ws/events", headers=headers or {}) as ws:
            ws.send_text(json.dumps(sub))
            return json.loads(ws.receive_text())
    msg = first({"token": TOKEN, "model": "m/1"})
    assert msg["event"]["type"] == "model_registered" and msg["offset"] == 0
    msg = first({"token": TOKEN, "model": "stock-lgb"})
    assert msg["event"]["run_id"] == "r1" and msg["offset"] == 1
    msg = first({"after": 0, "types": ["model_registered"]},
                headers={"Authorization": f"Bearer {TOKEN}"})
    assert msg["event"]["name"] == "other" and msg["offset"] == 2


def test_after_latest_delivers_only_what_is_published_after_subscribing(setup):
    """The console's pages subscribe with ``"after": "latest"``: nothing older arrives."""
    client, ctx, *_ = setup
    bus = EventBus(Path(tempfile.mkdtemp()))
    ctx.bus = bus
    for v in ("1", "2"):
        bus.publish(ModelRegistered(name="old", version=v))
    before = bus.last_offset()
    with client.websocket_connect("/ws/events") as ws:
        ws.send_text(json.dumps({"token": TOKEN, "after": "latest",
                                 "types": ["model_registered"]}))
        hello = json.loads(ws.receive_text())       # the subscription, confirmed at once
        assert hello == {"heartbeat": True, "offset": before}
        bus.publish(ModelRegistered(name="new", version="3"))
        msg = json.loads(ws.receive_text())
    assert msg["offset"] > before and msg["event"]["name"] == "new"

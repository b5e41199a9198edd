"""Issue 16's security items on the HTTP API: ``/readyz`` says only ready-or-not
without a token, ``/predict`` limits (413 / 422 naming the field) and refuses
non-finite values naming the row and feature, the model runs off the event loop, and
actors get token hashes, never tokens."""
from __future__ import annotations

import threading

import pytest

from tests.test_serving_support import (FEATURES, TOKENS, auth, deploy, in_process, row_body,
                                        serving_home, wait_state)  # noqa: F401 (fixture)


@pytest.fixture(scope="module")
def served(serving_home):
    settings, _ = serving_home
    with in_process(settings, "hardening") as (client, plane, runtime):
        deploy(plane, "m/1", "blue_green")
        wait_state(plane, ("promoted",))
        while not runtime.ready():
            threading.Event().wait(0.02)
        yield settings, client, plane, runtime


def test_readyz_without_a_token_says_only_ready(served):
    _, client, *_ = served
    res = client.get("/readyz")
    assert res.status_code == 200 and res.json() == {"ready": True}
    assert client.get("/readyz", headers={"Authorization": "Bearer wrong"}).json() == {
        "ready": True}
    detail = client.get("/readyz", headers=auth("viewer")).json()
    assert detail["ready"] and detail["stable"] == "m/1" and detail["split"] == {"m/1": 1.0}
    assert "replica" not in client.get("/healthz").json()


@pytest.mark.parametrize("raw,where", [
    ('{"rows": [{"f0": NaN}]}', ["body", "rows", 0, "f0"]),
    ('{"rows": [{"f0": 1.0}, {"f3": Infinity}]}', ["body", "rows", 1, "f3"]),
    ('{"rows": [{"f1": -Infinity}]}', ["body", "rows", 0, "f1"]),
    ('{"rows": [{"f2": 1e999}]}', ["body", "rows", 0, "f2"]),
])
def test_non_finite_inputs_are_refused_naming_row_and_feature(served, raw, where):
    _, client, *_ = served
    res = client.post("/predict", content=raw, headers=auth("viewer") | {
        "Content-Type": "application/json"})
    assert res.status_code == 422, res.text
    (item,) = res.json()["detail"]
    assert item["loc"] == where and "finite" in item["msg"]


def test_predict_limits_come_from_settings(served, monkeypatch):
    settings, client, plane, runtime = served
    api = settings.api
    monkeypatch.setattr(api, "max_rows", 3)
    monkeypatch.setattr(api, "max_instruments", 2)
    monkeypatch.setattr(api, "max_body_bytes", 4096)
    from serving.app import create_app
    from fastapi.testclient import TestClient
    small = TestClient(create_app(runtime))         # limits are read when the app is built
    rows = [row_body(i)["rows"][0] for i in range(4)]
    res = small.post("/predict", json={"rows": rows}, headers=auth("viewer"))
    assert res.status_code == 422 and res.json()["detail"][0]["loc"] == ["body", "rows"]
    assert "at most 3" in res.json()["detail"][0]["msg"]
    res = small.post("/predict", json={"instruments": ["S001", "S002", "S003"],
                                       "date": "2019-03-01"}, headers=auth("viewer"))
    assert res.status_code == 422 and res.json()["detail"][0]["loc"] == ["body", "instruments"]
    big = {"rows": [row_body(0)["rows"][0]], "key": "k" * 5000}
    res = small.post("/predict", json=big, headers=auth("viewer"))
    assert res.status_code == 413 and "api.max_body_bytes" in res.json()["detail"]

    def chunks():                                   # no Content-Length: counted as it arrives
        yield b'{"rows": [{"f0": 1.0}], "key": "'
        for _ in range(10):
            yield b"k" * 1000
        yield b'"}'
    res = small.post("/predict", content=chunks(), headers=auth("viewer"))
    assert res.status_code == 413
    assert small.post("/predict", json={"rows": rows[:3]},
                      headers=auth("viewer")).status_code == 200


def test_model_calls_run_off_the_event_loop(served):
    """While a prediction is blocked inside the model, the same app still answers."""
    _, client, _, runtime = served
    version = runtime.snapshot.stable
    inside, release = threading.Event(), threading.Event()
    original = version.predict

    def blocking(x):
        inside.set()
        assert release.wait(60), "the test never released the model"
        return original(x)
    version.predict = blocking
    answers = []
    try:
        worker = threading.Thread(target=lambda: answers.append(
            client.post("/predict", json=row_body(), headers=auth("viewer"))))
        worker.start()
        assert inside.wait(60)
        # the model call is still blocked: the loop must serve this meanwhile
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 200
        assert worker.is_alive() and not answers
    finally:
        release.set()
        version.predict = original
    worker.join(60)
    assert answers[0].status_code == 200 and answers[0].json()["version"] == "m/1"


def test_actors_get_token_hashes_never_tokens(monkeypatch, tmp_path):
    from cluster.config import load_settings, reset_settings
    from serving.auth import Authenticator, hashed_token_env
    from serving.clients import mlops_env
    tokens = ",".join(f"{r}:{t}" for r, t in TOKENS.items())
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path))
    monkeypatch.setenv("MLOPS_API_TOKENS", tokens)
    reset_settings()
    try:
        env = mlops_env()
    finally:
        reset_settings()
    assert "MLOPS_API_TOKENS" not in env
    assert not any(t in v for v in env.values() for t in TOKENS.values())
    assert env == hashed_token_env(dict(env))       # idempotent
    monkeypatch.delenv("MLOPS_API_TOKENS")
    monkeypatch.setenv("MLOPS_API_TOKEN_HASHES", env["MLOPS_API_TOKEN_HASHES"])
    auth_ = Authenticator.from_settings(load_settings())
    for role, token in TOKENS.items():
        assert auth_.check(f"Bearer {token}", role).role == role
    assert auth_.principal("Bearer not-a-token") is None
    monkeypatch.setenv("MLOPS_API_TOKEN_HASHES", "viewer:abc")
    with pytest.raises(Exception, match="token_hashes"):
        load_settings()


def test_audit_tail_reads_the_end_only(tmp_path):
    from serving.auth import AuditLog
    log = AuditLog(tmp_path / "audit.jsonl")
    assert log.tail(5) == []
    for i in range(300):
        log.write(f"viewer:{i}", "POST", f"/x/{i}", "ok", {"pad": "p" * 300})
    last = log.tail(7, chunk=1024)
    assert [r["action"] for r in last] == [f"POST /x/{i}" for i in range(293, 300)]
    assert log.tail(1000) == log.read()

"""The job queue on a real Ray cluster (the session's private head + worker): training
runs started over the API run as Ray jobs (entrypoint resources, metadata), stream
their progress over ``/ws/events`` from start to ``completed``, and can be stopped."""
from __future__ import annotations

import json
import time

import pytest

from tests.console_support import cancel_jobs
from tests.test_serving_support import TOKENS, api_home, auth


@pytest.fixture(scope="module")
def queued_api(private_cluster, tmp_path_factory):
    from cluster.config import get_settings, reset_settings
    from cluster.features.pipeline import FeaturePipeline
    from cluster.lake.ingest import ingest
    from tests.test_serving_support import in_process
    home = tmp_path_factory.mktemp("queue_ray")
    with pytest.MonkeyPatch.context() as mp:
        api_home(mp, home)
        mp.setenv("MLOPS_QUEUE__DASHBOARD_ADDRESS", private_cluster.dashboard)
        mp.setenv("MLOPS_QUEUE__TICK_S", "0.5")
        mp.setenv("RAY_AUTH_MODE", "disabled")
        reset_settings()
        settings = get_settings()
        ingest("synthetic", stocks=6, days=160, seed=3)
        FeaturePipeline(settings).run(incremental=True, use_ray=False)
        with in_process(settings, "queue") as (client, _plane, _runtime):
            try:
                yield settings, client, private_cluster
            finally:        # a failed test leaves no run on the shared cluster
                cancel_jobs(settings)
    reset_settings()


def stream(client, name: str, after: int, until, timeout_s: float = 300):
    """The run's training_progress events over /ws/events until ``until(event)``."""
    got = []
    deadline = time.monotonic() + timeout_s
    with client.websocket_connect("/ws/events") as ws:
        ws.send_text(json.dumps({"token": TOKENS["viewer"], "after": after, "model": name,
                                 "types": ["training_progress"]}))
        while time.monotonic() < deadline:
            msg = json.loads(ws.receive_text())
            if msg.get("heartbeat"):
                continue
            got.append(msg)
            if until(msg["event"]):
                return got
    raise AssertionError(f"no end after {timeout_s}s: {[m['event']['stage'] for m in got]}")


def wait_job(client, job_id: str, states, timeout_s: float = 300) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = client.get(f"/api/jobs/{job_id}", headers=auth("viewer")).json()
        if job["state"] in states:
            return job
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} still {job['state']}")


def start(client, name: str, body: dict) -> dict:
    res = client.post(f"/api/models/{name}/training/start", json=body, headers=auth("operator"))
    assert res.status_code == 202, res.text
    return res.json()


def ended(event) -> bool:
    return event["stage"] in ("completed", "failed")


def test_capacity_comes_from_the_cluster(queued_api):
    _, client, cluster = queued_api
    body = client.get("/api/cluster", headers=auth("viewer")).json()
    assert body["capacity"] == {"cpus": 2.0, "gpus": 0.0}
    assert body["dashboard"] == cluster.dashboard


def test_training_over_the_api_streams_to_completed_then_one_is_stopped(queued_api):
    """Two runs queued at once (one CPU each: the cluster's two), so their Ray jobs
    start side by side: a linear one followed to completed, a long LightGBM one
    stopped from the API once it reports a boosting round."""
    from ray.job_submission import JobSubmissionClient
    settings, client, cluster = queued_api
    run = start(client, "e2e-linear", {"model_type": "linear", "cpus": 1})
    long = start(client, "e2e-lgb", {
        "model_type": "lightgbm", "cpus": 1,
        "params": {"num_boost_round": 200000, "early_stopping_rounds": 200000,
                   "learning_rate": 0.0001, "report_every": 500}})

    events = stream(client, "e2e-linear", run["events_offset"], ended)
    stages = [m["event"]["stage"] for m in events]
    assert stages[0] == "preparing" and stages[-1] == "completed", stages
    assert "training" in stages
    assert {m["event"]["run_id"] for m in events} == {run["run_id"]}
    offsets = [m["offset"] for m in events]
    assert offsets == sorted(set(offsets))
    job = wait_job(client, run["job_id"], ("succeeded", "failed"))
    assert job["state"] == "succeeded", client.get(f"/api/jobs/{run['job_id']}?logs=true",
                                                   headers=auth("viewer")).json().get("logs")
    info = JobSubmissionClient(cluster.dashboard).get_job_info(run["job_id"])
    assert info.metadata["job_type"] == "train" and info.metadata["model"] == "e2e-linear"
    assert info.entrypoint == job["entrypoint"] and job["resources"]["cpus"] == 1
    report = client.get("/api/models/e2e-linear/training-report", headers=auth("viewer")).json()
    assert report["status"] == "completed" and report["registry"]["name"] == "e2e-linear"

    # the long run: stopped once it has reported a boosting round (trees report rounds,
    # not epochs)
    rounds = stream(client, "e2e-lgb", long["events_offset"],
                    lambda e: e.get("round") is not None or ended(e))
    assert rounds[-1]["event"]["stage"] == "training", rounds[-1]
    res = client.post("/api/models/e2e-lgb/training/stop", headers=auth("operator"))
    assert res.status_code == 200 and res.json()["stop_requested"], res.text
    end = stream(client, "e2e-lgb", long["events_offset"], ended)[-1]["event"]
    assert end["stage"] == "failed" and end["message"].startswith("stopped"), end
    job = wait_job(client, long["job_id"], ("succeeded", "failed", "stopped"))
    assert job["state"] in ("failed", "stopped")
    progress = client.get("/api/models/e2e-lgb/progress", headers=auth("viewer")).json()
    assert progress["state"] == "failed" and progress["run_id"] == long["run_id"]

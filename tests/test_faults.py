"""Fault injection, each bounded in time: a Ray worker process killed during the
feature job, a worker node removed during a Tune run, a Serve replica killed under a
bounded loopback load, the ingest process SIGKILLed mid-write. (The control-plane
actor killed mid-canary: test_control_plane.py; the registry database gone for a
moment and two processes racing on one version: test_registry_consistency.py.)"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid

import pandas as pd
import pytest

from tests.conftest import ROOT
from tests.test_serving_support import serving_home  # noqa: F401 (fixture)

pytestmark = pytest.mark.timeout(600)


def _wait_for(predicate, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"{what} did not happen within {seconds:.0f} s")


# -- ingest SIGKILLed mid-write -------------------------------------------------------
def test_ingest_killed_mid_write_leaves_the_previous_version(tmp_path):
    from cluster.lake.bars import BarsTable
    home = tmp_path / "home"
    env = dict(os.environ, MLOPS_HOME=str(home), PYTHONPATH=str(ROOT))
    env.pop("MLOPS_CONFIG", None)
    job = [sys.executable, "-m", "jobs.ingest", "--source", "synthetic", "--days", "300"]
    first = subprocess.run(job + ["--stocks", "5"], env=env, capture_output=True, text=True,
                           timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    bars = BarsTable(home / "lake")
    before, v0 = bars.read(), bars.version()
    table_dir = home / "lake" / "bars"
    files0 = {p for p in table_dir.rglob("*.parquet")}
    proc = subprocess.Popen(job + ["--stocks", "400", "--seed", "7"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:     # SIGKILL once its first data file is on disk, before the log names it
        _wait_for(lambda: proc.poll() is not None or
                  {p for p in table_dir.rglob("*.parquet")} - files0, 240, "a data file")
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(60)
    assert proc.returncode == -signal.SIGKILL, "the ingest finished before it was killed"
    after = BarsTable(home / "lake")
    assert after.version() == v0
    pd.testing.assert_frame_equal(after.read(), before)
    again = subprocess.run(job + ["--stocks", "6", "--seed", "7"], env=env,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert BarsTable(home / "lake").version() == v0 + 1
    assert set(BarsTable(home / "lake").instruments()) >= set(before["instrument"])


# -- a Ray worker process killed during the feature job --------------------------------
def _feature_run(home, synthetic_args=("--stocks", "8", "--days", "260")):
    from cluster.config import load_settings
    from cluster.features.pipeline import FeaturePipeline
    from cluster.lake.features import FeaturesTable
    from cluster.lake.ingest import ingest
    settings = load_settings(home=home, feature_pipeline={"instruments_per_block": 2,
                                                          "local_threshold_rows": 0})
    ingest("synthetic", stocks=8, days=260, settings=settings)
    return settings, FeaturePipeline(settings), FeaturesTable(settings.lake_dir)


def _block_workers():
    import psutil
    found = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if "MapBatches(compute)" in cmd and p.pid != os.getpid():
            found.append(p.pid)
    return found


def test_worker_killed_during_the_feature_job_changes_nothing(ray_session, tmp_path):
    """SIGKILL the first Ray worker seen running a feature block: Ray Data retries the
    block, the job completes, and the table equals an undisturbed run's."""
    _, plain, plain_table = _feature_run(tmp_path / "plain")
    plain.run(use_ray=True)
    _, faulty, faulty_table = _feature_run(tmp_path / "faulty")
    killed: list[int] = []

    def killer():
        pids = _wait_for(_block_workers, 120, "a feature block on a Ray worker")
        os.kill(pids[0], signal.SIGKILL)
        killed.append(pids[0])
    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    summary = faulty.run(use_ray=True)
    thread.join(5)
    assert killed, "no block worker was killed"
    assert summary["computed_rows"] == summary["rows"]
    keys = ["instrument", "date"]
    a = plain_table.read().sort_values(keys).reset_index(drop=True)
    b = faulty_table.read().sort_values(keys).reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)


# -- a worker node removed during a Tune run --------------------------------------------
def test_worker_node_removed_during_tuning(private_cluster, tmp_path):
    """A node that runs trials is SIGKILLed (raylet, workers, all) mid-run: its trials
    are rescheduled (FailureConfig max_failures) on the nodes left, none is lost, the
    best one is registered once."""
    from ray.util.state import list_actors

    from cluster.registry.store import ModelRegistry
    from tests.test_tune import _features_table
    cluster = private_cluster
    label = f"doomed{uuid.uuid4().hex[:4]}"
    node = cluster.add_worker(label, cpus=1)
    home = tmp_path / "home"
    _features_table(home)
    result: dict = {}
    name = f"lost-{label}"

    def submit():
        try:    # trials long enough (a few hundred boosting rounds) to be caught running
            result["out"] = cluster.submit(
                home, "jobs.tune", "--model", "lightgbm", "--samples", "3", "--folds", "2",
                "--scheduler", "fifo", "--name", name, "--registry-name", name,
                "--set", "num_boost_round=400", "--set", "early_stopping_rounds=400",
                "--set", "learning_rate=0.01", "--set", "num_leaves=31")
        except BaseException as exc:
            result["error"] = exc
    thread = threading.Thread(target=submit, daemon=True)
    thread.start()
    try:
        def trial_on_doomed():
            assert thread.is_alive(), f"the tuning job ended first: {result}"
            time.sleep(0.5)         # the state API is not free on a small machine
            return [a for a in list_actors(address=cluster.dashboard, limit=10_000,
                                           raise_on_missing_output=False)
                    if a.class_name == "ImplicitFunc" and a.node_id == node.node_id
                    and a.state == "ALIVE"]
        _wait_for(trial_on_doomed, 300, "a trial on the node to remove")
        cluster.kill_node(label)
        thread.join(540)
    finally:
        cluster.nodes.pop(label, None)
    assert "error" not in result, result
    out = result["out"]
    assert out["trials"] == {"completed": 3}, out["trials"]
    versions = ModelRegistry(home=home).search(name=out["registry_name"])
    assert [v.version for v in versions] == [out["version"]]
    assert ModelRegistry(home=home).lineage(name, out["version"])["tune_experiment"] == name


# -- a Serve replica killed under a bounded loopback load --------------------------------
def test_serve_replica_killed_under_load_fails_under_a_tenth_of_a_percent(
        ray_session, serving_home, monkeypatch, capsys):
    import httpx
    import ray
    from ray import serve

    from cluster.config import reset_settings
    from serving.clients import NAMESPACE, actor_name
    from serving.deployment import APP_NAME
    from tests.test_serving_serve import _deploy
    from tests.test_serving_support import TOKENS, auth, register, row_body
    settings, models = serving_home
    from tests.ray_cluster import free_port
    port = free_port()
    monkeypatch.setenv("MLOPS_API__PORT", str(port))
    monkeypatch.setenv("MLOPS_TOKEN", TOKENS["operator"])
    reset_settings()
    name = f"replicas-{uuid.uuid4().hex[:4]}"
    stable = register(settings, models[0])
    total, connections = 4000, 4
    codes: list[int] = []
    try:
        _deploy(capsys, "--model", "m", "--version", stable.split("/")[1], "--strategy",
                "blue_green", "--window", "0", "--deployment", name, "--replicas", "2")
        url = f"http://127.0.0.1:{port}"
        _wait_for(lambda: httpx.get(f"{url}/readyz", timeout=10).status_code == 200, 120,
                  "the app ready")
        lock, sent = threading.Lock(), [0]

        def client():
            with httpx.Client(base_url=url, timeout=30) as c:
                while True:
                    with lock:
                        if sent[0] >= total:
                            return
                        sent[0] += 1
                        i = sent[0]
                    try:
                        code = c.post("/predict", json=row_body(i),
                                      headers=auth("viewer")).status_code
                    except httpx.HTTPError:
                        code = -1
                    codes.append(code)
        threads = [threading.Thread(target=client, daemon=True) for _ in range(connections)]
        for t in threads:
            t.start()
        _wait_for(lambda: len(codes) > total // 5, 300, "a fifth of the load")
        replicas = [a for a in ray.util.list_named_actors(all_namespaces=True)
                    if "SERVE_REPLICA" in a["name"] and APP_NAME in a["name"]]
        victim = ray.get_actor(replicas[0]["name"], namespace=replicas[0]["namespace"])
        pid = ray.get(victim.__ray_call__.remote(lambda self: os.getpid()))
        os.kill(pid, signal.SIGKILL)
        for t in threads:
            t.join(600)
        live = _wait_for(lambda: [r for r in serve.status().applications[APP_NAME]
                                  .deployments["ModelServer"].replica_states.items()
                                  if r[0] == "RUNNING" and r[1] == 2], 120, "2 running replicas")
        assert live
    finally:
        serve.delete(APP_NAME)
        try:
            ray.kill(ray.get_actor(actor_name(name), namespace=NAMESPACE), no_restart=True)
        except ValueError:
            pass
        reset_settings()
    failed = sum(1 for c in codes if c != 200)
    assert len(codes) == total
    assert failed / total < 0.001, f"{failed}/{total} requests failed: {set(codes)}"

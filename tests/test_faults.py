"""Fault injection, each bounded in time: a Ray worker process killed during the
feature job, a Serve replica killed under a bounded loopback load, the ingest process
SIGKILLed mid-write. Elsewhere: a worker node removed during a Tune run
(test_multinode.py, on the session's private cluster); the control-plane actor killed
mid-canary (test_control_plane.py); the registry database gone for a moment and two
processes racing on one version (test_registry_consistency.py)."""
from __future__ import annotations

import contextlib
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
    files0 = {p for p in table_dir.glob("*.parquet")}  # data files (not the log's)
    # the killed ingest's commit waits a minute (the fault: a writer stalled between
    # its data files and its commit): a fast machine otherwise committed within the
    # poll interval, before the kill
    stalled = [sys.executable, "-c", (
        "import runpy, sys, time; from cluster.lake import tables; "
        "commit = tables.commit_files; "
        "tables.commit_files = lambda *a, **k: (time.sleep(60), commit(*a, **k))[1]; "
        "sys.argv = ['jobs.ingest'] + sys.argv[1:]; "
        "runpy.run_module('jobs.ingest', run_name='__main__')"), *job[3:]]
    proc = subprocess.Popen(stalled + ["--stocks", "400", "--seed", "7"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:     # SIGKILL once its first data file is on disk, before the log names it
        _wait_for(lambda: proc.poll() is not None or
                  {p for p in table_dir.glob("*.parquet")} - files0, 240, "a data file")
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
def _feature_run(home):
    """6 stocks x 160 days in blocks of 2 instruments: three Ray Data tasks."""
    from cluster.config import load_settings
    from cluster.features.pipeline import FeaturePipeline
    from cluster.lake.features import FeaturesTable
    from cluster.lake.ingest import ingest
    settings = load_settings(home=home, feature_pipeline={"instruments_per_block": 2,
                                                          "local_threshold_rows": 0})
    ingest("synthetic", stocks=6, days=160, settings=settings)
    return FeaturePipeline(settings), FeaturesTable(settings.lake_dir)


def _block_workers():
    """This session's Ray workers running a feature block (never another session's:
    the machine may run other Rays)."""
    import psutil
    found = []
    for p in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if "MapBatches(compute)" in " ".join(p.cmdline()):
                found.append(p.pid)
    return found


def test_worker_killed_during_the_feature_job_changes_nothing(ray_session, tmp_path):
    """SIGKILL the first Ray worker seen running a feature block: Ray Data retries the
    block, the job completes, and the table equals an undisturbed run's (the same
    job in process: Ray and local runs are equal, test_features_pipeline.py)."""
    plain, plain_table = _feature_run(tmp_path / "plain")
    plain.run(use_ray=False)
    faulty, faulty_table = _feature_run(tmp_path / "faulty")
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


# -- a Serve replica killed under a bounded loopback load --------------------------------
def test_serve_replica_killed_under_load_fails_under_a_tenth_of_a_percent(
        ray_session, serving_home, monkeypatch, capsys):
    """Two replicas, two client connections on loopback. One replica is SIGKILLed once
    the load runs; the load goes on while Serve replaces it and a little after the new
    one runs (at least 2,500 requests in all: a failure is 0.04%). Fewer than 0.1% of
    the requests may fail (those in flight on the killed replica)."""
    import httpx
    import ray
    from ray import serve

    from cluster.config import reset_settings
    from serving.clients import NAMESPACE, actor_name
    from serving.deployment import APP_NAME
    from tests.ray_cluster import free_port
    from tests.test_serving_serve import _deploy, wait_ready
    from tests.test_serving_support import TOKENS, auth, register, row_body
    settings, models = serving_home
    port = free_port()
    monkeypatch.setenv("MLOPS_API__PORT", str(port))
    monkeypatch.setenv("MLOPS_TOKEN", TOKENS["operator"])
    reset_settings()
    name = f"replicas-{uuid.uuid4().hex[:4]}"
    stable = register(settings, models[0])
    least, after_back, connections = 2500, 300, 2
    codes: list[int] = []
    stop, threads = threading.Event(), []

    def replica_names() -> set[str]:
        return {a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                if "SERVE_REPLICA" in a["name"] and APP_NAME in a["name"]}

    def running() -> int:
        states = serve.status().applications[APP_NAME].deployments["ModelServer"]
        return states.replica_states.get("RUNNING", 0)
    try:
        url = _deploy(capsys, "--model", "m", "--version", stable.split("/")[1], "--strategy",
                      "blue_green", "--window", "0", "--deployment", name,
                      "--replicas", "2")["url"]     # Serve's port, maybe an earlier test's
        wait_ready(url)
        # jobs.deploy returns once every running replica serves the final revision (a
        # replica still on the empty one would answer 503): both serve it now, no wait
        plane = ray.get_actor(actor_name(name), namespace=NAMESPACE)
        revision = ray.get(plane.status.remote())["revision"]
        live = ray.get(plane.live_replicas.remote())
        assert len(live) == 2 and all(r["revision"] == revision
                                      and r["loaded"].get(stable) == "ok"
                                      for r in live.values()), live

        def client(k: int):
            with httpx.Client(base_url=url, timeout=30) as c:
                i = k
                while not stop.is_set():
                    try:
                        code = c.post("/predict", json=row_body(i),
                                      headers=auth("viewer")).status_code
                    except httpx.HTTPError:
                        code = -1
                    codes.append(code)
                    i += connections
        threads += [threading.Thread(target=client, args=(k,), daemon=True)
                    for k in range(connections)]
        for t in threads:
            t.start()
        _wait_for(lambda: len(codes) >= 200, 120, "the load running")
        before = replica_names()
        victim_name = sorted(before)[0]
        victim = ray.get_actor(victim_name, namespace=next(
            a["namespace"] for a in ray.util.list_named_actors(all_namespaces=True)
            if a["name"] == victim_name))
        pid = ray.get(victim.__ray_call__.remote(lambda self: os.getpid()))
        os.kill(pid, signal.SIGKILL)
        killed_at = len(codes)
        _wait_for(lambda: (lambda names: victim_name not in names and len(names) == 2
                           and running() == 2)(replica_names()), 180, "a replacement replica")
        back_at = len(codes)
        _wait_for(lambda: len(codes) >= max(least, back_at + after_back), 300,
                  "the rest of the load")
    finally:
        stop.set()
        for t in threads:       # no request in flight when the app goes
            t.join(60)
        serve.delete(APP_NAME)
        try:
            ray.kill(ray.get_actor(actor_name(name), namespace=NAMESPACE), no_restart=True)
        except ValueError:
            pass
        reset_settings()
    assert back_at > killed_at, "no request was sent while the replica was replaced"
    failed = sum(1 for c in codes if c != 200)
    assert failed / len(codes) < 0.001, f"{failed}/{len(codes)} requests failed: {set(codes)}"

"""The jobs run unchanged under ``ray job submit --working-dir .`` (tested once).

Needs its own head node with a dashboard (the session Ray has none), on free ports.
"""
import contextlib
import json
import os
import signal
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.test_serving_support import TOKENS, row_body, serving_home  # noqa: F401 (fixture)

RAY = str(Path(sys.executable).with_name("ray"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop_head(proc: subprocess.Popen, temp: str) -> None:
    """Stop this head node only: ``ray stop`` would kill every Ray on the machine,
    the test session's own included. Its processes share the blocking ``ray start``'s
    process group, and all of them name the temp dir on their command line."""
    import psutil
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=15)
    leftovers = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        with contextlib.suppress(psutil.Error):
            if p.pid != os.getpid() and temp in " ".join(p.info["cmdline"] or []):
                leftovers.append(p)
    for p in leftovers:
        with contextlib.suppress(psutil.Error):
            p.kill()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _wait_for_dashboard(url: str, proc: subprocess.Popen, seconds: float = 180) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ray start exited with {proc.returncode}")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(f"{url}/api/version", timeout=5) as reply:
                if reply.status == 200:
                    return
        time.sleep(1)
    raise RuntimeError(f"the dashboard at {url} did not come up in {seconds:.0f} s")


@pytest.fixture(scope="module")
def head_node():
    if not Path(RAY).exists():
        pytest.skip("ray CLI not found next to the interpreter")
    gcs, dash = free_port(), free_port()
    # every port of its own: the session's Ray already holds the defaults (e.g. the
    # dashboard agent's 52365), and a second agent on them never registers
    ports = {flag: free_port() for flag in (
        "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "metrics-export-port",
        "runtime-env-agent-port", "node-manager-port", "object-manager-port",
        "ray-client-server-port")}
    temp = tempfile.mkdtemp(prefix="rayj", dir="/tmp")  # short: Ray's socket paths are long
    # The entrypoint's "python" must be this environment's, as in an activated venv.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    # A private test cluster without token auth: once any local ray.init() has written
    # ~/.ray/auth_token, `ray start` would turn token auth on and the client refuse.
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", PATH=path, RAY_AUTH_MODE="disabled")
    env.pop("RAY_ADDRESS", None)
    log = open(Path(temp) / "ray_start.log", "wb")
    proc = subprocess.Popen(
        [RAY, "start", "--head", "--block", f"--port={gcs}", f"--dashboard-port={dash}",
         "--include-dashboard=true", "--num-cpus=1", f"--temp-dir={temp}",
         "--disable-usage-stats", *(f"--{flag}={port}" for flag, port in ports.items())],
        stdout=log, stderr=subprocess.STDOUT, env=env,
        start_new_session=True)
    url = f"http://127.0.0.1:{dash}"
    try:
        _wait_for_dashboard(url, proc)
        yield url, env
    finally:
        _stop_head(proc, temp)
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


def submit(head_node, home: Path, *job: str, env_vars: dict | None = None) -> dict:
    """``ray job submit --working-dir <repo> -- python -m <job>``; returns its JSON summary."""
    address, env = head_node
    runtime_env = json.dumps({"env_vars": {"MLOPS_HOME": str(home), **(env_vars or {})}})
    cmd = [RAY, "job", "submit", "--address", address, "--working-dir", str(ROOT),
           "--runtime-env-json", runtime_env, "--", "python", "-m", *job]
    for _ in range(30):  # the head's job agent registers a little after the dashboard
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
        if "No available agent" not in proc.stdout + proc.stderr:
            break
        time.sleep(2)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    return json.loads(lines[-1])


def test_ingest_runs_under_ray_job_submit(head_node, tmp_path):
    home = tmp_path / "home"
    summary = submit(head_node, home, "jobs.ingest", "--source", "synthetic",
                     "--stocks", "3", "--days", "12")
    assert summary["data_version"] == 0 and summary["rows_added"] == 36
    assert (home / "lake" / "bars" / "_delta_log").is_dir()


def test_tune_runs_under_ray_job_submit(head_node, tmp_path):
    """jobs.tune joins the job's cluster (RAY_ADDRESS) unchanged: trials fit its one CPU,
    the best is registered with the experiment in its lineage."""
    from cluster.registry.store import ModelRegistry
    from tests.test_tune import _features_table
    home = tmp_path / "home"
    _features_table(home)
    out = submit(head_node, home, "jobs.tune", "--model", "linear", "--samples", "2",
                 "--folds", "2", "--scheduler", "fifo", "--name", "submitted")
    assert out["experiment"] == "submitted" and out["trials"] == {"completed": 2}
    lineage = ModelRegistry(home=home).lineage(out["registry_name"], out["version"])
    assert lineage["tune_experiment"] == "submitted"
    assert lineage["tune_trial_id"] == out["best"]["trial_id"]


def test_deploy_runs_under_ray_job_submit(head_node, serving_home):
    """jobs.deploy under ``ray job submit``: Serve starts on the job's cluster, the
    blue-green rollout promotes, and Serve keeps answering after the job ended."""
    settings, _ = serving_home
    port = free_port()
    tokens = ",".join(f"{role}:{token}" for role, token in TOKENS.items())
    out = submit(head_node, settings.home, "jobs.deploy", "--model", "m", "--version", "1",
                 "--strategy", "blue_green",
                 env_vars={"MLOPS_API__PORT": str(port), "MLOPS_API_TOKENS": tokens})
    assert out["state"] == "promoted" and out["rolled_back"] is False
    assert out["split"] == {"m/1": 1.0}
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/predict", data=json.dumps(row_body()).encode(),
        headers={"Authorization": f"Bearer {TOKENS['viewer']}",
                 "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as reply:
        assert reply.headers["X-Model-Version"] == "m/1"
        assert json.loads(reply.read())["version"] == "m/1"

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


def test_ingest_runs_under_ray_job_submit(head_node, tmp_path):
    address, env = head_node
    home = tmp_path / "home"
    runtime_env = json.dumps({"env_vars": {"MLOPS_HOME": str(home)}})
    cmd = [RAY, "job", "submit", "--address", address, "--working-dir", str(ROOT),
           "--runtime-env-json", runtime_env, "--",
           "python", "-m", "jobs.ingest", "--source", "synthetic", "--stocks", "3",
           "--days", "12"]
    for _ in range(30):  # the head's job agent registers a little after the dashboard
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
        if "No available agent" not in proc.stdout + proc.stderr:
            break
        time.sleep(2)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    summary = json.loads(lines[-1])
    assert summary["data_version"] == 0 and summary["rows_added"] == 36
    assert (home / "lake" / "bars" / "_delta_log").is_dir()

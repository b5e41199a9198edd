"""The jobs run unchanged under ``ray job submit --working-dir .`` (tested once).

Needs its own head node with a dashboard (the session Ray has none), on free ports.
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.conftest import ROOT

RAY = str(Path(sys.executable).with_name("ray"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def head_node():
    if not Path(RAY).exists():
        pytest.skip("ray CLI not found next to the interpreter")
    gcs, dash = free_port(), free_port()
    temp = tempfile.mkdtemp(prefix="rayj", dir="/tmp")  # short: Ray's socket paths are long
    # The entrypoint's "python" must be this environment's, as in an activated venv.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", PATH=path)
    subprocess.run([RAY, "start", "--head", f"--port={gcs}", f"--dashboard-port={dash}",
                    "--include-dashboard=true", "--num-cpus=1", f"--temp-dir={temp}",
                    "--disable-usage-stats"], check=True, capture_output=True, env=env)
    try:
        yield f"http://127.0.0.1:{dash}", env
    finally:
        subprocess.run([RAY, "stop", "--force"], capture_output=True, env=env)
        shutil.rmtree(temp, ignore_errors=True)


def test_ingest_runs_under_ray_job_submit(head_node, tmp_path):
    address, env = head_node
    home = tmp_path / "home"
    runtime_env = json.dumps({"env_vars": {"MLOPS_HOME": str(home)}})
    proc = subprocess.run(
        [RAY, "job", "submit", "--address", address, "--working-dir", str(ROOT),
         "--runtime-env-json", runtime_env, "--",
         "python", "-m", "jobs.ingest", "--source", "synthetic", "--stocks", "3", "--days", "12"],
        capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    summary = json.loads(lines[-1])
    assert summary["data_version"] == 0 and summary["rows_added"] == 36
    assert (home / "lake" / "bars" / "_delta_log").is_dir()

"""The jobs run unchanged under ``ray job submit --working-dir .`` (tested once), on
the session's private multi-node cluster (``private_cluster``: the session Ray has no
dashboard). ``jobs.pipeline`` and ``jobs.tune`` under submit: ``test_multinode.py``."""
import contextlib
import json
import urllib.request

from tests.ray_cluster import free_port
from tests.test_serving_support import TOKENS, row_body, serving_home  # noqa: F401 (fixture)


def test_ingest_and_maintain_run_under_ray_job_submit(private_cluster, tmp_path):
    home = tmp_path / "home"
    summary = private_cluster.submit(home, "jobs.ingest", "--source", "synthetic",
                                     "--stocks", "3", "--days", "12")
    assert summary["data_version"] == 0 and summary["rows_added"] == 36
    assert (home / "lake" / "bars" / "_delta_log").is_dir()
    # the daily maintenance job too, on the same lake
    maintained = private_cluster.submit(home, "jobs.maintain", "--compact", "--checkpoint")
    assert maintained["errors"] == {} and maintained["steps"] == ["compact", "checkpoint"]
    assert maintained["tables"]["bars"]["files_after"] == 1


def test_deploy_runs_under_ray_job_submit(private_cluster, serving_home):
    """jobs.deploy under ``ray job submit``: Serve starts on the job's cluster, the
    blue-green rollout promotes, and Serve keeps answering after the job ended."""
    settings, _ = serving_home
    port = free_port()
    tokens = ",".join(f"{role}:{token}" for role, token in TOKENS.items())
    try:
        out = private_cluster.submit(
            settings.home, "jobs.deploy", "--model", "m", "--version", "1", "--strategy",
            "blue_green", env_vars={"MLOPS_API__PORT": str(port), "MLOPS_API_TOKENS": tokens,
                                    "MLOPS_TOKEN": TOKENS["operator"]})
        assert out["state"] == "promoted" and out["rolled_back"] is False
        assert out["split"] == {"m/1": 1.0}
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/predict", data=json.dumps(row_body()).encode(),
            headers={"Authorization": f"Bearer {TOKENS['viewer']}",
                     "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as reply:
            assert reply.headers["X-Model-Version"] == "m/1"
            assert json.loads(reply.read())["version"] == "m/1"
    finally:    # Serve off the shared cluster again (its replica holds a CPU share)
        shutdown = urllib.request.Request(f"{private_cluster.dashboard}/api/serve/applications/",
                                          method="DELETE")
        with contextlib.suppress(OSError):
            urllib.request.urlopen(shutdown, timeout=60).close()

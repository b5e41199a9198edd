"""Ray jobs for the job queue: submit, status, stop and logs through Ray's
``JobSubmissionClient`` (the dashboard's job API), so queued jobs appear in the Ray
dashboard with their logs and metadata (job type, data version, model).

A job runs ``python -m jobs.<type> ...`` with the repository as its working dir and
the ``MLOPS_*`` settings of this process (home made absolute), never API tokens or
their hashes: jobs do not call the API. ``entrypoint_num_cpus/gpus`` reserve the
job's request on the cluster.
"""
from __future__ import annotations

import json
import os
import urllib.request
from pathlib import Path

from cluster.resources import Job, Resources

ROOT = Path(__file__).resolve().parents[1]
_SECRET_VARS = ("MLOPS_API_TOKENS", "MLOPS_API_TOKEN_HASHES")


def job_env(settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k.startswith("MLOPS_") and k not in _SECRET_VARS}
    env["MLOPS_HOME"] = str(Path(settings.home).resolve())
    from cluster.config import config_path
    cfg = config_path()
    if cfg is not None:
        env["MLOPS_CONFIG"] = str(Path(cfg).resolve())
    return env


def dashboard_address(settings) -> str:
    """The dashboard to submit to: the setting, else the connected Ray's, else the
    default local one."""
    if settings.queue.dashboard_address:
        return settings.queue.dashboard_address
    import sys
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        try:
            url = ray._private.worker.get_dashboard_url()
            if url:
                return url if url.startswith("http") else f"http://{url}"
        except Exception:
            pass
    return "http://127.0.0.1:8265"


class RayJobs:
    def __init__(self, address: str, env: dict[str, str] | None = None,
                 working_dir: Path | None = ROOT):
        self.address = address
        self.env = dict(env or {})
        self.working_dir = working_dir
        self._client = None

    @classmethod
    def for_settings(cls, settings) -> "RayJobs":
        return cls(dashboard_address(settings), job_env(settings))

    @property
    def client(self):
        if self._client is None:
            from ray.job_submission import JobSubmissionClient
            self._client = JobSubmissionClient(self.address)
        return self._client

    def submit(self, job: Job) -> str:
        runtime_env = {"env_vars": dict(self.env)}
        if self.working_dir is not None:
            runtime_env["working_dir"] = str(self.working_dir)
        metadata = {"mlops_job_id": job.id, "job_type": job.type,
                    "priority": str(job.priority), **job.metadata}
        return self.client.submit_job(
            entrypoint=job.entrypoint, submission_id=job.id, runtime_env=runtime_env,
            metadata=metadata, entrypoint_num_cpus=job.resources.cpus,
            entrypoint_num_gpus=job.resources.gpus)

    def exists(self, job_id: str) -> bool:
        try:
            self.client.get_job_info(job_id)
            return True
        except Exception:
            return False

    def status(self, job_id: str) -> str:
        return str(self.client.get_job_status(job_id).value)

    def stop(self, job_id: str) -> bool:
        return bool(self.client.stop_job(job_id))

    def logs(self, job_id: str) -> str:
        return self.client.get_job_logs(job_id)

    def capacity(self) -> Resources:
        """The cluster's total CPUs/GPUs, from the dashboard's cluster status."""
        with urllib.request.urlopen(f"{self.address}/api/cluster_status?format=0",
                                    timeout=10) as reply:
            data = json.loads(reply.read())
        return _totals(data)


def _totals(data: dict) -> Resources:
    """Total resources in a ``/api/cluster_status`` answer (autoscaler v1 or v2 shape)."""
    status = data.get("data", {}).get("clusterStatus", {}) or {}
    report = status.get("loadMetricsReport") or {}
    usage = report.get("usage") or {}
    if usage:          # {"CPU": [used, total], ...}
        return Resources(float(usage.get("CPU", [0, 0])[1]), float(usage.get("GPU", [0, 0])[1]))
    totals = {"CPU": 0.0, "GPU": 0.0}
    for node in status.get("activeNodes", []) + status.get("idleNodes", []):
        for key in totals:
            totals[key] += float((node.get("totalResources") or {}).get(key, 0.0))
    if not totals["CPU"]:
        raise ValueError("the dashboard reported no cluster resources")
    return Resources(totals["CPU"], totals["GPU"])

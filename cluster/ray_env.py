"""Starting or joining Ray the same way from every job: under ``ray job submit`` (or
with RAY_ADDRESS set) the driver joins that cluster; otherwise a local Ray starts.

Local workers get the project on their PYTHONPATH, as ``--working-dir .`` gives
them on a cluster.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from cluster.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def ensure_ray(num_cpus: int | None = None, **kwargs) -> None:
    import ray
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], **kwargs)
        return
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT),
                                                       os.environ.get("PYTHONPATH")]))}
    ray.init(num_cpus=num_cpus, runtime_env={"env_vars": env}, **kwargs)


def submitted_working_dir() -> str | None:
    """The ``working_dir`` of the Ray job this process is the driver of (``ray job
    submit --working-dir``), or None."""
    raw = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if not raw:
        return None
    try:
        return (json.loads(raw).get("runtime_env") or {}).get("working_dir")
    except (ValueError, AttributeError):
        return None


def check_home_for_job(settings) -> None:
    """Refuse a relative ``MLOPS_HOME`` in a submitted job: it would resolve inside the
    job's unpacked working dir, which every node has its own copy of (a worker's
    tasks would not see the driver's lake) and which Ray deletes after the job, with
    the lake and the registry in it."""
    if submitted_working_dir() and not Path(settings.home).is_absolute():
        raise ConfigError(
            f"MLOPS_HOME is relative ({settings.home}) in a job submitted with a working dir: "
            "it would land in the job's temporary copy of that dir, a different one on each "
            "node and deleted with the job. Set MLOPS_HOME to an absolute path on storage "
            "every node sees, e.g. ray job submit --runtime-env-json "
            "'{\"env_vars\": {\"MLOPS_HOME\": \"/shared/mlops\"}}' ...")

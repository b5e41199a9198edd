"""Starting or joining Ray the same way from every job: under ``ray job submit`` (or
with RAY_ADDRESS set) the driver joins that cluster; otherwise a local Ray starts.

Local workers get the project on their PYTHONPATH, as ``--working-dir .`` gives
them on a cluster.
"""
from __future__ import annotations

import os
from pathlib import Path

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

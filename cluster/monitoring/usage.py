"""Resource usage for the resource alert rules: Ray's object store, node CPU, memory.

Object store: ``1 - available / total`` of Ray's ``object_store_memory`` resource
(``ray.available_resources()`` / ``ray.cluster_resources()``), read only when this
process is connected to Ray (it never starts one). CPU and memory: this node's
utilisation from ``psutil`` (installed with Ray), the same source Ray's own node
metrics use.
"""
from __future__ import annotations

import sys


def resource_usage() -> dict[str, float]:
    out: dict[str, float] = {}
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        try:
            total = float(ray.cluster_resources().get("object_store_memory", 0.0))
            free = float(ray.available_resources().get("object_store_memory", total))
            if total > 0:
                out["object_store"] = max(0.0, min(1.0, 1.0 - free / total))
        except Exception:
            pass
    try:
        import psutil
        out["node_cpu"] = psutil.cpu_percent(interval=0.2) / 100.0
        out["node_memory"] = psutil.virtual_memory().percent / 100.0
    except Exception:
        pass
    return out

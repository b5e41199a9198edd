"""The Ray variables the serving app runs best with, for whoever starts Ray.

Serve reads them when its processes start (controller, HAProxy manager,
replicas), so they belong in the environment of ``ray start`` / ``ray.init``,
not in the app. ``jobs.deploy`` (the local head it starts), ``bench/serve.py``
and ``ray_cluster.yaml`` use them; a variable already set wins.

- ``RAY_SERVE_ENABLE_HA_PROXY=1``, ``RAY_SERVE_THROUGHPUT_OPTIMIZED=1``: Serve's
  high-throughput mode (HAProxy straight to the ingress replicas; user code on
  the replica's own event loop).
- ``RAY_SERVE_HAPROXY_METRICS_ENABLED=0``: by default HAProxy writes one log
  datagram per request and the HAProxy manager actor parses it into the HTTP
  metrics; that took ~0.14 CPU at 1,000 req/s on a 2-core machine. With it off,
  the ingress replicas record the same ``serve_num_http_*`` metrics themselves
  (``Replica._should_emit_request_ingress_metrics``), so nothing is lost but
  HAProxy's process gauges.
- ``RAY_SERVE_HAPROXY_NBTHREAD``: HAProxy threads, at most the machine's cores
  (Serve's default is 4, which only contends on a 2-core machine).

Measured with ``bench/serve.py``'s load (2 replicas, 4 connections, 10 s,
3 rounds, same run as the bare app): Serve's HAProxy defaults 918-956 req/s,
p99 14.0-14.5 ms; with these 1,108-1,536 req/s, p99 7.5-12.9 ms.
"""
from __future__ import annotations

import os
from collections.abc import MutableMapping

HAPROXY_MAX_THREADS = 4     # Serve's own default


def serve_env(cpus: int | None = None) -> dict[str, str]:
    """The variables for a node with ``cpus`` cores (default: this machine's)."""
    cpus = cpus or os.cpu_count() or 1
    return {"RAY_SERVE_ENABLE_HA_PROXY": "1",
            "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
            "RAY_SERVE_HAPROXY_METRICS_ENABLED": "0",
            "RAY_SERVE_HAPROXY_NBTHREAD": str(max(1, min(HAPROXY_MAX_THREADS, cpus)))}


def with_serve_env(env: MutableMapping[str, str], cpus: int | None = None):
    """``env`` with ``serve_env`` filled in where a variable is not set already."""
    for name, value in serve_env(cpus).items():
        env.setdefault(name, value)
    return env

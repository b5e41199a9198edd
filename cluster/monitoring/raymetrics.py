"""The platform's own metrics on Ray's metrics endpoint (``ray.util.metrics``).

Exported by the process that computes them (``jobs.monitor``, ``jobs.predict``)
when it is connected to Ray; Ray's metrics agent on the node serves them in
Prometheus text on ``http://<node>:<metrics_export_port>/metrics`` (the port is
``ray.init(...).address_info["metrics_export_port"]``, also with the dashboard
off), next to Ray's own, so the Ray dashboard's Grafana shows them. Names:

- ``mlops_predictions`` {model_id, source}: predictions written (counter);
- ``mlops_realised_rank_ic`` {model_id, window}: rolling realised RankIC (20, 60);
- ``mlops_ic_decay`` {model_id}: test RankIC minus rolling 20-day realised RankIC;
- ``mlops_drift_score`` {model_id}: the latest day's drift score;
- ``mlops_active_alerts`` {rule}: alerts raised and not resolved.
"""
from __future__ import annotations

import sys

_METRICS: dict | None = None


def _ray_ready() -> bool:
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()


def metrics() -> dict | None:
    """The metric objects (created once per process), or None without Ray."""
    global _METRICS
    if not _ray_ready():
        return None
    if _METRICS is None:
        from ray.util.metrics import Counter, Gauge
        _METRICS = {
            "predictions": Counter("mlops_predictions", "predictions written",
                                   tag_keys=("model_id", "source")),
            "rank_ic": Gauge("mlops_realised_rank_ic", "rolling realised RankIC",
                             tag_keys=("model_id", "window")),
            "decay": Gauge("mlops_ic_decay", "test RankIC minus rolling 20-day RankIC",
                           tag_keys=("model_id",)),
            "drift": Gauge("mlops_drift_score", "latest drift score", tag_keys=("model_id",)),
            "alerts": Gauge("mlops_active_alerts", "active alerts", tag_keys=("rule",)),
        }
    return _METRICS


def count_predictions(model_id: str, source: str, n: int) -> None:
    m = metrics()
    if m is not None and n > 0:
        m["predictions"].inc(float(n), tags={"model_id": model_id, "source": source})


def export_run(summary: dict, alerts_table=None) -> None:
    m = metrics()
    if m is None:
        return
    for model_id, v in summary.get("versions", {}).items():
        for w in ("20", "60"):
            if v.get(f"rank_ic_{w}") is not None:
                m["rank_ic"].set(v[f"rank_ic_{w}"], tags={"model_id": model_id, "window": w})
        if v.get("ic_decay_20") is not None:
            m["decay"].set(v["ic_decay_20"], tags={"model_id": model_id})
        if v.get("drift_score") is not None:
            m["drift"].set(v["drift_score"], tags={"model_id": model_id})
    if alerts_table is not None:
        current = alerts_table.current()
        from cluster.monitoring.alerts import MODEL_RULES, RESOURCE_RULES
        active = current[current["state"] == "raised"] if len(current) else current
        for rule in (*MODEL_RULES, *RESOURCE_RULES):
            n = int((active["rule"] == rule).sum()) if len(active) else 0
            m["alerts"].set(float(n), tags={"rule": rule})

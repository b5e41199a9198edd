"""Comparing registered versions side by side (``GET /api/models/compare``)."""
from __future__ import annotations


MAX_COMPARED = 20


def compare_versions(registry, model_ids: list[str]) -> dict:
    """Each version's state, metrics, hyper-parameters and lineage, and per metric the
    best version (highest; lowest for loss-like metrics: ``mse``, ``loss``)."""
    ids = list(dict.fromkeys(m.strip() for m in model_ids if m.strip()))
    if len(ids) < 2:
        raise ValueError("ids: compare needs at least two model ids, e.g. ids=m/1,m/2")
    if len(ids) > MAX_COMPARED:
        raise ValueError(f"ids: compare at most {MAX_COMPARED} versions at once, got {len(ids)}")
    rows = []
    for model_id in ids:
        name, sep, version = model_id.rpartition("/")
        if not sep or not name or not version:
            raise ValueError(f"model id {model_id!r} is not '<model name>/<version>'")
        info = registry.get(name, version)
        params = dict(registry.client.get_run(info.run_id).data.params) if info.run_id else {}
        lineage = {k[len("lineage."):]: v for k, v in info.tags.items()
                   if k.startswith("lineage.")}
        rows.append({"model_id": info.model_id, "state": info.state,
                     "model_type": info.tags.get("model_type"), "metrics": info.metrics,
                     "params": params, "lineage": lineage})
    metrics = sorted({k for r in rows for k in r["metrics"]})
    best = {}
    for metric in metrics:
        have = [r for r in rows if metric in r["metrics"]]
        lower = any(w in metric for w in ("mse", "loss"))
        pick = (min if lower else max)(have, key=lambda r: r["metrics"][metric])
        best[metric] = pick["model_id"]
    differing = sorted(k for k in {k for r in rows for k in r["params"]}
                       if len({r["params"].get(k) for r in rows}) > 1)
    return {"versions": rows, "metrics": metrics, "best": best, "params_differing": differing}

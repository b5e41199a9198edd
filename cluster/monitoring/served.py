"""What served on date D: every prediction of that trading day with its provenance.

For each prediction (served, shadow or batch): the version that made it, the bars
data version and features table version of its inputs, the rollout, revision and
chosen arm that routed it, and from the registry's lineage the data version the
model was trained on, its feature set, training run and Tune experiment/trial.
"""
from __future__ import annotations

import pandas as pd

from cluster.lake import predictions as P

LINEAGE_KEYS = ("data_version", "feature_set", "training_run", "tune_experiment",
                "tune_trial_id", "code_version", "parent_model")


def served_on(lake_dir, day, instrument: str | None = None, registry=None,
              limit: int | None = None) -> dict:
    try:
        day = pd.Timestamp(day)
    except (TypeError, ValueError):
        raise ValueError(f"--served-on {day!r} is not a date (YYYY-MM-DD)") from None
    frame = P.read_predictions(lake_dir, start=day, end=day)
    if instrument:
        frame = frame[frame["instrument"] == instrument]
    frame = frame.sort_values(["instrument", "time"], kind="stable")
    lineage = {}
    for model_id in frame["version"].dropna().unique():
        lineage[model_id] = _lineage(registry, model_id)
    rows = []
    for r in frame.itertuples(index=False):
        rows.append({
            "instrument": r.instrument, "date": str(day.date()), "version": r.version,
            "output": _num(r.output), "source": r.source, "arm": r.arm,
            "rollout_id": r.rollout_id, "revision": _int(r.revision),
            "request_id": r.request_id, "time": pd.Timestamp(r.time).isoformat(),
            "inputs": {"data_version": _int(r.data_version),
                       "features_version": _int(r.features_version)},
            "trained_on": lineage.get(r.version, {}),
        })
        if limit and len(rows) >= limit:
            break
    return {"date": str(day.date()), "instrument": instrument, "predictions": len(frame),
            "versions": sorted(lineage), "rows": rows}


def _lineage(registry, model_id: str) -> dict:
    if registry is None:
        return {}
    name, _, version = model_id.rpartition("/")
    try:
        info = registry.get(name, version)
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    tags = info.tags
    out = {k: tags.get(f"lineage.{k}") for k in LINEAGE_KEYS if tags.get(f"lineage.{k}")}
    if "data_version" in out:
        out["data_version"] = int(out["data_version"])
    out["state"] = info.state
    return out


def _num(v):
    return None if v is None or v != v else float(v)


def _int(v):
    return None if v is None or v != v else int(v)

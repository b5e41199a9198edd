"""Ensembles as registered versions.

    python -m jobs.train --ensemble stock-lightgbm:3,stock-xgboost:2 [--ensemble-method rank]

Members are registered versions (any type, static or rolling), loaded through the
registry (integrity-checked; all on the same feature set), or freshly trained
models (the top trials of a tune run). They are combined by the mean of their
cross-sectional ranks (default) or z-scores (:class:`~cluster.models.composite.EnsembleModel`),
evaluated on the current features' segments, and registered through the one
registration path with the members named in the lineage (``lineage.members``).
"""
from __future__ import annotations

import json
import time
import uuid

from cluster.errors import MlopsError


def parse_member(text: str) -> tuple[str, str]:
    """``"NAME:V"`` (or ``NAME/V``) -> (name, version)."""
    part = str(text).strip()
    sep = ":" if ":" in part else "/"
    name, _, version = part.rpartition(sep)
    if not name or not version:
        raise ValueError(f"model version {part!r} is not NAME:VERSION")
    return name, version


def parse_members(text: str) -> list[tuple[str, str]]:
    """``"NAME:V,NAME:V"`` (or ``NAME/V``) -> [(name, version), ...]."""
    out = [parse_member(p) for p in str(text).split(",") if p.strip()]
    if len(out) < 2:
        raise ValueError(f"an ensemble needs at least two members, got {text!r}")
    return out


def ensemble_report(model, data, member_ids: list[str], method: str, name: str,
                    settings, segments=None, topk=None, extra: dict | None = None) -> dict:
    """Evaluate ``model`` on ``data`` (its default segments unless given) -> a report."""
    from cluster.features.qlib_bridge import build_dataset, default_segments
    from cluster.training.engine import _data_info, evaluate_segments
    segments = segments or default_segments(data.frame["date"])
    dataset = build_dataset(data.frame, segments, feature_columns=model.feature_names,
                            horizon=settings.qlib.label_horizon)
    metrics = evaluate_segments(model, dataset, topk, settings.training.cost_bps,
                                [s for s in ("valid", "test") if s in dataset.segments])
    config = {"class": "EnsembleModel", "module_path": "cluster.models.composite",
              "kwargs": {"method": method, "members": member_ids}}
    report = {"run_id": uuid.uuid4().hex[:12], "model_type": "ensemble", "model_name": name,
              "kind": "ensemble", "status": "completed", "model_config": config,
              "hyper_parameters": config["kwargs"], "data": _data_info(data, dataset,
                                                                       model.feature_names),
              "metrics": metrics, "ensemble": {"method": method, "members": member_ids,
                                               **(extra or {})}}
    try:
        imp = model.feature_importance()
        report["feature_importance"] = {str(k): float(v) for k, v in imp.head(50).items()}
    except Exception:
        report["feature_importance"] = {}
    return report


def register_ensemble(settings, bus, model, report: dict, data, lineage_extra=None):
    from cluster.training.registration import register_model
    extra = {"members": ",".join(model.member_ids), **(lineage_extra or {})}
    return register_model(settings, bus, report["model_name"], model, report, data,
                          model_type="ensemble", lineage_extra=extra,
                          tags={"kind": "ensemble", "ensemble_method": model.method})


def build_ensemble(members: list[tuple[str, str]], method: str = "rank", name: str | None = None,
                   settings=None, bus=None, data=None, register: bool = True) -> dict:
    """Load the member versions, combine, evaluate and (by default) register; returns the
    summary ``jobs.train --ensemble`` prints."""
    from cluster.config import get_settings
    from cluster.models.composite import EnsembleModel
    from cluster.registry.store import ModelRegistry
    from cluster.training.engine import FeatureData, load_features
    started = time.time()
    settings = settings or get_settings()
    registry = ModelRegistry.for_settings(settings)
    data = data or load_features(settings)
    infos = [registry.get(n, v) for n, v in members]
    feature_sets = {i.feature_set for i in infos}
    if len(feature_sets) != 1:
        raise MlopsError(f"ensemble members were trained on different feature sets "
                         f"{sorted(map(str, feature_sets))}; retrain them on one")
    if data.feature_set != infos[0].feature_set:
        raise MlopsError(f"ensemble members were trained on feature set {infos[0].feature_set!r}, "
                         f"the current features are {data.feature_set!r}")
    loaded = [registry.load(n, v, expected_feature_set=data.feature_set) for n, v in members]
    ids = [i.model_id for i in infos]
    model = EnsembleModel(loaded, method, ids)
    name = name or "stock-ensemble"
    member_dv = max(int(i.tags.get("lineage.data_version", data.data_version)) for i in infos)
    lineage_data = FeatureData(data.frame, member_dv, data.feature_set, data.features_version)
    report = ensemble_report(model, data, ids, method, name, settings)
    summary = {"model": "ensemble", "method": method, "members": ids,
               "run_id": report["run_id"], "metrics": report["metrics"],
               "registry_name": None, "version": None,
               "data_version": member_dv, "feature_set": data.feature_set}
    if register:
        info = register_ensemble(settings, bus, model, report, lineage_data)
        summary.update(registry_name=info.name, version=info.version, state=info.state)
        report["registry"] = {"name": info.name, "version": info.version}
    path = settings.home / "reports" / f"{report['run_id']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=str))
    summary["report"] = str(path)
    summary["seconds"] = round(time.time() - started, 3)
    return summary

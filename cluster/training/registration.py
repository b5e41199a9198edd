"""The one registration path: training (``jobs.train``), tuning (retrain or
checkpoint), rolling retraining and ensembles all register through
:func:`register_model`.

It stores the model (library formats + MLflow pyfunc, :mod:`cluster.registry`),
the training report and the config, the training reference sample (a seeded
sample of train-segment feature rows, :mod:`cluster.monitoring.reference`: the
drift reference and the SHAP background of row models), for a model that reads
windows of rows (sequence models) a seeded sample of training windows
(:mod:`cluster.explain.background`: its SHAP background), the flattened metrics,
lineage tags (data version, feature set, features table version, config hash, code
version, the training run, parent and Tune ids when given) and announces
``model_registered``.
"""
from __future__ import annotations

from cluster.events import EventBus, ModelRegistered


def flat_metrics(metrics: dict) -> dict[str, float]:
    """``{"test": {"rank_ic": x}}`` -> ``{"test_rank_ic": x}`` (numbers only)."""
    return {f"{seg}_{k}": v for seg, m in (metrics or {}).items() if isinstance(m, dict)
            for k, v in m.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def register_model(settings, bus: EventBus | None, name: str, model, report: dict, data, *,
                   model_type: str, lineage_extra: dict | None = None,
                   tags: dict[str, str] | None = None, persist_events: bool = True):
    """Register ``model`` with its ``report`` (the engine's training report) trained on
    ``data`` (a :class:`~cluster.training.engine.FeatureData`); returns the version info."""
    from cluster.explain.background import window_artefacts
    from cluster.monitoring.reference import reference_artefacts
    from cluster.registry.store import Lineage, ModelRegistry, code_version
    info = report.get("data") or {}
    extra = {k: v for k, v in (lineage_extra or {}).items() if v is not None}
    lineage = Lineage(data_version=data.data_version, feature_set=data.feature_set,
                      config=report.get("model_config") or {}, code_version=code_version(),
                      segments=info.get("segments"), instruments=info.get("instruments"),
                      training_run=report.get("run_id"),
                      features_version=data.features_version, **extra)
    all_tags = {"model_type": model_type,
                "feature_columns": str(len(info.get("features") or []))}
    all_tags.update(tags or {})
    segments, features = info.get("segments") or {}, list(info.get("features") or [])
    artefacts = {**reference_artefacts(data.frame, segments, features),
                 **window_artefacts(model, data.frame, segments, features)}
    registry = ModelRegistry.for_settings(settings)
    version = registry.register(name, model, lineage=lineage, report=report,
                                config=report.get("model_config") or {},
                                metrics=flat_metrics(report.get("metrics")),
                                params=report.get("hyper_parameters"), tags=all_tags,
                                artefacts=artefacts)
    if bus is not None:
        bus.publish(ModelRegistered(name=version.name, version=version.version,
                                    data_version=data.data_version,
                                    feature_set=data.feature_set), persist=persist_events)
    return version

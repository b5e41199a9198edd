"""Which table versions vacuum and log cleanup must keep readable.

A bars data version is protected when a registered model's lineage names it
(``lineage.data_version`` on any version in the MLflow registry), when a live
deployment serves a model whose lineage names it (the serving desired state
persisted under ``$MLOPS_HOME/serving/<deployment>.json``), or when it is one of
the last ``lake.retain_versions`` data versions. Every other table keeps its last
``lake.retain_versions`` versions. delta-rs's own vacuum only knows a retention
period; ``jobs.maintain`` passes these versions to it as ``keep_versions``.

If the registry cannot be read, nothing is protected-by-lineage with certainty,
so the bars table is not vacuumed at all (``RetentionUnknown``).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from cluster.errors import LakeError
from cluster.lake import tables

log = logging.getLogger(__name__)
MAINTENANCE_KINDS = ("maintenance", "migration")


class RetentionUnknown(LakeError):
    """The versions a model or deployment needs could not be determined."""


def lineage_versions(settings) -> dict[str, int]:
    """Model id -> the bars data version its lineage names, for every registered
    model version."""
    try:
        from cluster.registry.store import ModelRegistry
        client = ModelRegistry.for_settings(settings).client
        out: dict[str, int] = {}
        token = None
        while True:
            page = client.search_model_versions(None, max_results=1000, page_token=token)
            for mv in page:
                value = (mv.tags or {}).get("lineage.data_version")
                if value is not None and str(value).lstrip("-").isdigit():
                    out[f"{mv.name}/{mv.version}"] = int(value)
            token = page.token
            if not token:
                return out
    except Exception as exc:
        raise RetentionUnknown(f"cannot read the model registry to find the data versions "
                               f"models name ({type(exc).__name__}: {exc}); not vacuuming "
                               "bars") from exc


def deployed_models(home: Path) -> set[str]:
    """Model ids a persisted serving desired state holds (stable, standby, loaded)."""
    out: set[str] = set()
    for path in sorted((Path(home) / "serving").glob("*.json")):
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise RetentionUnknown(f"cannot read the deployment state {path}: {exc}; "
                                   "not vacuuming bars") from exc
        ids = list(state.get("versions") or []) + [state.get("stable"), state.get("standby")]
        rollout = state.get("rollout") or {}
        ids += [rollout.get("candidate"), rollout.get("incumbent")]
        out |= {str(i) for i in ids if i}
    return out


def protected_data_versions(settings) -> dict[int, list[str]]:
    """Bars data version -> why it is protected (model ids, ``deployment:<model>``)."""
    named = lineage_versions(settings)
    why: dict[int, list[str]] = {}
    for model, version in named.items():
        why.setdefault(version, []).append(f"model:{model}")
    for model in deployed_models(settings.home):
        if model in named:
            why.setdefault(named[model], []).append(f"deployment:{model}")
        else:
            log.warning("deployed model %s is not in the registry; its data version is "
                        "unknown", model)
    return why


def recent_data_versions(path: Path, latest: int, n: int) -> list[int]:
    """The last ``n`` data versions up to ``latest`` (maintenance commits skipped)."""
    out = []
    for v in range(latest, -1, -1):
        if not tables.commit_entry_exists(path, v):
            break
        if tables.commit_meta_at(path, v).get("kind") not in MAINTENANCE_KINDS:
            out.append(v)
            if len(out) >= n:
                break
    return sorted(out)

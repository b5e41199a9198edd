"""Explanations of registered versions, as the API serves them.

``Explanations(registry, settings)`` loads a version through ``ModelRegistry.load``
(integrity-checked), builds its explainer once (kept for the last few versions), and
answers:

- ``local(model_id, row=...)`` or ``local(model_id, instrument=..., date=...)``:
  ``{"model_id", "prediction", "base_value", "values": {feature: v}, "groups":
  {group: v}, "method"}``; a group's value is the sum of its features' values, so
  ``base_value + sum(values) == prediction`` holds for groups too;
- ``global_(model_id)``: mean |SHAP| per feature and, per group, the mean over rows of
  |the group's summed values|, over the version's training reference sample (trees and
  linear: all of it; torch: its first ``TORCH_GLOBAL_ROWS`` rows, as the permutation
  explainer costs ~(2F+1) x background model rows per row). Computed once per version
  and stored with it as the artefact ``explain_global.json``.
"""
from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict

import numpy as np
import pandas as pd

from cluster.errors import NotFoundError
from cluster.explain.explainers import explainer_for
from cluster.explain.predictor import NotExplainable, feature_names
from cluster.features.catalog import group_of

GLOBAL_ARTEFACT = "explain_global.json"
TORCH_GLOBAL_ROWS = 32
CACHED_VERSIONS = 4


class InputRowError(NotExplainable, ValueError):
    """A posted row lacks features the model needs, or is not numeric."""


def _split(model_id: str) -> tuple[str, str]:
    name, sep, version = str(model_id).rpartition("/")
    if not sep or not name or not version:
        raise ValueError(f"model id {model_id!r} is not '<model name>/<version>'")
    return name, version


class _Loaded:
    def __init__(self, model_id, model, features, background, explainer):
        self.model_id, self.model, self.features = model_id, model, features
        self.background, self.explainer = background, explainer
        self.groups = [group_of(f) for f in features]


class Explanations:
    def __init__(self, registry, settings=None, method: str | None = None):
        self.registry = registry
        self.settings = settings
        self.method = method
        self._cache: OrderedDict[str, _Loaded] = OrderedDict()
        self._lock = threading.Lock()

    # -- loading -------------------------------------------------------------------
    def _load(self, model_id: str) -> _Loaded:
        with self._lock:
            if model_id in self._cache:
                self._cache.move_to_end(model_id)
                return self._cache[model_id]
        from cluster.monitoring.reference import load_reference
        name, version = _split(model_id)
        model = self.registry.load(name, version)
        report_features = None
        if not getattr(model, "feature_names", None):
            report = self.registry.artefact_json(name, version, "report.json")
            report_features = report.get("data", {}).get("features")
        features = feature_names(model, report_features)
        ref = load_reference(self.registry, name, version)
        background = None
        if ref is not None and set(features) <= set(ref.columns):
            background = ref[features].to_numpy(dtype=np.float32)
        loaded = _Loaded(model_id, model, features, background,
                         explainer_for(model, features, background, self.method))
        with self._lock:
            self._cache[model_id] = loaded
            while len(self._cache) > CACHED_VERSIONS:
                self._cache.popitem(last=False)
        return loaded

    # -- local ---------------------------------------------------------------------
    def _row_matrix(self, loaded: _Loaded, row: dict) -> np.ndarray:
        missing = [f for f in loaded.features if f not in row]
        if missing:
            raise InputRowError(f"row lacks feature(s) {missing[:10]}"
                                + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
                                + f" that {loaded.model_id} needs")
        try:
            return np.array([[np.nan if row[f] is None else float(row[f])
                              for f in loaded.features]], dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise InputRowError(f"feature values must be numbers or null: {exc}") from None

    def _features_row(self, loaded: _Loaded, instrument: str, date) -> np.ndarray:
        from cluster.features.service import read_instrument_features
        day = pd.Timestamp(date).date().isoformat()
        try:
            frame = read_instrument_features(instrument, start=day, end=day,
                                             columns=["instrument", "date", *loaded.features],
                                             settings=self.settings)
        except NotFoundError:
            raise
        except Exception as exc:
            raise NotFoundError(f"no features for {instrument!r} on {day}: {exc}") from None
        if frame.empty:
            raise NotFoundError(f"no features for {instrument!r} on {day}")
        return frame[loaded.features].to_numpy(dtype=np.float32)[-1:]

    def local(self, model_id: str, row: dict | None = None, instrument: str | None = None,
              date=None) -> dict:
        loaded = self._load(model_id)
        if row is not None:
            x = self._row_matrix(loaded, row)
        else:
            x = self._features_row(loaded, instrument, date)
        out = loaded.explainer.explain(x)
        values = out.values[0]
        groups: dict[str, float] = {}
        for g, v in zip(loaded.groups, values):
            groups[g] = groups.get(g, 0.0) + float(v)
        answer = {"model_id": model_id, "prediction": float(out.predictions[0]),
                  "base_value": float(out.base[0]),
                  "values": {f: float(v) for f, v in zip(loaded.features, values)},
                  "groups": groups, "method": loaded.explainer.method}
        if instrument is not None:
            answer.update(instrument=instrument, date=pd.Timestamp(date).date().isoformat())
        return answer

    # -- global --------------------------------------------------------------------
    def global_(self, model_id: str, recompute: bool = False) -> dict:
        name, version = _split(model_id)
        stored = None if recompute else self.registry.derived_bytes(name, version,
                                                                   GLOBAL_ARTEFACT)
        if stored is not None:
            return json.loads(stored)
        loaded = self._load(model_id)
        if loaded.background is None:
            raise NotFoundError(f"{model_id} has no training reference sample to explain "
                                "globally (registered before the sample existed)")
        rows = loaded.background
        if type(loaded.explainer).__name__ == "PermutationShap":
            rows = rows[:TORCH_GLOBAL_ROWS]
        answer = summarise(loaded.explainer.explain(rows), loaded.features, loaded.groups)
        answer.update(model_id=model_id, method=loaded.explainer.method,
                      rows_from="training reference sample", computed_at=time.time())
        self.registry.attach_artefact(name, version, GLOBAL_ARTEFACT,
                                      json.dumps(answer).encode())
        return answer


def summarise(out, features: list[str], groups: list[str]) -> dict:
    """Global importance from explained rows: mean |value| per feature (largest first)
    and per group the mean of |sum of its features' values|."""
    values = out.values
    importance = np.abs(values).mean(axis=0)
    order = np.argsort(-importance, kind="stable")
    by_group: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        by_group.setdefault(g, []).append(i)
    grouped = {g: float(np.abs(values[:, idx].sum(axis=1)).mean()) for g, idx in by_group.items()}
    return {"rows": int(len(values)), "base_value": float(np.mean(out.base)),
            "importance": {features[i]: float(importance[i]) for i in order},
            "groups": dict(sorted(grouped.items(), key=lambda kv: -kv[1]))}

"""Explanations of registered versions, as the API serves them.

``Explanations(registry, settings)`` loads a version through ``ModelRegistry.load``
(integrity-checked), builds its explainer once (kept for the last few versions), and
answers:

- ``local(model_id, row=...)``, ``local(model_id, window=[row, ...])`` or
  ``local(model_id, instrument=..., date=...)``: ``{"model_id", "prediction",
  "base_value", "values": {feature: v}, "groups": {group: v}, "method"}``; a group's
  value is the sum of its features' values, so ``base_value + sum(values) ==
  prediction`` holds for groups too. A model that reads windows (sequence models,
  and rolling/ensemble versions with one) explains the window of the prediction --
  the instrument's last ``L`` rows of the features table up to the date, as serving
  builds it, or the posted window (oldest row first; a posted row is a window of one
  row, padded as serving pads) -- and a feature's value covers all its rows in the
  window. A row model given a window reads its last row, as serving does. With a
  ``date``, a rolling version is explained by the step that answers that date.
- ``global_(model_id)``: mean |SHAP| per feature and, per group, the mean over rows of
  |the group's summed values|, over the version's training reference sample (trees and
  linear: all of it; row torch models: its first ``TORCH_GLOBAL_ROWS`` rows, as the
  permutation explainer costs ~(2F+1) x background model rows per row), or for a
  model that reads windows, over its stored training windows other than the
  background ones (:mod:`cluster.explain.background`). Computed once per version and
  stored with it as the artefact ``explain_global.json``.
"""
from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict

import numpy as np
import pandas as pd

from cluster.errors import NotFoundError
from cluster.explain.background import BACKGROUND_WINDOWS, load_windows
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
    def __init__(self, model_id, model, features, background, length, method):
        self.model_id, self.model, self.features = model_id, model, features
        self.background, self.length, self.method = background, length, method
        self.explainer = explainer_for(model, features, background, method)
        self.groups = [group_of(f) for f in features]
        self._steps: dict[int, object] = {}
        self._lock = threading.Lock()

    @property
    def windows(self) -> bool:
        return self.length > 1

    def explainer_at(self, date):
        """The explainer of the prediction of ``date``: a rolling version's step that
        covers it (the latest when undated), else the version's one explainer."""
        from cluster.models.composite import RollingModel
        if date is None or not isinstance(self.model, RollingModel):
            return self.explainer
        k = int(self.model.step_index(np.array([pd.Timestamp(date)], "datetime64[ns]"))[0])
        if k == len(self.model.steps) - 1:
            return self.explainer
        with self._lock:
            if k not in self._steps:
                self._steps[k] = explainer_for(self.model.steps[k]["model"], self.features,
                                               self.background, self.method)
            return self._steps[k]


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
        from cluster.models.inputs import window_length
        from cluster.monitoring.reference import load_reference
        name, version = _split(model_id)
        model = self.registry.load(name, version)
        report_features = None
        if not getattr(model, "feature_names", None):
            report = self.registry.artefact_json(name, version, "report.json")
            report_features = report.get("data", {}).get("features")
        features = feature_names(model, report_features)
        length = window_length(model)
        background = None
        if length > 1:        # sequence models: the training windows stored with it
            background = load_windows(self.registry, name, version, features, length)
        else:
            ref = load_reference(self.registry, name, version)
            if ref is not None and set(features) <= set(ref.columns):
                background = ref[features].to_numpy(dtype=np.float32)
        loaded = _Loaded(model_id, model, features, background, length, self.method)
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

    def _window_matrix(self, loaded: _Loaded, window: list[dict]) -> np.ndarray:
        if not window:
            raise InputRowError("window holds no rows")
        rows = [self._row_matrix(loaded, row)[0] for row in window]
        return np.stack(rows)[None]                       # (1, rows, F), oldest first

    def _features_window(self, loaded: _Loaded, instrument: str, date) -> np.ndarray:
        """The instrument's last ``loaded.length`` rows of the features table up to
        ``date`` (which must have a row), ``(1, rows, F)``, as serving reads them."""
        from cluster.features.service import read_instrument_features
        from cluster.models.torch_windows import last_rows_windows
        day = pd.Timestamp(date).normalize()
        span = int(loaded.length * 1.5) + 10              # calendar days: weekends, holidays
        columns = ["instrument", "date", *loaded.features]
        while True:
            start = (day - pd.Timedelta(days=span - 1)).date().isoformat()
            try:
                frame = read_instrument_features(instrument, start=start,
                                                 end=day.date().isoformat(), columns=columns,
                                                 settings=self.settings)
            except NotFoundError:
                frame = pd.DataFrame(columns=columns)
            except Exception as exc:
                raise NotFoundError(f"no features for {instrument!r} on "
                                    f"{day.date().isoformat()}: {exc}") from None
            if frame.empty or pd.Timestamp(frame["date"].max()) != day:
                raise NotFoundError(f"no features for {instrument!r} on "
                                    f"{day.date().isoformat()}")
            # enough rows, or nothing earlier (a short history is padded, as serving pads)
            if len(frame) >= loaded.length or span > 4 * 366 + loaded.length * 3:
                break
            span *= 2
        frame = frame.assign(date=pd.to_datetime(frame["date"]))
        return last_rows_windows(frame, [instrument], loaded.features, loaded.length)

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
              date=None, window: list[dict] | None = None) -> dict:
        loaded = self._load(model_id)
        if window is not None:
            x = self._window_matrix(loaded, window)
            if not loaded.windows:
                x = x[:, -1, :]                         # a row model reads the last row
        elif row is not None:
            x = self._row_matrix(loaded, row)
        elif loaded.windows:
            x = self._features_window(loaded, instrument, date)
        else:
            x = self._features_row(loaded, instrument, date)
        explainer = loaded.explainer_at(date)
        out = explainer.explain(x)
        values = out.values[0]
        groups: dict[str, float] = {}
        for g, v in zip(loaded.groups, values):
            groups[g] = groups.get(g, 0.0) + float(v)
        answer = {"model_id": model_id, "prediction": float(out.predictions[0]),
                  "base_value": float(out.base[0]),
                  "values": {f: float(v) for f, v in zip(loaded.features, values)},
                  "groups": groups, "method": explainer.method}
        if date is not None:
            answer["date"] = pd.Timestamp(date).date().isoformat()
        if instrument is not None:
            answer["instrument"] = instrument
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
            raise NotFoundError(f"{model_id} has no training "
                                + ("windows" if loaded.windows else "reference sample")
                                + " to explain globally (registered before they were stored)")
        rows = loaded.background
        if loaded.windows:         # the stored windows the explainer does not integrate over
            rows = rows[BACKGROUND_WINDOWS:] if len(rows) > BACKGROUND_WINDOWS else rows
        elif type(loaded.explainer).__name__ == "PermutationShap":
            rows = rows[:TORCH_GLOBAL_ROWS]
        answer = summarise(loaded.explainer.explain(rows), loaded.features, loaded.groups)
        answer.update(model_id=model_id, method=loaded.explainer.method,
                      rows_from="training windows" if loaded.windows
                      else "training reference sample", computed_at=time.time())
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

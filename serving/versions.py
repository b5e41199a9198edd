"""A registered model version loaded for serving: checked, health-checked, callable.

Loading goes through ``ModelRegistry.load``, which verifies every artefact's
sha256 and refuses a model trained on another feature set than the one served.
A loaded version then answers a probe row; one that raises or returns a
non-finite value is refused before any traffic reaches it.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from cluster.errors import MlopsError

log = logging.getLogger(__name__)


class VersionUnhealthy(MlopsError):
    """A version loaded but failed its health check (or cannot be served at all)."""


class InputError(MlopsError):
    """The request's inputs do not fit the model (missing features, unknown instrument)."""


def split_model_id(model_id: str) -> tuple[str, str]:
    name, sep, version = str(model_id).rpartition("/")
    if not sep or not name or not version:
        raise ValueError(f"model id {model_id!r} is not '<model name>/<version>'")
    return name, version


@dataclass(eq=False)
class LoadedVersion:
    model_id: str
    features: list[str]
    feature_set: str | None
    data_version: int | None            # bars version the model was trained on
    predict_matrix: Callable[[np.ndarray], np.ndarray]
    model: object = field(repr=False, default=None)

    def __post_init__(self):
        self._needed = frozenset(self.features)

    def matrix_from_rows(self, rows: list[dict]) -> np.ndarray:
        """Posted feature rows -> the model's column order. An absent feature is an
        input error; an explicit null is a missing value (NaN), as in the lake."""
        feats = self.features
        for i, row in enumerate(rows):
            if not self._needed <= row.keys():
                missing = sorted(self._needed - row.keys())
                raise InputError(f"row {i} lacks feature(s) {missing[:10]}"
                                 + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
                                 + f" that {self.model_id} needs")
        try:
            return np.array([[row[f] for f in feats] for row in rows], dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise InputError(f"feature values must be numbers or null: {exc}") from None

    def predict(self, x: np.ndarray) -> np.ndarray:
        out = np.asarray(self.predict_matrix(x), dtype=np.float64).reshape(-1)
        if out.shape[0] != x.shape[0]:
            raise VersionUnhealthy(f"{self.model_id} returned {out.shape[0]} predictions "
                                   f"for {x.shape[0]} rows")
        return out


def _predictor(model, features: list[str]) -> Callable[[np.ndarray], np.ndarray]:
    """The row-level prediction call of a model from the zoo."""
    from cluster.models.rows import NoRowPrediction, row_predictor
    try:
        return row_predictor(model, features)
    except NoRowPrediction as exc:
        raise VersionUnhealthy(str(exc)) from None


def load_version(registry, model_id: str, feature_set: str | None) -> LoadedVersion:
    """Load (integrity + compatibility checked) and health-check one version."""
    name, version = split_model_id(model_id)
    model = registry.load(name, version, expected_feature_set=feature_set)
    info = registry.get(name, version)
    features = [str(f) for f in (getattr(model, "feature_names", None) or [])]
    if not features:
        report = registry.artefact_json(name, version, "report.json")
        features = [str(f) for f in report.get("data", {}).get("features", [])]
    if not features:
        raise VersionUnhealthy(f"{model_id} records no feature names; cannot map inputs")
    data_version = info.tags.get("lineage.data_version")
    loaded = LoadedVersion(model_id, features, info.feature_set,
                           int(data_version) if data_version not in (None, "") else None,
                           _predictor(model, features), model)
    health_check(loaded)
    return loaded


def health_check(version: LoadedVersion) -> None:
    """Predict a probe row (all features missing, as a halted day reads)."""
    probe = np.full((2, len(version.features)), np.nan, dtype=np.float32)
    probe[1] = 0.0
    try:
        out = version.predict(probe)
    except VersionUnhealthy:
        raise
    except Exception as exc:
        raise VersionUnhealthy(f"{version.model_id} failed its health check: "
                               f"{type(exc).__name__}: {exc}") from exc
    if not np.isfinite(out).all():
        raise VersionUnhealthy(f"{version.model_id} failed its health check: "
                               f"non-finite prediction {out.tolist()}")

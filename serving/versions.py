"""A registered model version loaded for serving: checked, health-checked, callable.

Loading goes through ``ModelRegistry.load``, which verifies every artefact's
sha256, rebuilds the model from its library-format files (never a pickle) and
refuses a model trained on another feature set than the one served. A loaded
version then answers a probe; one that raises or returns a non-finite value is
refused before any traffic reaches it.

Every version predicts from raw windows (:mod:`cluster.models.inputs`):
``(n, L, F)`` feature rows per prediction, oldest first, plus the date of each
predicted row when the request has one. Tabular models read the last row;
sequence models read their ``lookback``/``seq_len`` rows, built from the features
table for the instruments path (as training builds them) or posted as
``windows``; rolling models pick the step covering the date (the latest step for
new dates or undated rows); ensembles combine their members over the request's
rows (one cross-section).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from cluster.errors import MlopsError
from cluster.models.inputs import window_length
from cluster.models.torch_windows import fit_windows

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


@dataclass(frozen=True)
class ModelInputs:
    """What one request gives a version: raw windows in its feature order and dates."""
    windows: np.ndarray                 # (n, L, F) float32, NaN where there is no row
    dates: np.ndarray | None = None     # datetime64 of each predicted row, or None

    def __len__(self) -> int:
        return int(self.windows.shape[0])


@dataclass(eq=False)
class LoadedVersion:
    model_id: str
    features: list[str]
    feature_set: str | None
    data_version: int | None            # bars version the model was trained on
    model: object = field(repr=False, default=None)

    def __post_init__(self):
        self._needed = frozenset(self.features)
        self.window = window_length(self.model)

    def _matrix(self, rows: list[dict], where: str) -> np.ndarray:
        feats = self.features
        for i, row in enumerate(rows):
            if not self._needed <= row.keys():
                missing = sorted(self._needed - row.keys())
                raise InputError(f"{where} {i} lacks feature(s) {missing[:10]}"
                                 + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
                                 + f" that {self.model_id} needs")
        try:
            return np.array([[row[f] for f in feats] for row in rows], dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise InputError(f"feature values must be numbers or null: {exc}") from None

    def inputs_from_rows(self, rows: list[dict] | None = None, date=None,
                         windows: list[list[dict]] | None = None) -> ModelInputs:
        """Posted feature rows (each a window of one row) or posted windows (each a
        list of one instrument's rows, oldest first, the row predicted last) -> inputs.
        An absent feature is an input error; an explicit null is a missing value
        (NaN), as in the lake. ``date`` (optional) is the date the rows are of."""
        if windows is not None:
            if any(not w for w in windows):
                raise InputError("every window needs at least one row")
            length = max(max(len(w) for w in windows), 1)
            out = np.full((len(windows), length, len(self.features)), np.nan, np.float32)
            for k, w in enumerate(windows):
                out[k, length - len(w):] = self._matrix(w, f"window {k} row")
        else:
            out = self._matrix(rows or [], "row")[:, None, :]
        dates = None if date is None else \
            np.full(out.shape[0], np.datetime64(str(date), "ns"), dtype="datetime64[ns]")
        return ModelInputs(out, dates)

    def predict(self, inputs: ModelInputs) -> np.ndarray:
        windows = fit_windows(inputs.windows, self.window)
        out = np.asarray(self.model.predict_window(windows, inputs.dates),
                         dtype=np.float64).reshape(-1)
        if out.shape[0] != len(inputs):
            raise VersionUnhealthy(f"{self.model_id} returned {out.shape[0]} predictions "
                                   f"for {len(inputs)} rows")
        return out


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
    if not callable(getattr(model, "predict_window", None)):
        raise VersionUnhealthy(f"{type(model).__name__} has no predict_window; cannot serve it")
    data_version = info.tags.get("lineage.data_version")
    loaded = LoadedVersion(model_id, features, info.feature_set,
                           int(data_version) if data_version not in (None, "") else None, model)
    health_check(loaded)
    return loaded


def health_check(version: LoadedVersion) -> None:
    """Predict a probe: two windows, one all missing (as a halted day reads), one zeros."""
    probe = np.full((2, version.window, len(version.features)), np.nan, dtype=np.float32)
    probe[1] = 0.0
    try:
        out = version.predict(ModelInputs(probe))
    except VersionUnhealthy:
        raise
    except Exception as exc:
        raise VersionUnhealthy(f"{version.model_id} failed its health check: "
                               f"{type(exc).__name__}: {exc}") from exc
    if not np.isfinite(out).all():
        raise VersionUnhealthy(f"{version.model_id} failed its health check: "
                               f"non-finite prediction {out.tolist()}")

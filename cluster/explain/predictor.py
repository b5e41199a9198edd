"""A model's prediction of raw feature rows or windows, and its feature names, for the
explainers."""
from __future__ import annotations

from typing import Callable

import numpy as np

from cluster.errors import MlopsError
from cluster.models.rows import NoRowPrediction
from cluster.models.rows import row_predictor as _rows


class NotExplainable(MlopsError):
    """This kind of model cannot be explained (yet); the message says why."""


def row_predictor(model, features: list[str]) -> Callable[[np.ndarray], np.ndarray]:
    try:
        predict = _rows(model, features)
    except NoRowPrediction as exc:
        raise NotExplainable(f"cannot explain it: {exc}") from None
    return lambda x: np.asarray(predict(np.asarray(x, dtype=np.float32)),
                                dtype=np.float64).reshape(-1)


def window_predictor(model) -> Callable[[np.ndarray], np.ndarray]:
    """A model's prediction of independent ``(n, L, F)`` raw windows (its own window
    length; no dates: the latest step of a rolling model)."""
    if not callable(getattr(model, "predict_window", None)):
        raise NotExplainable(f"cannot explain it: {type(model).__name__} has no "
                             "predict_window")
    return lambda w: np.asarray(model.predict_window(np.asarray(w, dtype=np.float32)),
                                dtype=np.float64).reshape(-1)


def feature_names(model, fallback: list[str] | None = None) -> list[str]:
    names = [str(f) for f in (getattr(model, "feature_names", None) or fallback or [])]
    if not names:
        raise NotExplainable("the model records no feature names")
    return names

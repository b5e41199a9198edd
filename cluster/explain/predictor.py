"""A model's prediction of raw feature rows, and its feature names, for the explainers."""
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


def feature_names(model, fallback: list[str] | None = None) -> list[str]:
    names = [str(f) for f in (getattr(model, "feature_names", None) or fallback or [])]
    if not names:
        raise NotExplainable("the model records no feature names")
    return names

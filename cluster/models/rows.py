"""A model's prediction of independent raw feature rows (a 2-D array in its feature
order): what the explainers (``cluster.explain``) call. It is the row-wise view of
the one prediction path of every model, ``model.predict_window`` on windows of one
row (:mod:`cluster.models.inputs`), which serving calls with whole windows."""
from __future__ import annotations

from typing import Callable

import numpy as np

from cluster.errors import MlopsError
from cluster.models.inputs import window_length


class NoRowPrediction(MlopsError):
    """The model cannot predict independent rows (a sequence model, or no method)."""


def row_predictor(model, features: list[str]) -> Callable[[np.ndarray], np.ndarray]:
    if hasattr(model, "predict_array"):          # LightGBM, XGBoost, linear: the fast path
        return model.predict_array
    if window_length(model) > 1:
        raise NoRowPrediction("sequence models read each instrument's history window; "
                              "independent rows are not their input")
    if callable(getattr(model, "predict_window", None)):   # torch, rolling, ensembles

        def predict(x: np.ndarray) -> np.ndarray:
            return np.asarray(model.predict_window(np.asarray(x, np.float32)[:, None, :]),
                              dtype=np.float64)
        return predict
    raise NoRowPrediction(f"{type(model).__name__} has no row-level prediction method")

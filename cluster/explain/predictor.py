"""A model's prediction of raw feature rows (a 2-D array in its feature order)."""
from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd

from cluster.errors import MlopsError


class NotExplainable(MlopsError):
    """This kind of model cannot be explained (yet); the message says why."""


def row_predictor(model, features: list[str]) -> Callable[[np.ndarray], np.ndarray]:
    if hasattr(model, "predict_array"):          # LightGBM, XGBoost, linear
        return lambda x: np.asarray(model.predict_array(x), dtype=np.float64).reshape(-1)
    if getattr(model, "sequence", False):
        raise NotExplainable("sequence models read each instrument's history window; "
                             "explaining them is not supported yet")
    if hasattr(model, "predict_frame"):          # the non-sequence torch models

        def predict(x: np.ndarray) -> np.ndarray:
            # one pseudo-instrument per row, all on one date: rows stay independent
            index = pd.MultiIndex.from_arrays(
                [pd.DatetimeIndex([pd.Timestamp("2000-01-03")] * len(x)),
                 [f"row{i}" for i in range(len(x))]], names=["datetime", "instrument"])
            frame = pd.DataFrame(np.asarray(x, dtype=np.float32), index=index, columns=features)
            return model.predict_frame(frame).to_numpy(dtype=np.float64)
        return predict
    raise NotExplainable(f"{type(model).__name__} has no row-level prediction method")


def feature_names(model, fallback: list[str] | None = None) -> list[str]:
    names = [str(f) for f in (getattr(model, "feature_names", None) or fallback or [])]
    if not names:
        raise NotExplainable("the model records no feature names")
    return names

"""A model's prediction of independent raw feature rows (a 2-D array in its feature
order): what serving (``serving.versions``) and the explainers (``cluster.explain``)
call."""
from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd

from cluster.errors import MlopsError


class NoRowPrediction(MlopsError):
    """The model cannot predict independent rows (a sequence model, or no method)."""


def row_predictor(model, features: list[str]) -> Callable[[np.ndarray], np.ndarray]:
    if hasattr(model, "predict_array"):          # LightGBM, XGBoost, linear
        return model.predict_array
    if getattr(model, "sequence", False):
        raise NoRowPrediction("sequence models need each instrument's history window; "
                              "predicting independent rows is not supported yet")
    if hasattr(model, "predict_frame"):          # the non-sequence torch models

        def predict(x: np.ndarray) -> np.ndarray:
            # one pseudo-instrument per row, all on one date: rows stay independent
            index = pd.MultiIndex.from_arrays(
                [pd.DatetimeIndex([pd.Timestamp("2000-01-03")] * len(x)),
                 [f"row{i}" for i in range(len(x))]], names=["datetime", "instrument"])
            return model.predict_frame(pd.DataFrame(x, index=index, columns=features)).to_numpy()
        return predict
    raise NoRowPrediction(f"{type(model).__name__} has no row-level prediction method")

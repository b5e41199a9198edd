"""Qlib's ``LinearModel`` on robustly scaled features.

Choice (the seed leaves linear open): ridge regression, ``alpha=1.0`` on features
scaled by median/MAD and clipped to ±3 (NaN/inf -> 0), fitted on train only;
no intercept is needed because Qlib's ``CSZScoreNorm`` centres the label daily.
Raw Alpha158 holds NaN and inf that plain OLS cannot take; scaling inside the
model keeps the same answers on raw rows at serving time.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from qlib.contrib.model.linear import LinearModel
from qlib.data.dataset.handler import DataHandlerLP

from cluster.models.normalize import RobustScaler

LINEAR_DEFAULTS = dict(estimator="ridge", alpha=1.0, fit_intercept=False, clip=3.0)


class LinearRidgeModel(LinearModel):
    def __init__(self, estimator="ridge", alpha=1.0, fit_intercept=False, clip=3.0,
                 include_valid=False, **_ignored):
        super().__init__(estimator=estimator, alpha=alpha, fit_intercept=fit_intercept,
                         include_valid=include_valid)
        self.scaler = RobustScaler(clip)
        self.feature_names: list[str] = []
        self.history: list[dict] = []
        self.best_epoch = 1

    def fit(self, dataset, reporter=None, stop_event=None, **_):
        df = dataset.prepare("train", col_set=["feature", "label"], data_key=DataHandlerLP.DK_L)
        df = df[np.isfinite(df["label"].to_numpy()).ravel()]
        if df.empty:
            raise ValueError("train segment is empty")
        self.feature_names = list(df["feature"].columns)
        x = self.scaler.fit(df["feature"].to_numpy()).transform(df["feature"].to_numpy())
        y = df["label"].to_numpy(dtype=np.float64).ravel()
        self._fit(x, y, None)
        row = {"epoch": 1, "n_epochs": 1, "train_loss": float(np.mean((x @ self.coef_
                                                                       + self.intercept_ - y) ** 2))}
        self.history = [row]
        if reporter is not None:
            reporter(dict(row, best_epoch=1))
        return self

    def predict(self, dataset, segment="test"):
        x = dataset.prepare(segment, col_set="feature", data_key=DataHandlerLP.DK_I)
        return pd.Series(self.predict_array(x.to_numpy()), index=x.index)

    def predict_array(self, x: np.ndarray) -> np.ndarray:
        if self.coef_ is None:
            raise ValueError("model is not fitted yet")
        return self.scaler.transform(x) @ self.coef_ + self.intercept_

    def feature_importance(self) -> pd.Series:
        """|coefficient| on scaled features (each feature has unit robust scale)."""
        return pd.Series(np.abs(self.coef_), index=self.feature_names).sort_values(
            ascending=False)

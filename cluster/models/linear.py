"""Qlib's ``LinearModel`` on robustly scaled features.

Choice (the seed leaves linear open): ridge regression, ``alpha=1.0`` on features
scaled by median/MAD and clipped to ±3 (NaN/inf -> 0), fitted on train only;
no intercept is needed because Qlib's ``CSZScoreNorm`` centres the label daily.
Raw Alpha158 holds NaN and inf that plain OLS cannot take; scaling inside the
model keeps the same answers on raw rows at serving time. Stored as plain arrays
(coefficients, intercept, scaler) and JSON, never pickled.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from qlib.contrib.model.linear import LinearModel
from qlib.data.dataset.handler import DataHandlerLP

from cluster.models.normalize import RobustScaler

LINEAR_DEFAULTS = dict(estimator="ridge", alpha=1.0, fit_intercept=False, clip=3.0)


class LinearRidgeModel(LinearModel):
    iteration_unit = None   # one closed-form fit
    window_length = 1
    ARRAYS = "linear.npz"

    def __init__(self, estimator="ridge", alpha=1.0, fit_intercept=False, clip=3.0,
                 include_valid=False, **_ignored):
        super().__init__(estimator=estimator, alpha=alpha, fit_intercept=fit_intercept,
                         include_valid=include_valid)
        self.init_kwargs = dict(estimator=estimator, alpha=alpha, fit_intercept=fit_intercept,
                                clip=clip, include_valid=include_valid)
        self.scaler = RobustScaler(clip)
        self.feature_names: list[str] = []
        self.history: list[dict] = []

    def fit(self, dataset, reporter=None, stop_event=None, **_):
        df = dataset.prepare("train", col_set=["feature", "label"], data_key=DataHandlerLP.DK_L)
        df = df[np.isfinite(df["label"].to_numpy()).ravel()]
        if df.empty:
            raise ValueError("train segment is empty")
        self.feature_names = list(df["feature"].columns)
        x = self.scaler.fit(df["feature"].to_numpy()).transform(df["feature"].to_numpy())
        y = df["label"].to_numpy(dtype=np.float64).ravel()
        self._fit(x, y, None)
        row = {"fit": 1, "train_loss": float(np.mean((x @ self.coef_ + self.intercept_ - y) ** 2))}
        self.history = [row]
        if reporter is not None:
            reporter(dict(row))
        return self

    def predict(self, dataset, segment="test"):
        x = dataset.prepare(segment, col_set="feature", data_key=DataHandlerLP.DK_I)
        return pd.Series(self.predict_array(x.to_numpy()), index=x.index)

    def predict_array(self, x: np.ndarray) -> np.ndarray:
        if self.coef_ is None:
            raise ValueError("model is not fitted yet")
        return self.scaler.transform(x) @ self.coef_ + self.intercept_

    def predict_window(self, windows: np.ndarray, dates=None) -> np.ndarray:
        """Serving: ``(n, L, F)`` raw windows; the model reads the last row of each."""
        return self.predict_array(np.asarray(windows)[:, -1, :])

    @property
    def best_iteration(self) -> int:
        return 1

    def save_artefacts(self, directory: Path) -> dict:
        from cluster.registry.artefacts import save_arrays
        if self.coef_ is None:
            raise ValueError("model is not fitted yet")
        save_arrays(Path(directory) / self.ARRAYS, coef=np.asarray(self.coef_, np.float64),
                    intercept=np.asarray(self.intercept_, np.float64),
                    **self.scaler.to_arrays())
        return {"kwargs": self.init_kwargs, "feature_names": self.feature_names,
                "history": self.history}

    @classmethod
    def load_artefacts(cls, directory: Path, state: dict, **_):
        from cluster.registry.artefacts import load_arrays
        model = cls(**state["kwargs"])
        arrays = load_arrays(Path(directory) / cls.ARRAYS)
        model.coef_ = arrays["coef"]
        model.intercept_ = float(arrays["intercept"])
        model.scaler = RobustScaler.from_arrays(arrays)
        model.feature_names = [str(f) for f in state.get("feature_names", [])]
        model.history = list(state.get("history", []))
        return model

    def feature_importance(self) -> pd.Series:
        """|coefficient| on scaled features (each feature has unit robust scale)."""
        return pd.Series(np.abs(self.coef_), index=self.feature_names).sort_values(
            ascending=False)

"""Qlib's LightGBM and XGBoost models, with early stopping on the valid IC.

On daily returns the valid MSE of LightGBM with the seed defaults stops
improving after the first round (measured), so loss-based early stopping ends
training at iteration 1. These subclasses of Qlib's ``LGBModel``/``XGBModel``
keep Qlib's data preparation and ``predict``, and replace ``fit`` so that:

- the daily cross-sectional IC (or RankIC, ``early_stop_metric``) of the booster's
  running predictions on the valid segment is scored every round by the one
  :class:`~cluster.training.metrics.DailyScorer`, and the one
  :class:`~cluster.training.early_stop.EarlyStopper` watches it;
- progress goes to a ``reporter`` every ``report_every`` rounds as rows keyed
  ``round``/``n_rounds`` (boosting rounds, not epochs; the training engine turns
  them into ``training_progress`` events, the Tune trainable into ``ray.tune.report``),
  and a ``stop_event`` ends the run with ``TrainingStopped``;
- ±inf features (Alpha158 divides by zero on halted days) become missing values.

Stored (see :mod:`cluster.registry.artefacts`) as the library's own model file
(LightGBM text, XGBoost UBJSON) plus JSON state; never pickled.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from qlib.contrib.model.gbdt import LGBModel
from qlib.contrib.model.xgboost import XGBModel
from qlib.data.dataset.handler import DataHandlerLP

from cluster.errors import TrainingStopped
from cluster.training.early_stop import EarlyStopper
from cluster.training.metrics import DailyScorer

LIGHTGBM_DEFAULTS = dict(loss="mse", num_leaves=210, learning_rate=0.05, feature_fraction=0.85,
                         bagging_fraction=0.85, bagging_freq=5, min_child_samples=20,
                         num_boost_round=1000, early_stopping_rounds=50, num_threads=1,
                         early_stop_metric="ic", report_every=10, seed=0)
XGBOOST_DEFAULTS = dict(max_depth=6, learning_rate=0.05, subsample=0.85, colsample_bytree=0.85,
                        n_estimators=1000, early_stopping_rounds=50, nthread=1,
                        early_stop_metric="ic", report_every=10, seed=0)
TREE_METRICS = ("ic", "rank_ic")


def _segment(dataset, segment: str, data_key=DataHandlerLP.DK_L):
    df = dataset.prepare(segment, col_set=["feature", "label"], data_key=data_key)
    if df.empty:
        raise ValueError(f"segment {segment!r} of the dataset is empty")
    x = df["feature"].to_numpy(dtype=np.float32, copy=True)
    x[~np.isfinite(x)] = np.nan
    y = df["label"].to_numpy(dtype=np.float64).ravel()
    return x, y, df.index, [str(c) for c in df["feature"].columns]


def _clean(x) -> np.ndarray:
    x = np.array(x, dtype=np.float32, copy=True)
    x[~np.isfinite(x)] = np.nan
    return x


class _Rounds:
    """Round bookkeeping shared by both boosters: score, stop, history, reporting."""

    def __init__(self, total: int, every: int, reporter, stop_event, patience: int,
                 metric: str, scorer: DailyScorer):
        if metric not in TREE_METRICS:
            raise ValueError(f"early_stop_metric must be one of {TREE_METRICS}, got {metric!r}")
        self.total, self.every, self.reporter, self.stop_event = total, every, reporter, stop_event
        self.metric, self.scorer = metric, scorer
        self.stopper = EarlyStopper(patience)
        self.history: list[dict] = []

    def step(self, rnd: int, pred, train_loss: float) -> bool:
        """Record round ``rnd`` (1-based) from the valid predictions; True to stop."""
        if self.stop_event is not None and self.stop_event.is_set():
            raise TrainingStopped(f"stopped at boosting round {rnd}")
        score = self.scorer.score(pred, self.metric)
        row = {"round": rnd, "n_rounds": self.total, "train_loss": train_loss,
               "valid_loss": self.scorer.mse(pred), f"valid_{self.metric}": score}
        self.history.append(row)
        _, stop = self.stopper.update(rnd, score)
        if self.reporter is not None and (rnd % self.every == 0 or stop or rnd == self.total):
            self.reporter(dict(row, best_round=self.stopper.best_step))
        return stop

    @property
    def best(self) -> int:
        return self.stopper.best_step


class _TreeModel:
    """What both boosters share: prediction on raw rows, the serving window, storage."""

    iteration_unit = "round"
    window_length = 1
    BOOSTER_FILE = ""

    def _init_common(self, kwargs: dict, early_stop_metric: str, report_every: int) -> None:
        self.init_kwargs = dict(kwargs)      # what load_artefacts rebuilds the model from
        self.early_stop_metric = early_stop_metric
        self.report_every = report_every
        self.history: list[dict] = []
        self.best_round = 0
        self.feature_names: list[str] = []

    @property
    def best_iteration(self) -> int:
        return self.best_round

    def predict(self, dataset, segment="test"):
        x = dataset.prepare(segment, col_set="feature", data_key=DataHandlerLP.DK_I)
        return pd.Series(self.predict_array(x.to_numpy(dtype=np.float32)), index=x.index)

    def predict_window(self, windows: np.ndarray, dates=None) -> np.ndarray:
        """Serving: ``(n, L, F)`` raw windows; a tree reads the last row of each."""
        return self.predict_array(np.asarray(windows)[:, -1, :])

    def save_artefacts(self, directory: Path) -> dict:
        if self.model is None:
            raise ValueError("model is not fitted yet")
        self._save_booster(Path(directory) / self.BOOSTER_FILE)
        from cluster.registry.artefacts import json_safe
        return json_safe({"kwargs": self.init_kwargs, "best_round": self.best_round,
                          "feature_names": self.feature_names, "history": self.history})

    @classmethod
    def load_artefacts(cls, directory: Path, state: dict, **_):
        model = cls(**state["kwargs"])
        model.model = model._load_booster(Path(directory) / cls.BOOSTER_FILE)
        model.best_round = int(state.get("best_round") or 0)
        model.feature_names = [str(f) for f in state.get("feature_names", [])]
        model.history = list(state.get("history", []))
        return model


class LightGBMModel(_TreeModel, LGBModel):
    """Qlib's ``LGBModel`` with IC early stopping, progress reporting and stop."""

    BOOSTER_FILE = "booster.txt"

    def __init__(self, loss="mse", early_stopping_rounds=50, num_boost_round=1000,
                 early_stop_metric="ic", report_every=10, **kwargs):
        super().__init__(loss=loss, early_stopping_rounds=early_stopping_rounds,
                         num_boost_round=num_boost_round, **kwargs)
        self._init_common(dict(loss=loss, early_stopping_rounds=early_stopping_rounds,
                               num_boost_round=num_boost_round,
                               early_stop_metric=early_stop_metric,
                               report_every=report_every, **kwargs),
                          early_stop_metric, report_every)

    def fit(self, dataset, reporter=None, stop_event=None, init_model=None, **_):
        import lightgbm as lgb
        x_tr, y_tr, _, names = _segment(dataset, "train")
        x_va, y_va, idx_va, _ = _segment(dataset, "valid")
        self.feature_names = names
        dtrain = lgb.Dataset(x_tr, label=y_tr, free_raw_data=False)
        dvalid = lgb.Dataset(x_va, label=y_va, reference=dtrain, free_raw_data=False)
        rounds = _Rounds(self.num_boost_round, self.report_every, reporter, stop_event,
                         self.early_stopping_rounds, self.early_stop_metric,
                         DailyScorer(idx_va.get_level_values("datetime"), y_va))
        start = init_model.current_iteration() if init_model is not None else 0
        seen: dict = {}

        def feval(preds, data):
            seen["train" if data is dtrain else "valid"] = preds
            return []

        def callback(env):
            train_loss = float(np.mean((seen["train"] - y_tr) ** 2))
            if rounds.step(start + env.iteration + 1, seen["valid"], train_loss):
                raise lgb.callback.EarlyStopException(rounds.best - 1 - start, [])

        params = dict(self.params, metric="None", verbosity=-1)
        self.model = lgb.train(params, dtrain, num_boost_round=self.num_boost_round - start,
                               valid_sets=[dtrain, dvalid], valid_names=["train", "valid"],
                               feval=feval, callbacks=[callback], init_model=init_model)
        self.model.best_iteration = rounds.best
        self.history, self.best_round = rounds.history, rounds.best
        return self

    def predict_array(self, x: np.ndarray) -> np.ndarray:
        if self.model is None:
            raise ValueError("model is not fitted yet")
        return self.model.predict(_clean(x), num_iteration=self.best_round or None)

    def feature_importance(self) -> pd.Series:
        gain = self.model.feature_importance(importance_type="gain",
                                             iteration=self.best_round or None)
        return pd.Series(gain, index=self.feature_names).sort_values(ascending=False)

    def _save_booster(self, path: Path) -> None:
        self.model.save_model(str(path))

    def _load_booster(self, path: Path):
        import lightgbm as lgb
        return lgb.Booster(model_file=str(path))


class XGBoostModel(_TreeModel, XGBModel):
    """Qlib's ``XGBModel`` with IC early stopping, progress reporting and stop."""

    BOOSTER_FILE = "booster.ubj"

    def __init__(self, early_stopping_rounds=50, n_estimators=1000, early_stop_metric="ic",
                 report_every=10, **kwargs):
        super().__init__(**kwargs)
        self.n_estimators = n_estimators
        self.early_stopping_rounds = early_stopping_rounds
        self._init_common(dict(early_stopping_rounds=early_stopping_rounds,
                               n_estimators=n_estimators, early_stop_metric=early_stop_metric,
                               report_every=report_every, **kwargs),
                          early_stop_metric, report_every)

    def fit(self, dataset, reporter=None, stop_event=None, init_model=None, **_):
        import xgboost as xgb
        x_tr, y_tr, _, names = _segment(dataset, "train")
        x_va, y_va, idx_va, _ = _segment(dataset, "valid")
        self.feature_names = names
        dtrain = xgb.DMatrix(x_tr, label=y_tr, missing=np.nan)
        dvalid = xgb.DMatrix(x_va, label=y_va, missing=np.nan)
        rounds = _Rounds(self.n_estimators, self.report_every, reporter, stop_event,
                         self.early_stopping_rounds, self.early_stop_metric,
                         DailyScorer(idx_va.get_level_values("datetime"), y_va))
        seen: dict = {}

        def metric(predt, dmatrix):
            seen["valid" if dmatrix is dvalid else "train"] = predt
            return "none", 0.0

        class Callback(xgb.callback.TrainingCallback):
            def after_iteration(self, model, epoch, evals_log):
                train_loss = float(np.mean((seen["train"] - y_tr) ** 2))
                return rounds.step(epoch + 1, seen["valid"], train_loss)

        params = dict(self._params, disable_default_eval_metric=1)
        params.setdefault("objective", "reg:squarederror")
        self.model = xgb.train(params, dtrain, num_boost_round=self.n_estimators,
                               evals=[(dtrain, "train"), (dvalid, "valid")],
                               custom_metric=metric, verbose_eval=False,
                               callbacks=[Callback()], xgb_model=init_model)
        self.history, self.best_round = rounds.history, rounds.best
        return self

    def predict_array(self, x: np.ndarray) -> np.ndarray:
        import xgboost as xgb
        if self.model is None:
            raise ValueError("model is not fitted yet")
        rounds = (0, self.best_round) if self.best_round else (0, 0)
        return self.model.predict(xgb.DMatrix(_clean(x), missing=np.nan), iteration_range=rounds)

    def feature_importance(self) -> pd.Series:
        score = self.model.get_score(importance_type="total_gain")
        values = [score.get(f"f{i}", 0.0) for i in range(len(self.feature_names))]
        return pd.Series(values, index=self.feature_names).sort_values(ascending=False)

    def _save_booster(self, path: Path) -> None:
        self.model.save_model(str(path))

    def _load_booster(self, path: Path):
        import xgboost as xgb
        booster = xgb.Booster()
        booster.load_model(str(path))
        return booster

"""Qlib's LightGBM and XGBoost models, with early stopping on the valid IC.

On daily returns the valid MSE of LightGBM with the seed defaults stops
improving after the first round (measured), so loss-based early stopping ends
training at iteration 1. These subclasses of Qlib's ``LGBModel``/``XGBModel``
keep Qlib's data preparation and ``predict``, and replace ``fit`` so that:

- a daily cross-sectional IC (or RankIC) on the valid segment is computed every
  round from the booster's own running predictions, and early stopping watches it;
- progress goes to a ``reporter`` every ``report_every`` rounds (the training
  engine turns it into ``training_progress`` events, the Tune trainable into
  ``ray.tune.report``), and a ``stop_event`` ends the run with ``TrainingStopped``;
- ±inf features (Alpha158 divides by zero on halted days) become missing values.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from qlib.contrib.model.gbdt import LGBModel
from qlib.contrib.model.xgboost import XGBModel
from qlib.data.dataset.handler import DataHandlerLP

from cluster.errors import TrainingStopped
from cluster.training.metrics import DailyIC, daily_ic

LIGHTGBM_DEFAULTS = dict(loss="mse", num_leaves=210, learning_rate=0.05, feature_fraction=0.85,
                         bagging_fraction=0.85, bagging_freq=5, min_child_samples=20,
                         num_boost_round=1000, early_stopping_rounds=50, num_threads=1,
                         early_stop_metric="ic", report_every=10, seed=0)
XGBOOST_DEFAULTS = dict(max_depth=6, learning_rate=0.05, subsample=0.85, colsample_bytree=0.85,
                        n_estimators=1000, early_stopping_rounds=50, nthread=1,
                        early_stop_metric="ic", report_every=10, seed=0)


def _segment(dataset, segment: str, data_key=DataHandlerLP.DK_L):
    df = dataset.prepare(segment, col_set=["feature", "label"], data_key=data_key)
    if df.empty:
        raise ValueError(f"segment {segment!r} of the dataset is empty")
    x = df["feature"].to_numpy(dtype=np.float32, copy=True)
    x[~np.isfinite(x)] = np.nan
    y = df["label"].to_numpy(dtype=np.float64).ravel()
    return x, y, df.index, list(df["feature"].columns)


class _SegmentScorer:
    """IC (or RankIC) and MSE of running predictions on one segment."""

    def __init__(self, index, y, metric: str):
        self.metric = metric
        self.y = y
        self.dates = index.get_level_values("datetime")
        self.index = index
        self.fast = DailyIC(self.dates, y)

    def ic(self, pred) -> float:
        if self.metric == "rank_ic":
            return float(daily_ic(pd.Series(pred, index=self.index),
                                  pd.Series(self.y, index=self.index), "spearman").mean())
        return self.fast(pred)

    def mse(self, pred) -> float:
        return float(np.mean((np.asarray(pred) - self.y) ** 2))


class _Progress:
    """Shared bookkeeping for boosting rounds: history, best round, reporting."""

    def __init__(self, total: int, every: int, reporter, stop_event, patience: int):
        self.total, self.every, self.reporter, self.stop_event = total, every, reporter, stop_event
        self.patience = patience
        self.history: list[dict] = []
        self.best_score, self.best_round = -np.inf, 0

    def step(self, rnd: int, train_loss, valid_loss, valid_ic) -> bool:
        """Record round ``rnd`` (1-based); True when early stopping says stop."""
        if self.stop_event is not None and self.stop_event.is_set():
            raise TrainingStopped(f"stopped at boosting round {rnd}")
        row = {"epoch": rnd, "n_epochs": self.total, "train_loss": train_loss,
               "valid_loss": valid_loss, "valid_ic": valid_ic}
        self.history.append(row)
        score = valid_ic if np.isfinite(valid_ic) else -np.inf
        if score > self.best_score:
            self.best_score, self.best_round = score, rnd
        stop = rnd - self.best_round >= self.patience
        if self.reporter is not None and (rnd % self.every == 0 or stop or rnd == self.total):
            self.reporter(dict(row, best_epoch=self.best_round))
        return stop


class LightGBMModel(LGBModel):
    """Qlib's ``LGBModel`` with IC early stopping, progress reporting and stop."""

    def __init__(self, loss="mse", early_stopping_rounds=50, num_boost_round=1000,
                 early_stop_metric="ic", report_every=10, **kwargs):
        super().__init__(loss=loss, early_stopping_rounds=early_stopping_rounds,
                         num_boost_round=num_boost_round, **kwargs)
        self.early_stop_metric = early_stop_metric
        self.report_every = report_every
        self.history: list[dict] = []
        self.best_epoch = 0
        self.feature_names: list[str] = []

    def fit(self, dataset, reporter=None, stop_event=None, init_model=None, **_):
        import lightgbm as lgb
        x_tr, y_tr, idx_tr, names = _segment(dataset, "train")
        x_va, y_va, idx_va, _ = _segment(dataset, "valid")
        self.feature_names = names
        dtrain = lgb.Dataset(x_tr, label=y_tr, free_raw_data=False)
        dvalid = lgb.Dataset(x_va, label=y_va, reference=dtrain, free_raw_data=False)
        valid_scorer = _SegmentScorer(idx_va, y_va, self.early_stop_metric)
        progress = _Progress(self.num_boost_round, self.report_every, reporter, stop_event,
                             self.early_stopping_rounds)
        start = init_model.current_iteration() if init_model is not None else 0

        def feval(preds, data):
            if data is dvalid:
                return [("ic", valid_scorer.ic(preds), True),
                        ("l2", valid_scorer.mse(preds), False)]
            return [("l2", float(np.mean((preds - y_tr) ** 2)), False)]

        def callback(env):
            res = {(d, m): v for d, m, v, *_ in env.evaluation_result_list}
            stop = progress.step(start + env.iteration + 1, res[("train", "l2")],
                                 res[("valid", "l2")], res[("valid", "ic")])
            if stop:
                raise lgb.callback.EarlyStopException(progress.best_round - 1 - start,
                                                      [("valid", "ic", progress.best_score, True)])

        params = dict(self.params, metric="None", verbosity=-1)
        self.model = lgb.train(params, dtrain, num_boost_round=self.num_boost_round - start,
                               valid_sets=[dtrain, dvalid], valid_names=["train", "valid"],
                               feval=feval, callbacks=[callback], init_model=init_model)
        self.model.best_iteration = progress.best_round
        self.history, self.best_epoch = progress.history, progress.best_round
        return self

    def predict(self, dataset, segment="test"):
        x = dataset.prepare(segment, col_set="feature", data_key=DataHandlerLP.DK_I)
        return pd.Series(self.predict_array(x.to_numpy(dtype=np.float32)), index=x.index)

    def predict_array(self, x: np.ndarray) -> np.ndarray:
        if self.model is None:
            raise ValueError("model is not fitted yet")
        x = np.array(x, dtype=np.float32, copy=True)
        x[~np.isfinite(x)] = np.nan
        return self.model.predict(x, num_iteration=self.best_epoch or None)

    def feature_importance(self) -> pd.Series:
        gain = self.model.feature_importance(importance_type="gain",
                                             iteration=self.best_epoch or None)
        return pd.Series(gain, index=self.feature_names).sort_values(ascending=False)


class XGBoostModel(XGBModel):
    """Qlib's ``XGBModel`` with IC early stopping, progress reporting and stop."""

    def __init__(self, early_stopping_rounds=50, n_estimators=1000, early_stop_metric="ic",
                 report_every=10, **kwargs):
        super().__init__(**kwargs)
        self.n_estimators = n_estimators
        self.early_stopping_rounds = early_stopping_rounds
        self.early_stop_metric = early_stop_metric
        self.report_every = report_every
        self.history: list[dict] = []
        self.best_epoch = 0
        self.feature_names: list[str] = []

    def fit(self, dataset, reporter=None, stop_event=None, init_model=None, **_):
        import xgboost as xgb
        x_tr, y_tr, idx_tr, names = _segment(dataset, "train")
        x_va, y_va, idx_va, _ = _segment(dataset, "valid")
        self.feature_names = names
        dtrain = xgb.DMatrix(x_tr, label=y_tr, missing=np.nan)
        dvalid = xgb.DMatrix(x_va, label=y_va, missing=np.nan)
        valid_scorer = _SegmentScorer(idx_va, y_va, self.early_stop_metric)
        progress = _Progress(self.n_estimators, self.report_every, reporter, stop_event,
                             self.early_stopping_rounds)

        train_scorer = _SegmentScorer(idx_tr, y_tr, "ic")

        def metric(predt, dmatrix):
            scorer = valid_scorer if dmatrix is dvalid else train_scorer
            return [("mse", scorer.mse(predt)), ("ic", scorer.ic(predt))]

        class Callback(xgb.callback.TrainingCallback):
            def after_iteration(self, model, epoch, evals_log):
                return progress.step(epoch + 1, evals_log["train"]["mse"][-1],
                                     evals_log["valid"]["mse"][-1], evals_log["valid"]["ic"][-1])

        params = dict(self._params, disable_default_eval_metric=1)
        params.setdefault("objective", "reg:squarederror")
        self.model = xgb.train(params, dtrain, num_boost_round=self.n_estimators,
                               evals=[(dtrain, "train"), (dvalid, "valid")],
                               custom_metric=metric, verbose_eval=False,
                               callbacks=[Callback()], xgb_model=init_model)
        self.history, self.best_epoch = progress.history, progress.best_round
        return self

    def predict(self, dataset, segment="test"):
        x = dataset.prepare(segment, col_set="feature", data_key=DataHandlerLP.DK_I)
        return pd.Series(self.predict_array(x.to_numpy(dtype=np.float32)), index=x.index)

    def predict_array(self, x: np.ndarray) -> np.ndarray:
        import xgboost as xgb
        if self.model is None:
            raise ValueError("model is not fitted yet")
        x = np.array(x, dtype=np.float32, copy=True)
        x[~np.isfinite(x)] = np.nan
        rounds = (0, self.best_epoch) if self.best_epoch else (0, 0)
        return self.model.predict(xgb.DMatrix(x, missing=np.nan), iteration_range=rounds)

    def feature_importance(self) -> pd.Series:
        score = self.model.get_score(importance_type="total_gain")
        values = [score.get(f"f{i}", 0.0) for i in range(len(self.feature_names))]
        return pd.Series(values, index=self.feature_names).sort_values(ascending=False)

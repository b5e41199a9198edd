"""One explainer per model family; each returns, for rows ``x`` (raw features in the
model's order), the base value and per-feature SHAP values of every row.

- ``TreeContrib``: LightGBM's ``pred_contrib`` / XGBoost's ``pred_contribs`` (the
  libraries' own TreeSHAP, over the trees the model predicts with). The default for
  trees: ``bench/explain.py`` (LightGBM, 180 features, 200 trees) found the same
  values as ``shap.TreeExplainer`` (max difference 0.0) at about the same speed,
  local and global (ratios 0.8-1.4 either way on this shared machine), and it needs
  no explainer built per version (shap's: 0.4-1.8 s to rebuild the booster at its
  best iteration and convert it).
- ``ShapTree``: ``shap.TreeExplainer`` on the booster cut at the model's best
  iteration (kept for the bench and as ``method="shap"``).
- ``LinearShap``: ``shap.LinearExplainer`` on the ridge model's scaled inputs (the
  model is linear in them): exact, ``coef * (scaled x - background mean)``.
- ``PermutationShap``: ``shap.PermutationExplainer`` (model-agnostic, additive by
  construction) over a fixed background of training reference rows; for the
  non-sequence torch models (mlp, tabnet) and ensembles of row models. Its
  permutations come from NumPy's global generator, so every row is explained under a
  lock right after seeding it: the same model and row always give identical values.
- ``WindowShap``: the same explainer for models that read a window of ``L`` rows per
  prediction (lstm, transformer, informer, timesnet, patchtst; rolling models and
  ensembles with such a member). The explained input is the ``(L, F)`` window and
  its players are the F features: masking feature j replaces its whole column over
  the window by the background window's (:class:`WindowMasker`, a custom shap
  masker), so a feature's value is its contribution through all its lags and the
  values stay exactly additive. The background: the first ``BACKGROUND_WINDOWS`` of
  the version's stored training windows (:mod:`cluster.explain.background`; an
  ensemble's members are ranked against all of them).
"""
from __future__ import annotations

import contextlib
import sys
import threading
from dataclasses import dataclass

import numpy as np

from cluster.explain.background import BACKGROUND_WINDOWS
from cluster.explain.predictor import NotExplainable, row_predictor, window_predictor

EXPLAIN_SEED = 20240607
BACKGROUND_ROWS = 50         # permutation explainer: rows integrated over per evaluation
SMALL_BATCH = 64
MODEL_BATCH = 512            # window explainer: windows per model call
PERMUTATIONS = 2             # forward + backward passes each; values stay exactly additive

_global_rng_lock = threading.Lock()


@dataclass
class Explained:
    base: np.ndarray          # (n,) base value of each row
    values: np.ndarray        # (n, features)
    predictions: np.ndarray   # (n,) the model's predictions of the rows


def _rows(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x.reshape(1, -1) if x.ndim == 1 else x


class TreeContrib:
    method = "pred_contrib"

    def __init__(self, model):
        from cluster.models.gbdt import LightGBMModel, XGBoostModel
        self.model = model
        if isinstance(model, LightGBMModel):
            self.kind = "lightgbm"
        elif isinstance(model, XGBoostModel):
            self.kind = "xgboost"
        else:
            raise NotExplainable(f"{type(model).__name__} is not a LightGBM/XGBoost model")

    def explain(self, x) -> Explained:
        x = _rows(x)
        m = self.model
        if self.kind == "lightgbm":
            it = m.best_iteration or None
            # a few rows: one thread (OpenMP's start-up dominates, and spikes p99 on a
            # busy machine); many: the library's default pool
            threads = {"num_threads": 1} if len(x) < SMALL_BATCH else {}
            contrib = m.model.predict(x, pred_contrib=True, num_iteration=it, **threads)
        else:
            import xgboost as xgb
            rounds = (0, m.best_iteration) if m.best_iteration else (0, 0)
            contrib = m.model.predict(xgb.DMatrix(x, missing=np.nan), pred_contribs=True,
                                      iteration_range=rounds)
        contrib = np.asarray(contrib, dtype=np.float64)
        values, base = contrib[:, :-1], contrib[:, -1]
        return Explained(base, values, m.predict_array(x).astype(np.float64))


class ShapTree:
    method = "shap.TreeExplainer"

    def __init__(self, model):
        import shap
        TreeContrib(model)                          # same families
        booster = model.model
        if hasattr(booster, "model_to_string"):     # LightGBM: only the trees it predicts with
            import lightgbm as lgb
            booster = lgb.Booster(model_str=booster.model_to_string(
                num_iteration=model.best_iteration or None))
        elif model.best_iteration:                      # XGBoost: slice to the best iteration
            booster = booster[: model.best_iteration]
        self.model = model
        self.explainer = shap.TreeExplainer(booster)

    def explain(self, x) -> Explained:
        x = _rows(x)
        values = np.asarray(self.explainer.shap_values(x), dtype=np.float64)
        base = np.full(len(x), float(np.ravel(self.explainer.expected_value)[0]))
        return Explained(base, values, self.model.predict_array(x).astype(np.float64))


class LinearShap:
    method = "shap.LinearExplainer"

    def __init__(self, model, background: np.ndarray | None):
        import shap
        self.model = model
        width = len(model.coef_)
        bg = (model.scaler.transform(_rows(background)) if background is not None
              and len(background) else np.zeros((1, width)))
        masker = shap.maskers.Independent(bg, max_samples=len(bg))
        self.explainer = shap.LinearExplainer((np.asarray(model.coef_, dtype=np.float64),
                                               float(model.intercept_)), masker)

    def explain(self, x) -> Explained:
        x = _rows(x)
        scaled = self.model.scaler.transform(x)
        values = np.asarray(self.explainer.shap_values(scaled), dtype=np.float64).reshape(
            len(x), -1)
        base = np.full(len(x), float(np.ravel(self.explainer.expected_value)[0]))
        return Explained(base, values, self.model.predict_array(x).astype(np.float64))


def fixed_background(reference: np.ndarray, rows: int = BACKGROUND_ROWS,
                     seed: int = EXPLAIN_SEED) -> np.ndarray:
    """A fixed subsample of the training reference rows (the same every time)."""
    reference = _rows(reference)
    if len(reference) <= rows:
        return reference
    idx = np.sort(np.random.default_rng(seed).choice(len(reference), rows, replace=False))
    return reference[idx]


class PermutationShap:
    method = "shap.PermutationExplainer"

    def __init__(self, model, features: list[str], background: np.ndarray,
                 permutations: int = PERMUTATIONS, seed: int = EXPLAIN_SEED):
        import shap
        if background is None or not len(background):
            raise NotExplainable("no background sample: this version has no training "
                                 "reference sample (registered before it existed)")
        self.predict = row_predictor(model, features)
        self.background = fixed_background(background, seed=seed)
        self.seed = seed
        self.max_evals = permutations * (2 * len(features) + 1)
        masker = shap.maskers.Independent(self.background, max_samples=len(self.background))
        self.explainer = shap.PermutationExplainer(self.predict, masker, seed=seed)

    def _inputs(self, x) -> np.ndarray:
        return _rows(x)

    def explain(self, x) -> Explained:
        x = self._inputs(x)
        base, values = np.empty(len(x)), np.empty((len(x), self.players), dtype=np.float64)
        with _global_rng_lock, _one_torch_thread():
            for i, sample in enumerate(x):
                np.random.seed(self.seed)           # each input on its own, identically
                out = self.explainer(sample[None], max_evals=self.max_evals, silent=True)
                values[i] = np.asarray(out.values, dtype=np.float64).reshape(-1)
                base[i] = float(np.ravel(out.base_values)[0])
            return Explained(base, values, self.predict(x))

    @property
    def players(self) -> int:
        return int(self.background.shape[-1])


class WindowMasker:
    """A shap masker of one ``(L, F)`` window whose players are its F features: the
    samples of ``mask`` are the background windows with the columns of the features
    ``mask`` keeps taken from ``x`` (over the whole window)."""
    immutable_outputs = True          # every call returns a new array: no copy needed

    def __init__(self, background: np.ndarray):
        self.background = np.asarray(background, dtype=np.float32)
        self.shape = (self.background.shape[0], self.background.shape[2])
        # masks per model call: ~MODEL_BATCH windows (shap's default is 10 masks, i.e.
        # small torch batches; all 2F+1 at once would hold (2F+1) x background windows)
        self.default_batch_size = max(1, MODEL_BATCH // max(self.shape[0], 1))

    def __call__(self, mask, x):
        out = self.background.copy()
        out[:, :, mask] = np.asarray(x, dtype=np.float32)[None][:, :, mask]
        return out

    def mask_shapes(self, x):
        return [(self.shape[1],)]


def as_windows(x, length: int) -> np.ndarray:
    """Windows ``(n, L', F)`` or rows ``(n, F)`` / ``(F,)`` (windows of one row) ->
    ``(n, length, F)`` windows: the last ``length`` rows, NaN-padded at the front."""
    from cluster.models.torch_windows import fit_windows
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 1:
        x = x[None, None, :]
    elif x.ndim == 2:
        x = x[:, None, :]
    return fit_windows(x, length)


class WindowShap(PermutationShap):
    method = "shap.PermutationExplainer(windows)"

    def __init__(self, model, features: list[str], background: np.ndarray | None,
                 permutations: int = PERMUTATIONS, seed: int = EXPLAIN_SEED):
        import shap
        from cluster.models.inputs import window_length
        if background is None or not len(background):
            raise NotExplainable("no background windows: this version was registered before "
                                 "its training windows were stored with it")
        self.length = window_length(model)
        self.predict = window_predictor(model)
        # the sample's first windows: seeded draws, the same every time
        self.background = as_windows(background[:BACKGROUND_WINDOWS], self.length)
        if self.background.shape[-1] != len(features):
            raise NotExplainable(f"background windows have {self.background.shape[-1]} "
                                 f"features, the model {len(features)}")
        self.seed = seed
        self.max_evals = permutations * (2 * len(features) + 1)
        self.explainer = shap.PermutationExplainer(self.predict, WindowMasker(self.background),
                                                   seed=seed)

    def _inputs(self, x) -> np.ndarray:
        return as_windows(x, self.length)


@contextlib.contextmanager
def _one_torch_thread():
    """Torch's intra-op pool on many small batches: a 2-row explanation took 27 s with
    2 threads on the busy 2-core machine and 0.09 s with 1 (measured)."""
    torch = sys.modules.get("torch")
    if torch is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def explainer_for(model, features: list[str], background: np.ndarray | None,
                  method: str | None = None):
    """The explainer of a model from the zoo (``method="shap"`` for trees: shap's own).
    ``background``: training reference rows ``(n, F)``, or for a model that reads
    windows, its stored training windows ``(n, L, F)``."""
    from cluster.models.composite import EnsembleModel, RollingModel
    from cluster.models.gbdt import LightGBMModel, XGBoostModel
    from cluster.models.inputs import window_length
    from cluster.models.linear import LinearRidgeModel
    if isinstance(model, RollingModel):   # what it answers for new dates: the latest step
        return explainer_for(model.step_for(None), features, background, method)
    if window_length(model) > 1:
        if isinstance(model, EnsembleModel) and background is not None:
            model = model.against(as_windows(background, window_length(model)))
        return WindowShap(model, features, background)
    if background is not None and np.ndim(background) == 3:
        background = np.asarray(background)[:, -1, :]   # a row model: the windows' last rows
    if isinstance(model, EnsembleModel) and background is not None:
        # rows scored against the background's cross-section, not each other's
        return PermutationShap(model.against(background), features, background)
    if isinstance(model, (LightGBMModel, XGBoostModel)):
        return ShapTree(model) if method == "shap" else TreeContrib(model)
    if isinstance(model, LinearRidgeModel):
        return LinearShap(model, background)
    return PermutationShap(model, features, background)

"""Models made of registered-style models: a rolling model (one step model per date
range) and an ensemble (several models combined per cross-section).

**RollingModel** holds the step models of a rolling retrain
(:mod:`cluster.training.rolling`), each with the test date range it covers and its
lineage (train/valid ranges, training run, the step it replaces). A row dated ``d``
is predicted by the step whose range covers ``d``; a date after the last range (or
an undated row) by the latest step; a date before the first range by the first.

**EnsembleModel** combines members -- model types, seeds, rolling models -- by the
mean of their cross-sectional scores: ``method="rank"`` turns each member's
predictions of one date into centred percentile ranks, ``(rank - 0.5) / n - 0.5`` in
(-0.5, 0.5) (ties share their average rank); ``method="zscore"`` into z-scores
``(x - mean) / std`` (0 where a date's predictions are constant). Both put members on
one scale, so no member dominates because its raw predictions are larger, and both
keep the order a single member gives. A request's rows are one cross-section when
they carry no dates. The feature columns are the union of the members' (each member
reads its own).

Both predict from raw windows like every zoo model (:mod:`cluster.models.inputs`),
and store their parts in sub-directories with :func:`cluster.registry.artefacts.save_model`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cluster.models.inputs import window_length
from cluster.models.torch_windows import fit_windows

ENSEMBLE_METHODS = ("rank", "zscore")


def _as_dates(dates, n: int) -> np.ndarray | None:
    if dates is None:
        return None
    out = np.asarray(dates, dtype="datetime64[ns]").reshape(-1)
    if len(out) != n:
        raise ValueError(f"{len(out)} dates for {n} rows")
    return out


class RollingModel:
    iteration_unit = None

    def __init__(self, steps: list[dict], model_type: str = ""):
        """``steps``: dicts with ``model``, ``start``/``end`` (the test dates the step
        covers, YYYY-MM-DD) and lineage fields (``train``, ``valid``, ``run_id``, ...)."""
        if not steps:
            raise ValueError("a rolling model needs at least one step")
        self.steps = sorted(steps, key=lambda s: pd.Timestamp(s["start"]))
        self.model_type = model_type
        first = self.steps[0]["model"]
        self.feature_names = [str(f) for f in first.feature_names]
        self._starts = np.array([np.datetime64(pd.Timestamp(s["start"]), "ns")
                                 for s in self.steps])

    @property
    def window_length(self) -> int:
        return max(window_length(s["model"]) for s in self.steps)

    @property
    def models(self) -> list:
        return [s["model"] for s in self.steps]

    def step_index(self, dates) -> np.ndarray:
        """Index of the step that predicts each date (latest for None / later dates)."""
        if dates is None:
            return None
        pos = np.searchsorted(self._starts, np.asarray(dates, dtype="datetime64[ns]"),
                              side="right") - 1
        return np.clip(pos, 0, len(self.steps) - 1)

    def step_for(self, date=None):
        """The step model that answers ``date`` (None: the latest)."""
        if date is None:
            return self.steps[-1]["model"]
        return self.steps[int(self.step_index(np.array([pd.Timestamp(date)]))[0])]["model"]

    def predict_window(self, windows: np.ndarray, dates=None) -> np.ndarray:
        windows = np.asarray(windows, dtype=np.float32)
        n = windows.shape[0]
        dates = _as_dates(dates, n)
        if dates is None:
            model = self.steps[-1]["model"]
            return np.asarray(model.predict_window(fit_windows(windows, window_length(model))),
                              dtype=np.float64)
        which = self.step_index(dates)
        out = np.empty(n, dtype=np.float64)
        for k in np.unique(which):
            rows = np.flatnonzero(which == k)
            model = self.steps[k]["model"]
            out[rows] = model.predict_window(fit_windows(windows[rows], window_length(model)),
                                             dates[rows])
        return out

    def predict(self, dataset, segment="test") -> pd.Series:
        """Every step predicts the rows of the dates it covers."""
        parts = [s["model"].predict(dataset, segment=segment) for s in self.steps]
        index = parts[0].index
        dates = np.asarray(index.get_level_values("datetime"), dtype="datetime64[ns]")
        which = self.step_index(dates)
        out = np.empty(len(index), dtype=np.float64)
        for k, part in enumerate(parts):
            rows = which == k
            out[rows] = part.reindex(index[rows]).to_numpy(dtype=np.float64)
        return pd.Series(out, index=index)

    def feature_importance(self) -> pd.Series:
        """Of the latest step (the one that answers new dates)."""
        return self.steps[-1]["model"].feature_importance()

    def lineage(self) -> list[dict]:
        return [{k: v for k, v in s.items() if k != "model"} for s in self.steps]

    # storage
    def save_artefacts(self, directory: Path) -> dict:
        from cluster.registry.artefacts import json_safe, save_model
        for k, s in enumerate(self.steps):
            save_model(s["model"], Path(directory) / "steps" / f"{k:04d}")
        return json_safe({"model_type": self.model_type, "steps": self.lineage()})

    @classmethod
    def load_artefacts(cls, directory: Path, state: dict, trusted=("cluster.models",)):
        from cluster.registry.artefacts import load_model
        steps = []
        for k, info in enumerate(state["steps"]):
            steps.append(dict(info, model=load_model(Path(directory) / "steps" / f"{k:04d}",
                                                     trusted)))
        return cls(steps, state.get("model_type", ""))


def cross_sectional(values: np.ndarray, dates: np.ndarray | None, method: str) -> np.ndarray:
    """Per-date centred percentile ranks or z-scores of ``values`` (see the module doc)."""
    if method not in ENSEMBLE_METHODS:
        raise ValueError(f"ensemble method must be one of {ENSEMBLE_METHODS}, not {method!r}")
    values = np.asarray(values, dtype=np.float64)
    groups = np.zeros(len(values), dtype=np.int64) if dates is None else \
        pd.factorize(np.asarray(dates))[0]
    s = pd.Series(np.where(np.isfinite(values), values, np.nan))
    g = s.groupby(groups)
    if method == "rank":
        n = g.transform("count").to_numpy(dtype=np.float64)
        out = (g.rank().to_numpy() - 0.5) / n - 0.5
    else:
        mean = g.transform("mean").to_numpy()
        std = g.transform(lambda x: x.std(ddof=0)).to_numpy()
        with np.errstate(all="ignore"):
            out = np.where(std > 0, (s.to_numpy() - mean) / std, 0.0)
    return np.where(np.isfinite(out), out, 0.0)


class EnsembleModel:
    iteration_unit = None

    def __init__(self, members: list, method: str = "rank", member_ids: list[str] | None = None):
        if not members:
            raise ValueError("an ensemble needs at least one member")
        if method not in ENSEMBLE_METHODS:
            raise ValueError(f"ensemble method must be one of {ENSEMBLE_METHODS}, not {method!r}")
        self.members = list(members)
        self.method = method
        self.member_ids = list(member_ids or [f"member-{k}" for k in range(len(members))])
        names: list[str] = []
        for m in self.members:
            names += [str(f) for f in m.feature_names if str(f) not in names]
        self.feature_names = names
        pos = {f: i for i, f in enumerate(names)}
        self._columns = [np.array([pos[str(f)] for f in m.feature_names]) for m in self.members]

    @property
    def window_length(self) -> int:
        return max(window_length(m) for m in self.members)

    def combine(self, member_preds: list[np.ndarray], dates) -> np.ndarray:
        scores = [cross_sectional(p, dates, self.method) for p in member_preds]
        return np.mean(scores, axis=0)

    def predict_window(self, windows: np.ndarray, dates=None) -> np.ndarray:
        windows = np.asarray(windows, dtype=np.float32)
        dates = _as_dates(dates, windows.shape[0])
        preds = [np.asarray(m.predict_window(fit_windows(windows[:, :, cols], window_length(m)),
                                             dates), dtype=np.float64)
                 for m, cols in zip(self.members, self._columns)]
        return self.combine(preds, dates)

    def predict(self, dataset, segment="test") -> pd.Series:
        parts = [m.predict(dataset, segment=segment) for m in self.members]
        index = parts[0].index
        preds = [p.reindex(index).to_numpy(dtype=np.float64) for p in parts]
        dates = np.asarray(index.get_level_values("datetime"), dtype="datetime64[ns]")
        return pd.Series(self.combine(preds, dates), index=index)

    def feature_importance(self) -> pd.Series:
        """Mean over members of each member's importance normalised to sum 1."""
        parts = []
        for m in self.members:
            if hasattr(m, "feature_importance"):
                imp = m.feature_importance().astype(float).clip(lower=0)
                parts.append(imp / imp.sum() if imp.sum() > 0 else imp)
        if not parts:
            return pd.Series(dtype=float)
        return pd.concat(parts, axis=1).fillna(0.0).mean(axis=1).sort_values(ascending=False)

    def against(self, reference: np.ndarray) -> "EnsembleRows":
        """A row-wise view (explanations): see :class:`EnsembleRows`."""
        return EnsembleRows(self, reference)

    # storage
    def save_artefacts(self, directory: Path) -> dict:
        from cluster.registry.artefacts import save_model
        for k, m in enumerate(self.members):
            save_model(m, Path(directory) / "members" / f"{k:04d}")
        return {"method": self.method, "member_ids": self.member_ids}

    @classmethod
    def load_artefacts(cls, directory: Path, state: dict, trusted=("cluster.models",)):
        from cluster.registry.artefacts import load_model
        members = [load_model(Path(directory) / "members" / f"{k:04d}", trusted)
                   for k in range(len(state["member_ids"]))]
        return cls(members, state["method"], state["member_ids"])


class EnsembleRows:
    """An ensemble's score of independent rows (or windows): each member's prediction
    placed in a fixed cross-section, the member's predictions of ``reference`` rows or
    windows (e.g. the training reference sample, or a sequence ensemble's stored
    training windows) -- its centred percentile there (``rank``) or its z-score
    against them (``zscore``) -- then averaged. Serving ranks within the request's own
    cross-section; this view does not depend on which rows are scored together, which
    an explainer needs (SHAP values that add up to the row's score)."""

    def __init__(self, ensemble: EnsembleModel, reference: np.ndarray):
        self.ensemble = ensemble
        self.feature_names = list(ensemble.feature_names)
        self.window_length = ensemble.window_length
        ref = np.asarray(reference, dtype=np.float32)
        self._refs = [np.sort(self._member(m, cols, ref))
                      for m, cols in zip(ensemble.members, ensemble._columns)]

    @staticmethod
    def _member(model, cols, x: np.ndarray) -> np.ndarray:
        w = x[:, None, :] if x.ndim == 2 else x          # rows are windows of one row
        w = fit_windows(w[:, :, cols], window_length(model))
        return np.asarray(model.predict_window(w), dtype=np.float64)

    def predict_array(self, x: np.ndarray) -> np.ndarray:
        return self.predict_window(np.asarray(x, dtype=np.float32).reshape(
            -1, 1, len(self.feature_names)))

    def predict_window(self, windows: np.ndarray, dates=None) -> np.ndarray:
        """``dates`` are ignored: the cross-section is the reference's."""
        x = np.asarray(windows, dtype=np.float32)
        scores = []
        for m, cols, ref in zip(self.ensemble.members, self.ensemble._columns, self._refs):
            p = self._member(m, cols, x)
            if self.ensemble.method == "rank":
                pos = (np.searchsorted(ref, p, "left") + np.searchsorted(ref, p, "right")) / 2
                scores.append(pos / len(ref) - 0.5)
            else:
                sd = ref.std()
                scores.append((p - ref.mean()) / sd if sd > 0 else np.zeros_like(p))
        return np.mean(scores, axis=0)

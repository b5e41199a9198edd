"""Search spaces per model type, centred on the zoo's seed defaults.

A space is written in a small, YAML-friendly form and turned into Tune domains
by :func:`search_space`::

    lightgbm:
      learning_rate: {loguniform: [0.01, 0.2]}
      num_leaves: {lograndint: [16, 512]}     # integer bounds are inclusive
      bagging_fraction: {uniform: [0.6, 1.0]}
      max_depth: {choice: [4, 6, 8]}
      num_boost_round: 300                    # a plain value is fixed
      min_child_samples: null                 # null drops it (the default is used)

Every default range is centred on the default: log-scale ranges are
``[d / f, d * f]``, linear ones ``[d - w, d + w]`` (clipped to what the
parameter allows), choices hold ``[d / 2, d, d * 2]``, so the seed's own
configuration is always inside the space.
"""
from __future__ import annotations

import math
from pathlib import Path

import yaml

from cluster.models.zoo import COMMON_OVERRIDES, spec

DOMAINS = ("loguniform", "uniform", "randint", "lograndint", "choice")
# Budget parameter per family: boosting rounds or epochs (ASHA's time axis).
BUDGET_PARAMS = ("num_boost_round", "n_estimators", "n_epochs")
PATIENCE_PARAMS = ("early_stopping_rounds", "early_stop")  # trees / torch
# What every trial fixes: it is judged on RankIC, so early stopping watches it too.
TRIAL_FIXED = {"tree": {"early_stop_metric": "rank_ic"},
               "torch": {"early_stop_metric": "rank_ic"}, "linear": {}}


def _log(d: float, f: float = 4.0) -> dict:
    return {"loguniform": [d / f, d * f]}


def _logint(d: int, f: float = 4.0, low: int = 1) -> dict:
    return {"lograndint": [max(low, int(round(d / f))), int(round(d * f))]}


def _band(d: float, w: float, lo: float = 0.0, hi: float = 1.0) -> dict:
    # keep the default at the centre: shrink the half-width on the clipped side too
    w = min(w, d - lo, hi - d) if lo < d < hi else w
    return {"uniform": [max(lo, d - w), min(hi, d + w)]}


def _pow2(d: int) -> dict:
    return {"choice": [max(1, d // 2), d, d * 2]}


def _around(d: int, low: int = 1) -> dict:
    return {"choice": sorted({max(low, d - 1), d, d + 1})}


def _defaults(model_type: str) -> dict:
    return spec(model_type).defaults()


def _torch_common(d: dict) -> dict:
    return {"lr": _log(d["lr"], 4.0), "dropout": _band(d["dropout"], 0.1, 0.0, 0.5),
            "batch_size": _pow2(d["batch_size"])}


def default_space(model_type: str) -> dict:
    """The seed-centred space of ``model_type`` (YAML form)."""
    d = _defaults(model_type)
    if model_type == "lightgbm":
        return {"learning_rate": _log(d["learning_rate"]), "num_leaves": _logint(d["num_leaves"]),
                "feature_fraction": _band(d["feature_fraction"], 0.15),
                "bagging_fraction": _band(d["bagging_fraction"], 0.15),
                "min_child_samples": _logint(d["min_child_samples"], 4.0)}
    if model_type == "xgboost":
        return {"learning_rate": _log(d["learning_rate"]),
                "max_depth": {"randint": [d["max_depth"] - 3, d["max_depth"] + 3]},
                "subsample": _band(d["subsample"], 0.15),
                "colsample_bytree": _band(d["colsample_bytree"], 0.15),
                "min_child_weight": {"loguniform": [0.25, 4.0]}}  # xgboost's default is 1
    if model_type == "linear":
        return {"alpha": _log(d["alpha"], 100.0), "clip": _band(d["clip"], 1.0, 1.0, 10.0)}
    space = _torch_common(d)
    if model_type in ("mlp", "lstm"):
        space.update(hidden_size=_pow2(d["hidden_size"]), num_layers=_around(d["num_layers"]))
        if model_type == "lstm":
            space["lookback"] = _pow2(d["lookback"])
    elif model_type == "transformer":
        space.update(d_model=_pow2(d["d_model"]), num_layers=_around(d["num_layers"]))
    elif model_type in ("informer", "timesnet", "patchtst"):
        # d_model stays a multiple of n_heads (8 or 4): 32/64/128
        space.update(d_model=_pow2(d["d_model"]), e_layers=_around(d["e_layers"]))
    elif model_type == "tabnet":
        space.update(n_d=_pow2(d["n_d"]), n_a=_pow2(d["n_a"]), n_steps=_around(d["n_steps"]))
    return space


def load_space_file(path: Path, model_type: str) -> dict:
    """A YAML space file: either ``{model_type: {...}}`` sections or one flat mapping."""
    doc = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: expected a mapping of parameter -> range")
    if model_type in doc and isinstance(doc[model_type], dict):
        return dict(doc[model_type])
    from cluster.models.zoo import MODEL_TYPES
    if any(k in MODEL_TYPES for k in doc):
        return {}  # sections for other model types only
    return dict(doc)


def merged_space(model_type: str, overrides: dict | None = None,
                 fixed: dict | None = None) -> dict:
    """Default space + YAML overrides + fixed values, checked, still in YAML form."""
    family = spec(model_type).family
    space = dict(TRIAL_FIXED[family])
    space.update(default_space(model_type))
    for source in (overrides or {}, fixed or {}):
        for key, value in source.items():
            if value is None:
                space.pop(key, None)
            else:
                space[key] = value
    known = set(_defaults(model_type)) | COMMON_OVERRIDES.get(family, set())
    unknown = sorted(set(space) - known)
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown} for {model_type}; "
                         f"known: {sorted(known)}")
    for key, value in space.items():
        _check(key, value)
    return space


def _check(key: str, value) -> None:
    if not isinstance(value, dict):
        return
    if len(value) != 1 or next(iter(value)) not in DOMAINS:
        raise ValueError(f"range of {key!r} must be one of {DOMAINS} "
                         f"(e.g. {{loguniform: [0.01, 0.1]}}), got {value!r}")
    kind, args = next(iter(value.items()))
    if not isinstance(args, list) or not args:
        raise ValueError(f"{key}: {kind} needs a list, got {args!r}")
    if kind != "choice":
        if len(args) != 2 or not args[0] <= args[1]:
            raise ValueError(f"{key}: {kind} needs [low, high] with low <= high, got {args}")
        if kind.startswith("log") and args[0] <= 0:
            raise ValueError(f"{key}: {kind} needs a positive low bound, got {args}")


def to_tune(space: dict) -> dict:
    """YAML-form space -> Tune's param_space (domains and constants)."""
    from ray import tune
    out = {}
    for key, value in space.items():
        if not isinstance(value, dict):
            out[key] = value
            continue
        kind, args = next(iter(value.items()))
        if kind == "loguniform":
            out[key] = tune.loguniform(float(args[0]), float(args[1]))
        elif kind == "uniform":
            out[key] = tune.uniform(float(args[0]), float(args[1]))
        elif kind == "randint":  # inclusive upper bound here; Tune's is exclusive
            out[key] = tune.randint(int(args[0]), int(args[1]) + 1)
        elif kind == "lograndint":
            out[key] = tune.lograndint(int(args[0]), int(args[1]) + 1)
        else:
            out[key] = tune.choice(list(args))
    return out


def _largest(model_type: str, space: dict, names: tuple[str, ...]) -> int | None:
    """The largest value the space allows for the first of ``names`` the model has."""
    d = _defaults(model_type)
    for name in names:
        if name in d:
            value = space.get(name, d[name])
            if isinstance(value, dict):
                kind, args = next(iter(value.items()))
                value = max(args)
            return max(int(math.ceil(float(value))), 1)
    return None


def budget(model_type: str, space: dict) -> int:
    """Most rounds (or epochs) one fold of a trial can spend: ASHA's max per fold."""
    return _largest(model_type, space, BUDGET_PARAMS) or 1  # linear: one fit per fold


def asha_grace(model_type: str, space: dict) -> int:
    """ASHA's first rung, in rounds. Early stopping ends a fold at its best round plus
    the patience, which on daily returns comes long before the budget: a rung at
    budget/20 (50 of LightGBM's 1,000 rounds) would fall after most of a first fold
    was spent anyway. A third of the patience lets ASHA drop the weak trials inside
    their first fold."""
    first = max(1, budget(model_type, space) // 20)
    patience = _largest(model_type, space, PATIENCE_PARAMS)
    return max(1, min(first, patience // 3)) if patience else first

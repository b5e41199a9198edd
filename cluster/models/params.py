"""What each model type's hyper-parameters mean: the "start a training run" form.

``describe(model_type)`` lists a type's parameters with their default (the zoo's
defaults, plus the torch base parameters every torch model accepts), their JSON type
and one line on what the parameter does, so that a person overriding one in the
console or the API knows what it changes. The defaults themselves stay where the
models define them; this module only documents them.
"""
from __future__ import annotations

from cluster.models.zoo import MODEL_TYPES, spec

# One meaning per parameter name; a type whose parameter of the same name means
# something else says so in _BY_TYPE.
MEANINGS = {
    # trees (LightGBM / XGBoost)
    "loss": "objective the trees minimise (mse: squared error on the normalised label)",
    "num_leaves": "maximum leaves per tree: the main capacity knob of LightGBM",
    "max_depth": "maximum depth of a tree",
    "learning_rate": "shrinkage applied to each new tree (smaller: more rounds, less overfit)",
    "feature_fraction": "share of features sampled for each tree",
    "colsample_bytree": "share of features sampled for each tree",
    "bagging_fraction": "share of rows sampled for each tree",
    "subsample": "share of rows sampled for each tree",
    "bagging_freq": "resample the rows every this many rounds (0: never)",
    "min_child_samples": "fewest rows a leaf may hold",
    "num_boost_round": "most boosting rounds (trees) before early stopping",
    "n_estimators": "most boosting rounds (trees) before early stopping",
    "early_stopping_rounds": "stop when the validation metric has not improved for this many "
                             "rounds; the best round is kept",
    "num_threads": "CPU threads the library uses (match the job's CPU request)",
    "nthread": "CPU threads the library uses (match the job's CPU request)",
    "early_stop_metric": "validation metric that early stopping watches: ic, rank_ic or loss",
    "report_every": "publish a progress event every this many rounds",
    "seed": "random seed: the same seed and data give the same model",
    # linear
    "estimator": "linear estimator: ridge (L2), lasso (L1) or ols",
    "alpha": "regularisation strength of ridge / lasso",
    "fit_intercept": "fit a constant term (the label is cross-sectionally normalised, so "
                     "usually not needed)",
    "clip": "robust-scaled features are clipped to +- this many scales",
    # torch (shared)
    "lr": "Adam learning rate",
    "n_epochs": "most passes over the training rows before early stopping",
    "batch_size": "rows (or windows) per gradient step",
    "early_stop": "stop when the validation metric has not improved for this many epochs; "
                  "the best epoch's weights are kept",
    "dropout": "dropout probability between layers",
    "device": "auto (a GPU when there is one), cpu or cuda[:N]",
    "weight_decay": "L2 penalty on the weights (Adam weight decay)",
    "hidden_size": "width of the hidden layers",
    "num_layers": "number of stacked layers",
    # sequence models
    "lookback": "days of history per sample (window length)",
    "seq_len": "days of history per sample (window length)",
    "d_model": "width of the attention model's token embeddings",
    "n_heads": "attention heads per layer",
    "dim_feedforward": "width of the feed-forward block in each layer",
    "d_ff": "width of the feed-forward block in each layer",
    "e_layers": "encoder layers",
    "d_layers": "decoder layers",
    "label_len": "days of the window the decoder is given as its start",
    "factor": "ProbSparse attention factor: queries sampled ~ factor * ln(length)",
    "distil": "halve the sequence between encoder layers (self-attention distilling)",
    "top_k": "dominant periods (from the FFT) the TimesNet blocks fold the series by",
    "num_kernels": "Inception kernels per TimesNet block",
    "patch_len": "days per patch",
    "stride": "days between the starts of two patches",
    "head_dim": "width of the per-channel projection before the prediction head",
    "revin": "reversible instance normalisation of each window",
    "channel_chunk": "features encoded at a time (0: all at once; bounds memory)",
    # TabNet
    "n_d": "width of the decision layer",
    "n_a": "width of the attention layer",
    "n_steps": "decision steps",
    "n_shared": "GLU layers shared across steps",
    "n_independent": "GLU layers specific to each step",
    "lambda_sparse": "weight of the sparsity penalty on the attention masks",
    "virtual_batch_size": "rows per ghost batch normalisation",
    "momentum": "batch normalisation momentum",
}
_BY_TYPE = {
    "tabnet": {"gamma": "relaxation: how much a feature may be reused across steps (1: never)"},
}


def _json_type(value) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    return "string"


def defaults(model_type: str) -> dict:
    """The parameters a run of ``model_type`` gets when none is overridden."""
    s = spec(model_type)
    if s.family == "torch":
        from cluster.models.torch_base import BASE_PARAMS
        return dict(BASE_PARAMS) | s.defaults()
    return s.defaults()


def describe(model_type: str) -> dict:
    """``{"model_type", "family", "sequence", "parameters": [{"name", "default", "type",
    "meaning"}, ...]}`` for one of the ten types (ValueError for another name)."""
    s = spec(model_type)
    own = _BY_TYPE.get(model_type, {})
    params = [{"name": k, "default": v, "type": _json_type(v),
               "meaning": own.get(k) or MEANINGS.get(k, "")}
              for k, v in defaults(model_type).items()]
    return {"model_type": model_type, "family": s.family, "sequence": s.sequence,
            "parameters": params}


def describe_all() -> list[dict]:
    return [describe(t) for t in MODEL_TYPES]

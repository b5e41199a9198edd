"""The model zoo: ten types, each built from a small config dict the way Qlib's
``init_instance_by_config`` builds one, with the seed's defaults overridable.

    create_model("lightgbm", {"num_leaves": 64})
    model_config("lstm", {"hidden_size": 32})  # -> {"class", "module_path", "kwargs"}
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass

from cluster.models.gbdt import LIGHTGBM_DEFAULTS, XGBOOST_DEFAULTS
from cluster.models.linear import LINEAR_DEFAULTS


@dataclass(frozen=True)
class ModelSpec:
    module_path: str
    class_name: str
    family: str  # "tree" | "linear" | "torch"
    sequence: bool = False
    defaults_attr: str = "DEFAULT_PARAMS"

    def defaults(self) -> dict:
        if self.module_path == "cluster.models.gbdt":
            return dict(LIGHTGBM_DEFAULTS if self.class_name == "LightGBMModel"
                        else XGBOOST_DEFAULTS)
        if self.module_path == "cluster.models.linear":
            return dict(LINEAR_DEFAULTS)
        module = importlib.import_module(self.module_path)
        return dict(getattr(module, self.defaults_attr))


MODEL_TYPES: dict[str, ModelSpec] = {
    "lightgbm": ModelSpec("cluster.models.gbdt", "LightGBMModel", "tree"),
    "xgboost": ModelSpec("cluster.models.gbdt", "XGBoostModel", "tree"),
    "linear": ModelSpec("cluster.models.linear", "LinearRidgeModel", "linear"),
    "mlp": ModelSpec("cluster.models.mlp", "MLPModel", "torch"),
    "lstm": ModelSpec("cluster.models.lstm", "LSTMModel", "torch", sequence=True),
    "transformer": ModelSpec("cluster.models.transformer", "TransformerModel", "torch",
                             sequence=True),
    "informer": ModelSpec("cluster.models.informer", "InformerModel", "torch", sequence=True),
    "timesnet": ModelSpec("cluster.models.timesnet", "TimesNetModel", "torch", sequence=True),
    "patchtst": ModelSpec("cluster.models.patchtst", "PatchTSTModel", "torch", sequence=True),
    "tabnet": ModelSpec("cluster.models.tabnet", "TabNetModel", "torch"),
}


def spec(model_type: str) -> ModelSpec:
    try:
        return MODEL_TYPES[model_type]
    except KeyError:
        raise ValueError(f"unknown model type {model_type!r}; one of {sorted(MODEL_TYPES)}") \
            from None


def model_config(model_type: str, overrides: dict | None = None) -> dict:
    """Qlib-style config: ``{"class", "module_path", "kwargs"}`` with defaults merged."""
    s = spec(model_type)
    kwargs = s.defaults()
    unknown = set(overrides or {}) - set(kwargs) - COMMON_OVERRIDES.get(s.family, set())
    if unknown:
        raise ValueError(f"unknown parameter(s) {sorted(unknown)} for {model_type}; "
                         f"known: {sorted(kwargs)}")
    kwargs.update(overrides or {})
    return {"class": s.class_name, "module_path": s.module_path, "kwargs": kwargs}


# Parameters a family accepts beyond its defaults (passed through to the library).
COMMON_OVERRIDES = {
    "tree": {"lambda_l1", "lambda_l2", "max_depth", "min_data_in_leaf", "colsample_bytree",
             "subsample", "min_child_weight", "gamma", "reg_alpha", "reg_lambda", "max_bin",
             "tree_method", "device"},
    "linear": set(),
    "torch": {"device", "seed", "early_stop_metric", "weight_decay"},
}


def create_model(model_type: str, overrides: dict | None = None):
    from qlib.utils import init_instance_by_config
    return init_instance_by_config(model_config(model_type, overrides))

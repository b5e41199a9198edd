"""The feature catalog: what each feature is (``FeatureMetadata``), the families
features are grouped by, and changing an indicator's parameters (a new feature set).

Families (also the groups of explanations, ``cluster.explain``):

- indicators: ``trend`` (SMA, EMA, Bollinger mid, SAR), ``momentum`` (RSI, STOCH,
  Williams %R, CCI), ``volume`` (rolling VWAP, OBV, A/D), ``volatility`` (Bollinger
  bands/width/%b, ATR, historical volatility);
- Alpha158 (Qlib's own grouping): ``kbar`` (K*), ``price`` (OPEN0, HIGH0, LOW0, VWAP0),
  ``volume`` (the rolling operators over volume: VMA, VSTD, WVMA, VSUMP/N/D and the
  price-volume correlations CORR, CORD), ``rolling`` (every other rolling operator).

A group key is ``<source>.<family>``, e.g. ``alpha158.kbar`` or ``indicators.trend``.

Changing an indicator's definition: ``change_feature`` maps the feature's own
parameter names (those of its definition, e.g. ``timeperiod``) to the indicator
settings, stores the new parameters under ``$MLOPS_HOME/features/params.json`` (read
by every process's settings, ``cluster.config``) and appends the new feature set to
``features/sets.jsonl``. Its id differs, so rows, models and deployments of the old
set are never mixed with the new. Alpha158's expressions are Qlib's and fixed.
"""
from __future__ import annotations

import json
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cluster.config import (FEATURE_PARAMS_FILE, IndicatorParams, Settings, get_settings,
                            read_feature_params)
from cluster.errors import MlopsError
from cluster.features import alpha158, indicators
from cluster.features.featureset import FEATURE_SET_VERSION, FeatureSet

SETS_FILE = "sets.jsonl"

_INDICATOR_FAMILY = [(r"^(sma|ema)_\d+$|^bb_mid$|^sar$", "trend"),
                     (r"^(rsi|willr|cci)_\d+$|^stoch_[kd]$", "momentum"),
                     (r"^vwap_\d+$|^obv$|^ad$", "volume"),
                     (r"^bb_(upper|lower|width|pctb)$|^(atr|hv)_\d+$", "volatility")]
_ALPHA_VOLUME = {"VMA", "VSTD", "WVMA", "VSUMP", "VSUMN", "VSUMD", "CORR", "CORD"}
_KBAR = {"KMID", "KLEN", "KMID2", "KUP", "KUP2", "KLOW", "KLOW2", "KSFT", "KSFT2"}
_PRICE = {"OPEN0", "HIGH0", "LOW0", "VWAP0"}


class FeatureChangeError(MlopsError, ValueError):
    """A feature cannot be changed that way (unknown feature or parameter, bad value)."""


@dataclass
class FeatureMetadata:
    name: str
    source: str                 # "alpha158" | "indicators"
    family: str
    operator: str               # Alpha158 operator (ROC, MA, ...) or TA-Lib / own function
    calculation: str
    dependencies: list[str]     # bar columns it reads
    lookback: int               # rows of history before the row it needs
    update_frequency: str = "daily"
    params: dict = field(default_factory=dict)

    @property
    def group(self) -> str:
        return f"{self.source}.{self.family}"

    def to_dict(self) -> dict:
        return asdict(self) | {"group": self.group}


def alpha_operator(name: str) -> str:
    return re.sub(r"\d+$", "", name) if name not in _PRICE else name


def family_of(name: str) -> tuple[str, str]:
    """(source, family) of a feature column, by its name."""
    if name in alpha158.ALPHA158_NAMES:
        op = alpha_operator(name)
        family = ("kbar" if name in _KBAR else "price" if name in _PRICE
                  else "volume" if op in _ALPHA_VOLUME else "rolling")
        return "alpha158", family
    for pattern, family in _INDICATOR_FAMILY:
        if re.match(pattern, name):
            return "indicators", family
    return "other", "other"


def group_of(name: str) -> str:
    source, family = family_of(name)
    return f"{source}.{family}"


def _alpha_lookback(expr: str) -> int:
    refs = [int(k) for k in re.findall(r"Ref\([^,]+,\s*(-?\d+)\)", expr)]
    windows = [int(k) for k in re.findall(r"(?:Mean|Std|Sum|Max|Min|Slope|Rsquare|Resi|Quantile|"
                                          r"Rank|IdxMax|IdxMin|Corr)\(.*?,\s*(\d+)[,)]", expr)]
    shift = max([r for r in refs if r > 0] or [0])
    return max([r for r in refs if r > 0] + [w - 1 + shift for w in windows] + [0])


def _describe_indicator(col: dict) -> str:
    if col.get("source") == "talib":
        args = ", ".join(f"{k}={v}" for k, v in col.get("params", {}).items())
        out = f" -> {col['output']}" if col.get("output") else ""
        return f"TA-Lib {col['function']}({', '.join(col['inputs'])}{', ' if args else ''}{args})" \
               f"{out}"
    return col.get("formula", "")


def feature_set_for(settings: Settings | None = None) -> FeatureSet:
    return FeatureSet(active_indicator_params(settings))


def feature_catalog(settings: Settings | None = None) -> dict:
    """``{"feature_set", "version", "features": [FeatureMetadata as dict]}``."""
    fs = feature_set_for(settings)
    features = []
    for name, expr in alpha158.alpha158_definitions().items():
        if name == alpha158.LABEL_NAME:
            continue
        source, family = family_of(name)
        features.append(FeatureMetadata(
            name, source, family, alpha_operator(name), expr,
            sorted(set(re.findall(r"\$(\w+)", expr))), _alpha_lookback(expr)))
    for col in fs.definitions["indicators"]["columns"]:
        source, family = family_of(col["name"])
        features.append(FeatureMetadata(
            col["name"], source, family, col.get("function", "own"), _describe_indicator(col),
            list(col["inputs"]), int(col.get("warmup", 0)), params=dict(col.get("params", {}))))
    return {"feature_set": fs.id, "version": FEATURE_SET_VERSION,
            "label": {"name": alpha158.LABEL_NAME, "calculation": alpha158.LABEL_EXPRESSION},
            "features": [f.to_dict() for f in features]}


# -- changing a definition ---------------------------------------------------------
def _params_path(settings: Settings) -> Path:
    return Path(settings.home) / FEATURE_PARAMS_FILE


def active_indicator_params(settings: Settings | None = None) -> IndicatorParams:
    """The indicator parameters in force: the stored change if any, else the settings'.
    (A process's settings read the stored change too; this also sees one made since.)"""
    settings = settings or get_settings()
    stored = read_feature_params(settings.home)
    return IndicatorParams(**stored) if stored else settings.feature_pipeline.indicators


def _window_of(name: str) -> int | None:
    m = re.search(r"_(\d+)$", name)
    return int(m.group(1)) if m else None


_PARAMS = {"sma": {"timeperiod": "sma_windows"}, "ema": {"timeperiod": "ema_windows"},
           "rsi": {"timeperiod": "rsi_window"}, "willr": {"timeperiod": "williams_window"},
           "cci": {"timeperiod": "cci_window"}, "atr": {"timeperiod": "atr_window"},
           "vwap": {"window": "vwap_window"},
           "hv": {"window": "hv_window", "annualization": "hv_annualization"},
           "sar": {"acceleration": "sar_acceleration", "maximum": "sar_maximum"},
           "stoch": {"fastk_period": "stoch_k", "slowk_period": "stoch_slowk",
                     "slowd_period": "stoch_d"},
           "bb": {"timeperiod": "bollinger_window", "nbdevup": "bollinger_std",
                  "nbdevdn": "bollinger_std"},
           "obv": {}, "ad": {}}


def _mapping(name: str) -> dict[str, str]:
    """The feature's own parameter names (its definition's) -> IndicatorParams fields."""
    key = ("bb" if name.startswith("bb_") else "stoch" if name.startswith("stoch_")
           else re.sub(r"_\d+$", "", name))
    return _PARAMS.get(key, {})


def change_feature(feature_id: str, params: dict, actor: str = "api",
                   settings: Settings | None = None) -> dict:
    """Apply new parameters to one indicator; returns the old and new feature-set ids
    and the changed settings. Nothing is stored when the values are refused."""
    settings = settings or get_settings()
    current = active_indicator_params(settings)
    columns = indicators.indicator_columns(current)
    if feature_id in alpha158.ALPHA158_NAMES:
        raise FeatureChangeError(f"feature {feature_id!r} is an Alpha158 expression (Qlib's, "
                                 "fixed); only indicator parameters can be changed")
    if feature_id not in columns:
        raise FeatureChangeError(f"no feature {feature_id!r}; indicators are {columns}")
    mapping = _mapping(feature_id)
    if not params:
        raise FeatureChangeError("params is empty: give the new value of at least one of "
                                 f"{sorted(mapping) or 'nothing (this feature has none)'}")
    unknown = sorted(set(params) - set(mapping))
    if unknown:
        raise FeatureChangeError(f"feature {feature_id!r} has no parameter(s) {unknown}; "
                                 f"it has {sorted(mapping) or 'none'}")
    values = current.model_dump()
    for key, value in params.items():
        target = mapping[key]
        if target in ("sma_windows", "ema_windows"):
            windows = list(values[target])
            old = _window_of(feature_id)
            if not isinstance(value, int) or isinstance(value, bool):
                raise FeatureChangeError(f"params.{key} must be an integer, got {value!r}")
            if value in windows and value != old:
                raise FeatureChangeError(f"{feature_id.split('_')[0]}_{value} exists already")
            windows[windows.index(old)] = value
            values[target] = windows
        else:
            values[target] = value
    try:
        new = IndicatorParams(**values)
        fs_new = FeatureSet(new)
        indicators.indicator_columns(new)       # TA-Lib's own bounds, with the field named
    except Exception as exc:
        raise FeatureChangeError(f"params for {feature_id!r} refused: {exc}") from None
    fs_old = FeatureSet(current)
    changed = {k: v for k, v in new.model_dump().items() if v != current.model_dump()[k]}
    if not changed:
        return {"feature_set": fs_old.id, "previous": fs_old.id, "changed": {}}
    path = _params_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps({"indicators": new.model_dump(), "feature_set": fs_new.id}))
    tmp.replace(path)
    record = {"time": time.time(), "actor": actor, "feature": feature_id, "params": params,
              "feature_set": fs_new.id, "previous": fs_old.id, "changed": changed}
    with open(path.parent / SETS_FILE, "a") as f:
        f.write(json.dumps(record) + "\n")
    return {"feature_set": fs_new.id, "previous": fs_old.id, "changed": changed}

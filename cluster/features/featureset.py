"""The feature set: which columns, their definitions, and the id that names them.

The feature-set id is a hash of every definition and parameter: change one
indicator window and it is a different feature set, so cached rows, models and
deployments built on the old one are never mixed with the new.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cached_property

import pyarrow as pa

from cluster.config import IndicatorParams
from cluster.features import alpha158, indicators

FEATURE_SET_VERSION = 1  # bump when code changes values without changing definitions


@dataclass(frozen=True)
class FeatureSet:
    params: IndicatorParams
    # trading days the label looks ahead (settings.qlib.label_horizon): the label
    # expression, the look-ahead rows an update re-emits, and the purge gap of
    # training and tuning all read this one setting
    label_horizon: int = alpha158.LABEL_HORIZON

    @cached_property
    def alpha_columns(self) -> list[str]:
        return list(alpha158.ALPHA158_NAMES)

    @cached_property
    def indicator_columns(self) -> list[str]:
        return list(indicators.indicator_columns(self.params))

    @property
    def label(self) -> str:
        return alpha158.LABEL_NAME

    @cached_property
    def value_columns(self) -> list[str]:
        return self.alpha_columns + [self.label] + self.indicator_columns

    @cached_property
    def definitions(self) -> dict:
        return {
            "version": FEATURE_SET_VERSION,
            "alpha158": alpha158.alpha158_definitions(self.label_horizon),
            "indicators": indicators.indicator_definitions(self.params),
            "calendar": "union of all instruments' dates; each instrument reindexed between "
                        "its first and last date",
        }

    @cached_property
    def id(self) -> str:
        blob = json.dumps(self.definitions, sort_keys=True, default=str).encode()
        return "fs-" + hashlib.sha256(blob).hexdigest()[:12]

    @cached_property
    def schema(self) -> pa.Schema:
        """The features table: key, Alpha158 + label (float32), indicators (float64)."""
        fields = [pa.field("instrument", pa.string()), pa.field("date", pa.date32())]
        fields += [pa.field(c, pa.float32()) for c in self.alpha_columns + [self.label]]
        fields += [pa.field(c, pa.float64()) for c in self.indicator_columns]
        fields += [pa.field("feature_set", pa.string()), pa.field("data_version", pa.int64())]
        return pa.schema(fields)


def current_feature_set(params: IndicatorParams | None = None,
                        label_horizon: int | None = None) -> FeatureSet:
    """The feature set of these indicator parameters and label horizon (each from the
    process settings when not given)."""
    if params is None or label_horizon is None:
        from cluster.config import get_settings
        settings = get_settings()
        params = params if params is not None else settings.feature_pipeline.indicators
        label_horizon = label_horizon if label_horizon is not None else \
            settings.qlib.label_horizon
    return FeatureSet(params, label_horizon)


def feature_set_for(settings) -> FeatureSet:
    """The feature set a component with these settings computes and reads."""
    return FeatureSet(settings.feature_pipeline.indicators, settings.qlib.label_horizon)

"""The parameter meanings behind the console's training form: every parameter a
model type takes by default has one, and the defaults are the zoo's own."""
from __future__ import annotations

import pytest

from cluster.models.params import describe, describe_all
from cluster.models.zoo import MODEL_TYPES, model_config


def test_every_default_parameter_of_every_type_has_a_meaning_and_the_zoos_default():
    described = describe_all()
    assert [d["model_type"] for d in described] == list(MODEL_TYPES)
    for d in described:
        kwargs = model_config(d["model_type"])["kwargs"]
        names = [p["name"] for p in d["parameters"]]
        assert len(names) == len(set(names))
        assert set(kwargs) <= set(names)
        for p in d["parameters"]:
            assert p["meaning"], (d["model_type"], p["name"])
            if p["name"] in kwargs:
                assert p["default"] == kwargs[p["name"]]
            assert p["type"] in ("boolean", "integer", "number", "string")


def test_torch_types_show_the_base_parameters_every_torch_model_accepts():
    lstm = {p["name"]: p for p in describe("lstm")["parameters"]}
    assert {"seed", "device", "weight_decay", "early_stop_metric"} <= set(lstm)
    assert describe("lstm")["sequence"] and not describe("mlp")["sequence"]
    # the same name can mean different things: TabNet's gamma is not XGBoost's
    assert "relaxation" in {p["name"]: p for p in describe("tabnet")["parameters"]}["gamma"][
        "meaning"]


def test_an_unknown_type_is_refused_by_name():
    with pytest.raises(ValueError, match="unknown model type 'nope'"):
        describe("nope")

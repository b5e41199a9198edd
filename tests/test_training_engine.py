"""The training engine: stages, progress events, report, stop, crash, registration."""
import json
import threading

import numpy as np
import pytest

from cluster.config import load_settings
from cluster.events import EventBus
from cluster.models.zoo import create_model, model_config
from cluster.registry.store import ModelRegistry
from cluster.training.engine import FeatureData, TrainingEngine, TrainRequest
from tests.strategies import feature_frame

FEATURES = [f"f{i}" for i in range(8)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    home = tmp_path_factory.mktemp("train_home")
    settings = load_settings(home=home)
    bus = EventBus(None)  # in memory: the table is tested elsewhere
    events = []
    bus.subscribe("*", events.append)
    data = FeatureData(feature_frame(), data_version=3, feature_set="fs-test",
                       features_version=5)
    return settings, bus, events, data


def request(model_type, **params):
    return TrainRequest(model_type, params=params, feature_columns=FEATURES)


def test_lightgbm_through_engine_registers_with_lineage(setup):
    settings, bus, events, data = setup
    events.clear()
    engine = TrainingEngine(settings, bus)
    result = engine.run(request("lightgbm", num_boost_round=300, num_leaves=8,
                                learning_rate=0.1, min_child_samples=20), data)
    assert result.state == "completed", result.report.get("error")
    stages = [e.stage for e in events if e.type == "training_progress"]
    order = ["preparing", "configuring", "training", "evaluating", "completed"]
    assert [s for s in dict.fromkeys(stages)] == order
    rounds = [e for e in events if e.type == "training_progress" and e.round]
    assert rounds and all(e.valid_ic is not None and e.epoch is None for e in rounds)
    assert all(e.n_rounds == 300 for e in rounds)   # boosting rounds are not epochs
    pct = [e.percent for e in events if e.type == "training_progress"]
    assert pct == sorted(pct)
    rep = json.loads(result.report_path.read_text())
    for key in ("run_id", "model_name", "duration_seconds", "total_rounds", "best_round",
                "history", "metrics", "hyper_parameters", "data", "feature_importance"):
        assert key in rep, key
    assert rep["iteration_unit"] == "round" and "best_epoch" not in rep
    assert all("round" in h and "epoch" not in h for h in rep["history"])
    assert rep["best_round"] > 1, "early stopping watches the valid IC, not only the loss"
    assert set(rep["metrics"]) == {"train", "valid", "test"}
    test = rep["metrics"]["test"]
    for key in ("ic", "icir", "rank_ic", "rank_icir", "mse", "ls_annual_return", "ls_sharpe",
                "ls_gross_annual_return", "ls_max_drawdown", "ls_turnover"):
        assert key in test
    assert test["ic"] > 0.1, "the planted signal is found"
    assert test["ls_cost_bps"] == 10.0 and test["ls_annual_return"] < test["ls_gross_annual_return"]
    # the daily long-short series (the console's equity curves), one per segment
    assert set(rep["backtest"]) == set(rep["metrics"])
    bt = rep["backtest"]["test"]
    assert len(bt["dates"]) == len(bt["returns"]) == test["ls_days"]
    assert bt["dates"] == sorted(bt["dates"]) and bt["dates"][-1] <= rep["data"]["segments"]["test"][1]
    assert list(rep["feature_importance"])[:2] == ["f0", "f1"]
    assert rep["data"]["data_version"] == 3 and rep["data"]["instruments"] == 30
    reg = ModelRegistry(home=settings.home)
    info = reg.get(result.registry_name, result.version)
    assert info.state == "trained" and info.feature_set == "fs-test"
    lineage = reg.lineage(result.registry_name, result.version)
    assert lineage["data_version"] == 3 and lineage["features_version"] == 5
    assert "parent_model" not in lineage      # a first training names no parent
    assert any(e.type == "model_registered" for e in events)
    model = reg.load(result.registry_name, result.version, expected_feature_set="fs-test")
    assert np.isfinite(model.predict_array(np.zeros((2, 8), np.float32))).all()
    # the training reference sample (drift, SHAP background): train-segment rows only
    from cluster.monitoring.reference import REFERENCE_ROWS, load_reference
    ref = load_reference(reg, result.registry_name, result.version)
    train_end = rep["data"]["segments"]["train"][1]
    assert list(ref.columns) == ["date", "instrument", *FEATURES]
    assert 0 < len(ref) <= REFERENCE_ROWS and ref["date"].max() <= np.datetime64(train_end)


@pytest.mark.parametrize("model_type,params", [
    ("xgboost", {"n_estimators": 60, "max_depth": 3}),
    ("linear", {}),
])
def test_other_tabular_models(setup, model_type, params):
    settings, bus, _, data = setup
    result = TrainingEngine(settings, bus).run(
        TrainRequest(model_type, params=params, feature_columns=FEATURES, register=False), data)
    assert result.state == "completed", result.report.get("error")
    assert result.metrics["test"]["ic"] > 0.1


def test_stop_from_outside_ends_failed_stopped(setup):
    settings, bus, events, data = setup
    stop = threading.Event()
    calls = []

    def stop_after_two(row):
        calls.append(row)
        if len(calls) == 2:
            stop.set()
    result = TrainingEngine(settings, bus).run(
        request("lightgbm", num_boost_round=1000, report_every=1, early_stopping_rounds=1000),
        data, stop_event=stop, epoch_callback=stop_after_two)
    assert result.state == "failed"
    assert result.report["error"]["reason"] == "stopped"
    assert len(calls) == 2
    assert result.version is None


def test_stop_file_from_another_process(setup):
    settings, bus, _, data = setup
    from cluster.training.stop import stop_run
    seen = []

    def stop_via_file(row):
        seen.append(row)
        stop_run(run_id="run-file", runs_dir=settings.home / "runs")
    result = TrainingEngine(settings, bus).run(
        request("lightgbm", report_every=1, early_stopping_rounds=1000), data, run_id="run-file",
        epoch_callback=stop_via_file)
    assert result.report["error"]["reason"] == "stopped"


def test_crash_ends_failed_with_error(setup):
    settings, bus, _, data = setup
    result = TrainingEngine(settings, bus).run(request("lightgbm", num_leaves=-3), data)
    assert result.state == "failed"
    assert result.report["error"]["reason"] == "error"
    assert "num_leaves" in result.report["error"]["message"]


def test_zoo_configs_are_qlib_style_with_seed_defaults():
    cfg = model_config("lightgbm")
    assert cfg["class"] == "LightGBMModel" and cfg["module_path"] == "cluster.models.gbdt"
    kw = cfg["kwargs"]
    assert (kw["num_leaves"], kw["learning_rate"], kw["feature_fraction"], kw["bagging_fraction"],
            kw["bagging_freq"], kw["min_child_samples"], kw["num_boost_round"],
            kw["early_stopping_rounds"]) == (210, 0.05, 0.85, 0.85, 5, 20, 1000, 50)
    kw = model_config("xgboost")["kwargs"]
    assert (kw["max_depth"], kw["learning_rate"], kw["subsample"], kw["colsample_bytree"],
            kw["n_estimators"], kw["early_stopping_rounds"]) == (6, 0.05, 0.85, 0.85, 1000, 50)
    assert model_config("lightgbm", {"num_leaves": 7})["kwargs"]["num_leaves"] == 7
    with pytest.raises(ValueError, match="unknown parameter"):
        model_config("lightgbm", {"num_leafs": 7})
    with pytest.raises(ValueError, match="unknown model type"):
        create_model("prophet")

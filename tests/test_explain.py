"""Explanations (``cluster.explain``): seed Property 9 (the same model and input always
give identical values; Hypothesis) and additivity (base value + values = prediction
within 1e-6) for trees, the linear model and a torch model; the global explanation
is computed once per version and kept with it; the API routes."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, strategies as st

from tests.test_serving_support import FEATURES, auth, serving_home  # noqa: F401 (fixture)

_models: dict = {}


def _train(model_type: str, params: dict):
    """Small models of three families trained through the engine, once per session
    (the LightGBM one is the serving tests' own)."""
    if model_type == "lightgbm" and "lightgbm" not in _models:
        from tests.test_serving_support import _trained
        if _trained:
            _models["lightgbm"] = _trained[0]
    if model_type not in _models:
        import tempfile

        from cluster.config import load_settings
        from cluster.events import EventBus
        from cluster.training.engine import FeatureData, TrainingEngine, TrainRequest
        from tests.strategies import feature_frame
        settings = load_settings(home=tempfile.mkdtemp(prefix="explain_models_"))
        engine = TrainingEngine(settings, EventBus(None), persist_events=False)
        result = engine.run(TrainRequest(model_type, params=params, feature_columns=FEATURES,
                                         register=False), FeatureData(feature_frame(), 3, "fs-test"))
        assert result.state == "completed", result.error
        _models[model_type] = result.model
    return _models[model_type]


MODELS = {"lightgbm": dict(num_boost_round=30, num_leaves=8, early_stopping_rounds=30),
          "linear": {},
          "mlp": dict(n_epochs=2, hidden_size=16, num_layers=1, batch_size=512)}


@pytest.fixture(scope="module")
def explainer_pairs(serving_home):
    """Per family, two explainers built independently over the same background."""
    from cluster.explain.explainers import explainer_for
    from tests.strategies import feature_frame
    background = feature_frame(seed=5)[FEATURES].to_numpy(np.float32)[:400]
    pairs = {}
    for kind, params in MODELS.items():
        model = _train(kind, params)
        # the permutation explainer costs (2F+1) x background rows per row: keep it small
        bg = background[:20] if kind == "mlp" else background
        pairs[kind] = (explainer_for(model, FEATURES, bg), explainer_for(model, FEATURES, bg))
    return pairs


values_ = st.one_of(st.floats(-5, 5, allow_nan=False, width=32), st.just(float("nan")))
rows_ = st.lists(st.lists(values_, min_size=len(FEATURES), max_size=len(FEATURES)),
                 min_size=1, max_size=2)


@given(rows=rows_, kind=st.sampled_from(sorted(MODELS)))
def test_property_9_explanations_are_deterministic_and_additive(explainer_pairs, rows, kind):
    """Seed Property 9: the same model and input always give identical values."""
    a, b = explainer_pairs[kind]
    x = np.array(rows, dtype=np.float32)
    first, other = a.explain(x), b.explain(x)       # b: built apart, explains after a
    assert np.array_equal(first.values, other.values)
    assert np.array_equal(first.base, other.base)
    # a row alone gets the values it gets in a batch, from the same explainer again
    alone = a.explain(x[-1:])
    assert np.array_equal(alone.values[0], first.values[-1])
    total = first.base + first.values.sum(axis=1)
    assert np.allclose(total, first.predictions, rtol=0, atol=1e-6), (kind, total,
                                                                      first.predictions)


def test_tree_values_match_shap_tree_explainer(explainer_pairs):
    from cluster.explain.explainers import ShapTree
    from tests.strategies import feature_frame
    ours = explainer_pairs["lightgbm"][0]
    x = feature_frame(seed=9)[FEATURES].to_numpy(np.float32)[:200]
    theirs = ShapTree(ours.model).explain(x)
    assert np.allclose(ours.explain(x).values, theirs.values, atol=1e-9)


def test_groups_follow_the_feature_families():
    from cluster.features.catalog import feature_catalog, group_of
    assert group_of("KMID") == "alpha158.kbar" and group_of("VWAP0") == "alpha158.price"
    assert group_of("VSTD20") == "alpha158.volume" and group_of("ROC5") == "alpha158.rolling"
    assert group_of("CORD10") == "alpha158.volume"
    assert group_of("sma_5") == "indicators.trend" and group_of("rsi_14") == "indicators.momentum"
    assert group_of("obv") == "indicators.volume" and group_of("atr_14") == "indicators.volatility"
    catalog = feature_catalog()
    assert {f["group"] for f in catalog["features"]} == {
        "alpha158.kbar", "alpha158.price", "alpha158.volume", "alpha158.rolling",
        "indicators.trend", "indicators.momentum", "indicators.volume", "indicators.volatility"}


# -- through the registry and the API ------------------------------------------------------
@pytest.fixture(scope="module")
def explained_home(serving_home):
    """m/<v> versions of the three families registered with a training reference sample."""
    from cluster.monitoring.reference import reference_artefacts
    from cluster.registry.store import Lineage, ModelRegistry
    from tests.strategies import feature_frame
    settings, _ = serving_home
    reg = ModelRegistry.for_settings(settings)
    frame = feature_frame()
    ids = {}
    for kind, params in MODELS.items():
        info = reg.register(f"x-{kind}", _train(kind, params),
                            lineage=Lineage(data_version=3, feature_set="fs-test"),
                            report={"data": {"features": FEATURES}}, config={"kind": kind},
                            artefacts=reference_artefacts(
                                frame, {"train": ("2019-01-01", "2019-04-30")}, FEATURES))
        ids[kind] = info.model_id
    return settings, ids


@pytest.fixture(scope="module")
def client(explained_home):
    from tests.test_serving_support import in_process
    settings, _ = explained_home
    with in_process(settings, "explain") as (client, _plane, _runtime):
        yield client


def test_global_explanation_is_computed_once_and_kept(explained_home, client):
    from cluster.registry.store import ModelRegistry
    settings, ids = explained_home
    for kind, model_id in ids.items():
        res = client.get(f"/api/explain/{model_id}", headers=auth("viewer"))
        assert res.status_code == 200, res.text
        body = res.json()
        assert list(body["importance"]) and set(body["importance"]) == set(FEATURES)
        assert set(body["groups"]) == {"other.other"}       # test features have no family
        again = client.get(f"/api/explain/{model_id}", headers=auth("viewer")).json()
        assert again == body                                 # read back, not recomputed
        name, version = model_id.split("/")
        assert "derived.explain_global.json" in ModelRegistry.for_settings(settings).get(
            name, version).tags
    lgb = client.get(f"/api/explain/{ids['lightgbm']}", headers=auth("viewer")).json()
    top = list(lgb["importance"])[:2]
    assert set(top) == {"f0", "f1"}                          # the planted signal


def test_local_explanations_by_row_and_by_instrument(explained_home, client):
    settings, ids = explained_home
    row = {f: float(i) / 10 for i, f in enumerate(FEATURES)} | {"f2": None}
    for model_id in ids.values():
        res = client.post(f"/api/explain/{model_id}/local", json={"row": row},
                          headers=auth("viewer"))
        assert res.status_code == 200, res.text
        body = res.json()
        assert body["model_id"] == model_id and set(body["values"]) == set(FEATURES)
        assert body["base_value"] + sum(body["values"].values()) == pytest.approx(
            body["prediction"], abs=1e-6)
        assert sum(body["groups"].values()) == pytest.approx(sum(body["values"].values()),
                                                             abs=1e-9)
    res = client.post(f"/api/explain/{ids['lightgbm']}/local",
                      json={"instrument": "S002", "date": "2019-03-01"}, headers=auth("viewer"))
    assert res.status_code == 200 and res.json()["instrument"] == "S002"
    for body, status, fragment in [
        ({"row": {"f0": 1.0}}, 422, "lacks feature"),
        ({"instrument": "NOPE", "date": "2019-03-01"}, 404, "NOPE"),
        ({"instrument": "S002"}, 422, "date"),
        ({}, 422, "either"),
    ]:
        res = client.post(f"/api/explain/{ids['lightgbm']}/local", json=body,
                          headers=auth("viewer"))
        assert res.status_code == status and fragment in res.text, (body, res.text)
    res = client.post("/api/explain/x-lightgbm/99/local", json={"row": row},
                      headers=auth("viewer"))
    assert res.status_code == 404
    assert client.get(f"/api/explain/{ids['linear']}").status_code == 401

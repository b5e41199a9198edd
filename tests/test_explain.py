"""Explanations (``cluster.explain``): seed Property 9 (the same model and input always
give identical values; Hypothesis) and additivity (base value + values = prediction
within 1e-6) for trees, the linear model, a row torch model and a sequence model
(windows); the global explanation is computed once per version and kept with it; the
API routes, for sequence models and rolling/ensemble versions with a sequence member
too (their training windows stored by the one registration path)."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, strategies as st

from tests.test_serving_support import FEATURES, auth, serving_home  # noqa: F401 (fixture)

_models: dict = {}
_reports: dict = {}


def _train(model_type: str, params: dict, key: str | None = None):
    """Small models trained through the engine, once per session and ``key`` (default:
    the type; the LightGBM one is the serving tests' own)."""
    key = key or model_type
    if key == "lightgbm" and "lightgbm" not in _models:
        from tests.test_serving_support import _trained
        if _trained:
            _models["lightgbm"] = _trained[0]
    if key not in _models:
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
        _models[key] = result.model
        _reports[key] = result.report
    return _models[key]


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


LSTM = dict(n_epochs=1, hidden_size=8, num_layers=1, lookback=5, batch_size=512, device="cpu")


@pytest.fixture(scope="module")
def window_pairs(serving_home):
    """Two window explainers of a tiny LSTM built independently over the same training
    windows (drawn as registration draws them)."""
    import torch

    from cluster.explain.background import window_sample, windows_array
    from cluster.explain.explainers import explainer_for
    from tests.strategies import feature_frame
    torch.set_num_threads(1)
    model = _train("lstm", LSTM)
    sample = window_sample(feature_frame(seed=5), ("2019-01-01", "2019-04-30"), FEATURES, 5)
    windows = windows_array(sample, FEATURES, 5)
    assert windows.shape == (48, 5, len(FEATURES))
    return explainer_for(model, FEATURES, windows), explainer_for(model, FEATURES, windows)


windows_ = st.integers(1, 2).flatmap(lambda n: st.integers(1, 6).flatmap(
    lambda length: st.lists(st.lists(st.lists(values_, min_size=len(FEATURES),
                                              max_size=len(FEATURES)),
                                     min_size=length, max_size=length),
                            min_size=n, max_size=n)))


@given(windows=windows_)
def test_property_9_sequence_explanations_are_deterministic_and_additive(window_pairs,
                                                                          windows):
    """Seed Property 9 for a model that reads windows: the players are the features
    (each over its whole column of the window)."""
    a, b = window_pairs
    x = np.array(windows, dtype=np.float32)        # (n, 1..6, F): padded or trimmed to 5
    first, other = a.explain(x), b.explain(x)
    assert first.values.shape == (len(x), len(FEATURES))
    assert np.array_equal(first.values, other.values)
    assert np.array_equal(first.base, other.base)
    alone = a.explain(x[-1:])
    assert np.array_equal(alone.values[0], first.values[-1])
    total = first.base + first.values.sum(axis=1)
    assert np.allclose(total, first.predictions, rtol=0, atol=1e-6), (total,
                                                                      first.predictions)
    expected = a.predict(np.asarray(x[:, -5:]))
    assert np.allclose(first.predictions, expected, rtol=0, atol=1e-6)


def test_window_masker_replaces_whole_feature_columns():
    from cluster.explain.explainers import WindowMasker
    bg = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    x = -np.ones((3, 4), dtype=np.float32)
    out = WindowMasker(bg)(np.array([True, False, False, True]), x)
    assert out.shape == bg.shape
    assert (out[:, :, [0, 3]] == -1).all() and np.array_equal(out[:, :, 1:3], bg[:, :, 1:3])


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


# -- sequence models, and rolling / ensemble versions with one, through the API ----------
@pytest.fixture(scope="module")
def sequence_home(explained_home):
    """A tiny LSTM, an ensemble of it with the linear model and a rolling version of two
    LSTM steps, each registered through the one registration path (which stores the
    training windows)."""
    import torch

    from cluster.models.composite import EnsembleModel, RollingModel
    from cluster.training.engine import FeatureData
    from cluster.training.registration import register_model
    from tests.strategies import feature_frame
    torch.set_num_threads(1)
    settings, ids = explained_home
    lstm, later = _train("lstm", LSTM), _train("lstm", dict(LSTM, seed=1), key="lstm-1")
    data = FeatureData(feature_frame(), 3, "fs-test")
    report = {"data": {"features": FEATURES,
                       "segments": _reports["lstm"]["data"]["segments"]}}
    models = {
        "lstm": lstm,
        "ens": EnsembleModel([lstm, _train("linear", {})], "rank", ["x-lstm/1", ids["linear"]]),
        "roll": RollingModel([dict(model=lstm, start="2019-01-01", end="2019-04-30"),
                              dict(model=later, start="2019-05-01", end="2019-08-31")], "lstm"),
    }
    seq_ids = {}
    for kind, model in models.items():
        info = register_model(settings, None, f"x-seq-{kind}", model, report, data,
                              model_type=kind)
        seq_ids[kind] = info.model_id
    return settings, seq_ids, models


def _additive(body: dict) -> None:
    assert set(body["values"]) == set(FEATURES)
    assert body["base_value"] + sum(body["values"].values()) == pytest.approx(
        body["prediction"], abs=1e-6)
    assert sum(abs(v) for v in body["values"].values()) > 0        # real values


def test_sequence_versions_store_their_training_windows(sequence_home, explained_home):
    from cluster.explain.background import WINDOWS_ARTEFACT, load_windows, window_artefacts
    from cluster.registry.store import ModelRegistry
    settings, seq_ids, _ = sequence_home
    reg = ModelRegistry.for_settings(settings)
    for model_id in seq_ids.values():
        name, version = model_id.split("/")
        windows = load_windows(reg, name, version, FEATURES, 5)
        assert windows.shape == (48, 5, len(FEATURES)) and np.isfinite(windows[:, 0]).any()
    # row models get none
    assert window_artefacts(_train("linear", {}), None, {"train": ("a", "b")}, FEATURES) == {}


def test_sequence_model_explains_its_window_over_the_api(sequence_home, client):
    """The instrument path explains the window serving builds (the instrument's last
    ``lookback`` rows up to the date); posted windows and rows explain too; the global
    explanation is computed on the stored windows once and kept."""
    from cluster.models.inputs import predict_frame_rows
    from tests.strategies import feature_frame
    settings, seq_ids, models = sequence_home
    model_id = seq_ids["lstm"]
    res = client.post(f"/api/explain/{model_id}/local",
                      json={"instrument": "S002", "date": "2019-03-01"}, headers=auth("viewer"))
    assert res.status_code == 200, res.text
    body = res.json()
    _additive(body)
    assert body["instrument"] == "S002" and body["method"].endswith("(windows)")
    frame = feature_frame()
    hist = frame[(frame["instrument"] == "S002") & (frame["date"] <= "2019-03-01")]
    served = predict_frame_rows(models["lstm"], hist.rename(columns={"date": "datetime"}),
                                FEATURES)[-1]
    assert body["prediction"] == pytest.approx(served, abs=1e-6)   # what serving predicts
    window = [{f: float(v) for f, v in r.items()}
              for r in hist[FEATURES].iloc[-3:].fillna(0).to_dict("records")]
    for req in ({"window": window}, {"row": window[-1]}):
        res = client.post(f"/api/explain/{model_id}/local", json=req, headers=auth("viewer"))
        assert res.status_code == 200, res.text
        _additive(res.json())
    for req, status, fragment in [({"window": []}, 422, "window"),
                                  ({"window": [{"f0": 1.0}]}, 422, "lacks feature"),
                                  ({"instrument": "NOPE", "date": "2019-03-01"}, 404, "NOPE"),
                                  ({"instrument": "S002", "date": "2019-03-02"}, 404, "S002")]:
        res = client.post(f"/api/explain/{model_id}/local", json=req, headers=auth("viewer"))
        assert res.status_code == status and fragment in res.text, (req, res.text)
    res = client.get(f"/api/explain/{model_id}", headers=auth("viewer"))
    assert res.status_code == 200, res.text
    glob = res.json()
    assert glob["rows_from"] == "training windows" and glob["rows"] == 32
    assert set(glob["importance"]) == set(FEATURES)
    assert client.get(f"/api/explain/{model_id}", headers=auth("viewer")).json() == glob
    # a version registered without its training windows: a 422 that says so
    from cluster.registry.store import Lineage, ModelRegistry
    old = ModelRegistry.for_settings(settings).register(
        "x-seq-old", models["lstm"], lineage=Lineage(data_version=3, feature_set="fs-test"),
        report={"data": {"features": FEATURES}}, config={"kind": "lstm"})
    res = client.post(f"/api/explain/{old.model_id}/local", json={"row": window[-1]},
                      headers=auth("viewer"))
    assert res.status_code == 422 and "training windows" in res.text, res.text


def test_rolling_and_ensemble_versions_with_a_sequence_member_explain(sequence_home, client):
    settings, seq_ids, models = sequence_home
    for kind in ("ens", "roll"):
        res = client.post(f"/api/explain/{seq_ids[kind]}/local",
                          json={"instrument": "S004", "date": "2019-03-01"},
                          headers=auth("viewer"))
        assert res.status_code == 200, (kind, res.text)
        _additive(res.json())
        res = client.get(f"/api/explain/{seq_ids[kind]}", headers=auth("viewer"))
        assert res.status_code == 200, (kind, res.text)
        assert res.json()["rows_from"] == "training windows"
    # a rolling version explains a date with the step that answers it, as serving does
    from cluster.models.torch_windows import last_rows_windows
    from tests.strategies import feature_frame
    roll, frame = models["roll"], feature_frame()
    by_step = {}
    for day in ("2019-03-01", "2019-06-03"):
        res = client.post(f"/api/explain/{seq_ids['roll']}/local",
                          json={"instrument": "S004", "date": day}, headers=auth("viewer"))
        assert res.status_code == 200, res.text
        body = by_step[day] = res.json()
        _additive(body)
        hist = frame[(frame["instrument"] == "S004") & (frame["date"] <= day)]
        w = last_rows_windows(hist, ["S004"], FEATURES, 5)
        assert body["prediction"] == pytest.approx(float(roll.predict_window(
            w, np.array([np.datetime64(day, "ns")]))[0]), abs=1e-6)
    assert by_step["2019-03-01"]["values"] != by_step["2019-06-03"]["values"]

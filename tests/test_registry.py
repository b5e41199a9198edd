"""Registry: lifecycle (Property 3), lineage (Property 8), integrity, compatibility, search,
and artefacts in library formats: a planted pickle is refused, never executed."""
import glob
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, strategies as st

from cluster.models.linear import LinearRidgeModel
from cluster.registry.artefacts import ArtefactError, file_sha256, tree_sha256

from cluster.registry.lifecycle import (STATES, TRANSITIONS, IllegalTransition, check_transition,
                                        make_transition)
from cluster.registry.store import (CompatibilityError, IntegrityError, Lineage, ModelRegistry,
                                    RegistryError, code_version)


@given(moves=st.lists(st.sampled_from(STATES), min_size=1, max_size=25))
def test_property3_only_legal_transitions_happen(moves):
    """Feature: mlops-optimization, Property 3: for any sequence of requested lifecycle
    transitions, only those the state machine allows happen, each recorded with time,
    actor and reason; refused ones change nothing."""
    state, history = None, []
    for i, target in enumerate(moves):
        legal = (target in ("training", "trained", "failed")) if state is None \
            else target in TRANSITIONS[state]
        if legal:
            t = make_transition(state, target, f"actor{i}", f"reason{i}")
            assert (t.from_state, t.to_state, t.actor, t.reason) == (state, target, f"actor{i}",
                                                                    f"reason{i}")
            assert t.time
            history.append(t)
            state = target
        else:
            with pytest.raises(IllegalTransition):
                make_transition(state, target, "x", "y")
    for a, b in zip(history, history[1:]):
        assert b.from_state == a.to_state
        check_transition(a.to_state, b.to_state)
    assert all(t.to_state != "archived" for t in history[:-1]) or history[-1].to_state == \
        "archived", "archived is final"


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    return ModelRegistry(home=tmp_path_factory.mktemp("registry"))


def tiny_model(n: float = 1.0) -> LinearRidgeModel:
    """A fitted ridge model without a dataset: three features, coefficients from ``n``."""
    model = LinearRidgeModel()
    model.scaler.fit(np.random.default_rng(0).normal(size=(50, 3)))
    model.coef_ = np.array([n, -n, 0.5], dtype=np.float64)
    model.intercept_ = 0.0
    model.feature_names = ["a", "b", "c"]
    return model


def coef(model) -> list:
    return np.asarray(model.coef_).tolist()


def lineage(**kw):
    base = dict(data_version=7, feature_set="fs-aaa", config={"model": "x", "lr": 0.1},
                code_version=code_version(), tune_experiment="exp1", tune_trial_id="t_001")
    base.update(kw)
    return Lineage(**base)


@given(data_version=st.integers(0, 10**6), n=st.integers(1, 3))
def test_property8_lineage_traces_data_version_exactly(registry, data_version, n):
    """Feature: mlops-optimization, Property 8: for any training run the data version
    (and feature set, config, trial) is traced exactly from the registered version."""
    info = registry.register(f"prop8-{n}", tiny_model(n), lineage=lineage(data_version=data_version),
                             report={"r": 1}, config={"model": "x", "lr": 0.1})
    lin = registry.lineage(info.name, info.version)
    assert lin["data_version"] == data_version
    assert lin["feature_set"] == "fs-aaa"
    assert lin["tune_trial_id"] == "t_001" and lin["tune_experiment"] == "exp1"
    assert lin["config"] == {"model": "x", "lr": 0.1}
    assert lin["code_version"].startswith("src-")


def test_lifecycle_on_registry_and_aliases(registry):
    info = registry.register("life", tiny_model(), lineage=lineage(), report={}, config={})
    assert info.state == "trained"
    for s in ("validated", "staging", "production"):
        registry.transition("life", info.version, s, actor="ops", reason=f"to {s}")
    assert registry.state("life", info.version) == "production"
    hist = registry.history("life", info.version)
    assert [t.to_state for t in hist] == ["trained", "validated", "staging", "production"]
    assert hist[-1].actor == "ops" and hist[-1].reason == "to production"
    assert str(registry.client.get_model_version_by_alias("life", "production").version) == \
        info.version
    with pytest.raises(IllegalTransition):
        registry.transition("life", info.version, "staging", actor="ops")
    assert registry.state("life", info.version) == "production"
    registry.transition("life", info.version, "deprecated", actor="ops")
    with pytest.raises(Exception):
        registry.client.get_model_version_by_alias("life", "production")


def test_integrity_refuses_a_changed_byte(registry, tmp_path):
    info = registry.register("integrity", tiny_model(3.0), lineage=lineage(),
                             report={"a": 1}, config={"b": 2})
    assert coef(registry.load("integrity", info.version)) == [3.0, -3.0, 0.5]
    assert {"model", "report.json", "config.json"} <= set(registry.verify("integrity",
                                                                         info.version))
    path = model_file(registry, info, "linear.npz")
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0x01
    path.write_bytes(bytes(blob))
    with pytest.raises(IntegrityError, match="model"):
        registry.load("integrity", info.version)


def test_compatibility_is_checked_against_feature_set(registry):
    info = registry.register("compat", tiny_model(), lineage=lineage(feature_set="fs-old"),
                             report={}, config={})
    assert coef(registry.load("compat", info.version, expected_feature_set="fs-old")) == \
        coef(tiny_model())
    with pytest.raises(CompatibilityError, match="fs-old"):
        registry.load("compat", info.version, expected_feature_set="fs-new")


def test_search_by_name_state_tags_metric(registry):
    a = registry.register("search-a", tiny_model(1), lineage=lineage(), report={}, config={},
                          metrics={"test_rank_ic": 0.01}, tags={"model_type": "lightgbm"})
    b = registry.register("search-b", tiny_model(2), lineage=lineage(), report={}, config={},
                          metrics={"test_rank_ic": 0.05}, tags={"model_type": "mlp"})
    registry.transition("search-b", b.version, "validated", actor="t")
    assert [i.model_id for i in registry.search(name="search-a")] == [a.model_id]
    assert b.model_id in [i.model_id for i in registry.search(state="validated")]
    assert [i.model_id for i in registry.search(tags={"model_type": "mlp"})] == [b.model_id]
    ranked = [i.model_id for i in registry.search(metric="test_rank_ic", min_value=0.0)]
    assert ranked.index(b.model_id) < ranked.index(a.model_id)
    assert [i.model_id for i in registry.search(metric="test_rank_ic", min_value=0.03)] \
        == [b.model_id]
    with pytest.raises(RegistryError):
        registry.get("search-a", 99)


# --------------------------------------------------------------------------- no pickle
def model_file(registry, info, rel: str) -> Path:
    """A file of a version's stored model directory (our artefacts under data/model)."""
    root = registry.home / "artifacts" / info.run_id / "artifacts" / "model"
    return root / "data" / "model" / rel


class _Payload:
    """A pickle that, when unpickled, creates a marker file: what a malicious model does."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _resign_model_hash(registry, info) -> None:
    """Recompute the model directory's hash and sign it with the registry's key, as an
    attacker who also holds the key would: only the format itself stops a pickle then."""
    root = registry.home / "artifacts" / info.run_id / "artifacts" / "model"
    mv = registry.client.get_model_version(info.name, info.version)
    hashes = {k[len("sha256."):]: v for k, v in mv.tags.items() if k.startswith("sha256.")}
    hashes["model"] = tree_sha256(root)
    for key, value in registry._signed_hash_tags(mv.run_id, hashes,
                                                 mv.tags["feature_set"]).items():
        registry.client.set_model_version_tag(info.name, info.version, key, value)


def _replant(registry, info, rel: str, blob: bytes) -> None:
    """Write ``blob`` over a model file and make every hash and signature agree."""
    path = model_file(registry, info, rel)
    path.write_bytes(blob)
    manifest_path = path.parent / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["files"][rel] = file_sha256(path)
    manifest_path.write_text(json.dumps(manifest))
    _resign_model_hash(registry, info)


def test_a_planted_pickle_is_refused_not_executed(registry, tmp_path):
    marker = tmp_path / "executed"
    payload = pickle.dumps(_Payload(marker))
    # 1. a pickle under a file name the model reads (plain arrays): np.load refuses it
    info = registry.register("planted-npz", tiny_model(), lineage=lineage(), report={},
                             config={})
    _replant(registry, info, "linear.npz", payload)
    with pytest.raises(ArtefactError, match="pickled"):
        registry.load("planted-npz", info.version)
    # 2. a torch state_dict replaced by a pickle of an object: weights_only refuses it
    from cluster.models.mlp import MLPModel
    mlp = MLPModel(hidden_size=4, num_layers=1, device="cpu")
    mlp.feature_names, mlp.n_features = ["a", "b", "c"], 3
    mlp.scaler = tiny_model().scaler
    mlp.net = mlp._build_network(3).eval()
    mlp.fitted = True
    info = registry.register("planted-torch", mlp, lineage=lineage(), report={}, config={})
    assert registry.load("planted-torch", info.version).predict_window(
        np.zeros((2, 1, 3), np.float32)).shape == (2,)
    import torch
    import io
    buffer = io.BytesIO()
    torch.save({"x": _Payload(marker)}, buffer)
    _replant(registry, info, "net.pt", buffer.getvalue())
    with pytest.raises(ArtefactError, match="net.pt|weights_only|Unpickl"):
        registry.load("planted-torch", info.version)
    # 3. a manifest that names a class outside the trusted modules
    info = registry.register("planted-class", tiny_model(), lineage=lineage(), report={},
                             config={})
    manifest_path = model_file(registry, info, "manifest.json")
    manifest = json.loads(manifest_path.read_text())
    manifest["class"] = "subprocess:Popen"
    manifest_path.write_text(json.dumps(manifest))
    _resign_model_hash(registry, info)
    with pytest.raises(ArtefactError, match="not under a trusted module"):
        registry.load("planted-class", info.version)
    # 4. a version stored the old way, as model.pkl, with a matching hash: never loaded
    run = registry.client.create_run(registry.experiment_id)
    legacy = tmp_path / "model.pkl"
    legacy.write_bytes(payload)
    registry.client.log_artifact(run.info.run_id, str(legacy))
    registry.client.create_registered_model("planted-legacy")
    mv = registry.client.create_model_version(
        "planted-legacy", source=f"runs:/{run.info.run_id}/model.pkl", run_id=run.info.run_id,
        tags={"sha256.model.pkl": file_sha256(legacy), "mlops.state": "trained"})
    with pytest.raises(IntegrityError, match="pickle"):
        registry.load("planted-legacy", mv.version)
    assert not marker.exists(), "a planted pickle was executed"


def test_every_version_is_an_mlflow_pyfunc_model_with_a_signature(registry):
    import mlflow
    import pandas as pd
    info = registry.register("pyfunc", tiny_model(2.0), lineage=lineage(), report={},
                             config={})
    with pytest.MonkeyPatch.context() as mp:   # no global MLflow state left behind
        mp.setenv("MLFLOW_TRACKING_URI", registry.uri)
        mp.setenv("MLFLOW_REGISTRY_URI", registry.uri)
        loaded = mlflow.pyfunc.load_model(f"models:/pyfunc/{info.version}")
    names = [c.name for c in loaded.metadata.get_input_schema().inputs]
    assert names[:3] == ["a", "b", "c"] and {"datetime", "instrument"} <= set(names)
    rows = pd.DataFrame(np.random.default_rng(1).normal(size=(5, 3)), columns=["a", "b", "c"])
    out = loaded.predict(rows)
    ours = registry.load("pyfunc", info.version).predict_array(rows.to_numpy(np.float32))
    np.testing.assert_array_equal(out["prediction"].to_numpy(), ours)

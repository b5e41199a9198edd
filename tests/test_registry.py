"""Registry: lifecycle (Property 3), lineage (Property 8), integrity, compatibility, search."""
import glob

import pytest
from hypothesis import given, strategies as st

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


def lineage(**kw):
    base = dict(data_version=7, feature_set="fs-aaa", config={"model": "x", "lr": 0.1},
                code_version=code_version(), tune_experiment="exp1", tune_trial_id="t_001")
    base.update(kw)
    return Lineage(**base)


@given(data_version=st.integers(0, 10**6), n=st.integers(1, 3))
def test_property8_lineage_traces_data_version_exactly(registry, data_version, n):
    """Feature: mlops-optimization, Property 8: for any training run the data version
    (and feature set, config, trial) is traced exactly from the registered version."""
    info = registry.register(f"prop8-{n}", {"n": n}, lineage=lineage(data_version=data_version),
                             report={"r": 1}, config={"model": "x", "lr": 0.1})
    lin = registry.lineage(info.name, info.version)
    assert lin["data_version"] == data_version
    assert lin["feature_set"] == "fs-aaa"
    assert lin["tune_trial_id"] == "t_001" and lin["tune_experiment"] == "exp1"
    assert lin["config"] == {"model": "x", "lr": 0.1}
    assert lin["code_version"].startswith("src-")


def test_lifecycle_on_registry_and_aliases(registry):
    info = registry.register("life", {"w": 1}, lineage=lineage(), report={}, config={})
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
    info = registry.register("integrity", {"weights": list(range(100))}, lineage=lineage(),
                             report={"a": 1}, config={"b": 2})
    assert registry.load("integrity", info.version) == {"weights": list(range(100))}
    assert set(registry.verify("integrity", info.version)) == {"model.pkl", "report.json",
                                                              "config.json"}
    path = glob.glob(str(registry.home / "artifacts" / info.run_id / "artifacts" / "model.pkl"))[0]
    blob = bytearray(open(path, "rb").read())
    blob[len(blob) // 2] ^= 0x01
    open(path, "wb").write(bytes(blob))
    with pytest.raises(IntegrityError, match="model.pkl"):
        registry.load("integrity", info.version)


def test_compatibility_is_checked_against_feature_set(registry):
    info = registry.register("compat", [1], lineage=lineage(feature_set="fs-old"), report={},
                             config={})
    assert registry.load("compat", info.version, expected_feature_set="fs-old") == [1]
    with pytest.raises(CompatibilityError, match="fs-old"):
        registry.load("compat", info.version, expected_feature_set="fs-new")


def test_search_by_name_state_tags_metric(registry):
    a = registry.register("search-a", 1, lineage=lineage(), report={}, config={},
                          metrics={"test_rank_ic": 0.01}, tags={"model_type": "lightgbm"})
    b = registry.register("search-b", 2, lineage=lineage(), report={}, config={},
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

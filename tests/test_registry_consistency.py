"""One consistent registry: at most one production version per model, lifecycle moves
atomic across processes (SQLite and PostgreSQL), signed integrity hashes, a database
outage reported clearly, checkpoints verified before registration."""
from __future__ import annotations

import json
import multiprocessing as mp

import pytest

from cluster.registry import signing
from cluster.registry.lifecycle import IllegalTransition
from cluster.registry.store import (ConcurrentTransition, IntegrityError, Lineage, ModelRegistry,
                                    RegistryUnavailable)


def _lineage():
    return Lineage(data_version=1, feature_set="fs-x", config={"m": 1})


def _new(reg: ModelRegistry, name: str, state_path=("validated",)):
    from tests.test_registry import tiny_model   # artefacts are library formats, not pickles
    info = reg.register(name, tiny_model(), lineage=_lineage(), report={}, config={"m": 1})
    for s in state_path:
        reg.transition(name, info.version, s, "test")
    return info.version


@pytest.fixture(scope="module")
def sqlite_home(tmp_path_factory):
    """One SQLite registry for the module (a fresh MLflow database costs seconds of
    schema migrations); each test uses its own model names."""
    home = tmp_path_factory.mktemp("registry") / "home"
    ModelRegistry(home=home)
    return home


@pytest.fixture
def sqlite_registry(sqlite_home):
    return ModelRegistry(home=sqlite_home)


@pytest.fixture
def pg_registry(postgres, tmp_path, request):
    uri = postgres.database(f"t_{request.node.name[-40:].lower().replace('[', '_').strip(']')}"
                            .replace("-", "_"))
    return ModelRegistry(tracking_uri=uri, home=tmp_path / "home")


def test_promotion_deprecates_the_previous_production_in_the_same_step(sqlite_registry):
    reg = sqlite_registry
    v1 = _new(reg, "one-prod", ("validated", "staging", "production"))
    v2 = _new(reg, "one-prod", ("validated", "staging"))
    reg.transition("one-prod", v2, "production", "ops", "canary passed")
    assert reg.state("one-prod", v1) == "deprecated"
    assert reg.state("one-prod", v2) == "production"
    assert [v.version for v in reg.by_state("one-prod", "production")] == [v2]
    last = reg.history("one-prod", v1)[-1]
    assert (last.from_state, last.to_state, last.actor) == ("production", "deprecated", "ops")
    assert "replaced by one-prod/" + v2 in last.reason
    # one ledger row holds both moves: nobody can observe the step half-done as committed
    seq, record = reg._ledger.since("one-prod", 0)[-1]
    assert {(m["version"], m["to"]) for m in record} == {(v1, "deprecated"), (v2, "production")}
    assert str(reg.client.get_model_version_by_alias("one-prod", "production").version) == v2
    # switching back (a rollback to the warm standby) is one step too
    reg.transition("one-prod", v1, "production", "ops", "switch back")
    assert (reg.state("one-prod", v1), reg.state("one-prod", v2)) == ("production", "deprecated")


def test_a_move_claimed_but_not_mirrored_is_completed_by_the_next(sqlite_registry):
    """A process that died between its ledger claim and its tag writes leaves the move
    half-done; the next move of that model rolls it forward first."""
    reg = sqlite_registry
    v = _new(reg, "half", ())
    plan, _ = reg._plan_move("half", v, "validated", "dead-process", "")
    assert reg._ledger.claim("half", reg._ledger.head("half") + 1, plan)
    assert reg.state("half", v) == "trained"            # the claim is not mirrored yet
    reg.inflight_wait_s = 0.2
    reg.transition("half", v, "staging", "ops")
    assert [t.to_state for t in reg.history("half", v)] == ["trained", "validated", "staging"]
    assert reg._ledger.unapplied("half") == []


def test_a_move_that_loses_the_race_is_refused(sqlite_registry):
    """Deterministic interleaving: B moves the version between A's read and A's claim."""
    a, b = sqlite_registry, ModelRegistry(home=sqlite_registry.home)
    v = _new(a, "race")
    real_claim = a._ledger.claim

    def claim_after_b(model, seq, record):
        b.transition("race", v, "staging", "process-b")
        return real_claim(model, seq, record)
    a._ledger.claim = claim_after_b
    with pytest.raises(ConcurrentTransition, match="process-b"):
        a.transition("race", v, "archived", "process-a")
    assert a.state("race", v) == "staging"
    assert [t.actor for t in a.history("race", v)][-1] == "process-b"


def _mover(uri, home, name, version, target, barrier, out):
    reg = ModelRegistry(tracking_uri=uri, home=home)
    barrier.wait()
    try:
        reg.transition(name, version, target, f"proc-{target}", expected_state="validated")
        out.put((target, "ok"))
    except IllegalTransition as exc:
        out.put((target, f"{type(exc).__name__}: {exc}"))


def _race(reg: ModelRegistry, name: str, home):
    v = _new(reg, name)
    # spawn: a forked child would share the parent's pooled database connections
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_mover, args=(reg.uri, home, name, v, target, barrier, out))
             for target in ("staging", "archived")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    results = dict(out.get(timeout=10) for _ in procs)
    winners = [t for t, r in results.items() if r == "ok"]
    assert len(winners) == 1, results
    loser = next(r for r in results.values() if r != "ok")
    assert loser.startswith("ConcurrentTransition") and "refused" in loser, loser
    history = reg.history(name, v)
    assert [t.to_state for t in history] == ["trained", "validated", winners[0]]
    assert reg.state(name, v) == winners[0]


def _first_version_race(reg: ModelRegistry, name: str) -> None:
    """Deterministic interleaving of two processes registering the first version of a
    new model at once: A looks the model (and the experiment) up and finds it missing,
    B then creates and registers it, then A goes on and creates it too. The database
    refuses A's creates as already existing; A must take that as done and register
    version 2. (A's lookups are answered as they were before B's writes landed; a
    second client of the same database plays A.)"""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST

    from tests.test_registry import tiny_model
    assert reg.experiment_id        # the experiment exists (B's earlier runs made it)
    b_version = reg.register(name, tiny_model(), lineage=_lineage(), report={}, config={},
                             tags={"who": "b"}).version
    a = ModelRegistry(tracking_uri=reg.uri, home=reg.home)
    real_get_model, real_get_exp = a.client.get_registered_model, a.client.get_experiment_by_name
    seen = {"model": 0, "experiment": 0}

    def stale_get_model(model_name):        # what A read before B's create landed
        seen["model"] += 1
        if seen["model"] == 1:
            raise MlflowException(f"Registered Model with name={model_name} not found",
                                  RESOURCE_DOES_NOT_EXIST)
        return real_get_model(model_name)

    def stale_get_exp(exp_name):
        seen["experiment"] += 1
        return None if seen["experiment"] == 1 else real_get_exp(exp_name)
    a.client.get_registered_model = stale_get_model
    a.client.get_experiment_by_name = stale_get_exp
    a_version = a.register(name, tiny_model(), lineage=_lineage(), report={}, config={},
                           tags={"who": "a"}).version
    assert (b_version, a_version) == ("1", "2")
    assert seen["model"] >= 1 and seen["experiment"] == 2   # both stale reads were taken
    assert sorted(v.version for v in reg.search(name=name)) == ["1", "2"]
    for who, version in (("a", a_version), ("b", b_version)):
        assert reg.get(name, version).tags["who"] == who
        assert reg.state(name, version) == "trained"
        reg.verify(name, version)


def test_two_processes_registering_a_new_model_at_once_both_succeed(sqlite_registry):
    _first_version_race(sqlite_registry, "brand-new")


def test_postgres_registry_one_production_race_and_outage(pg_registry, postgres, tmp_path):
    """On PostgreSQL: registration and the production rule, two processes racing on one
    version, and the database gone for a moment: calls fail with a clear error naming
    it (never "no such version") and succeed once it is back."""
    reg = pg_registry
    v1 = _new(reg, "pg", ("validated", "staging", "production"))
    v2 = _new(reg, "pg", ("validated", "staging", "production"))
    assert (reg.state("pg", v1), reg.state("pg", v2)) == ("deprecated", "production")
    reg.verify("pg", v2)
    _race(reg, "pg-race", tmp_path / "home")
    _first_version_race(reg, "pg-new")

    postgres.stop("immediate")
    postgres.wait_down()
    try:
        for call in (lambda: reg.state("pg", v2), lambda: reg.get("pg", v2),
                     lambda: reg.transition("pg", v1, "archived", "ops")):
            with pytest.raises(RegistryUnavailable, match="unavailable.*retry") as info:
                call()
            assert f"127.0.0.1:{postgres.port}" in str(info.value)
    finally:
        postgres.start()
    assert reg.state("pg", v1) == "deprecated"        # the refused move changed nothing
    reg.transition("pg", v1, "archived", "ops")
    assert reg.state("pg", v1) == "archived"


# -- signed hashes -----------------------------------------------------------------
def test_a_changed_hash_tag_is_refused_like_a_changed_byte(sqlite_registry):
    reg = sqlite_registry
    v = _new(reg, "signed", ())
    reg.verify("signed", v)
    mv = reg.client.get_model_version("signed", v)
    # rewrite a hash tag (as someone who swapped the file would, to match it)
    reg.client.set_model_version_tag("signed", v, "sha256.config.json", "0" * 64)
    with pytest.raises(IntegrityError, match="signature"):
        reg.verify("signed", v)
    with pytest.raises(IntegrityError, match="signature"):
        reg.lineage("signed", v)
    reg.client.set_model_version_tag("signed", v, "sha256.config.json",
                                     mv.tags["sha256.config.json"])
    reg.verify("signed", v)
    # a signature forged without the key, or removed, is refused as well
    reg.client.set_model_version_tag("signed", v, signing.SIGNATURE_TAG, "ab" * 32)
    with pytest.raises(IntegrityError, match="does not verify"):
        reg.verify("signed", v)
    reg.client.delete_model_version_tag("signed", v, signing.SIGNATURE_TAG)
    with pytest.raises(IntegrityError, match="no signature"):
        reg.verify("signed", v)


def test_signing_key_from_settings_or_a_private_key_file(tmp_path, monkeypatch):
    from cluster.config import load_settings
    home = tmp_path / "h"
    settings = load_settings(home=home)
    key = signing.signing_key(settings)
    path = home / "keys" / "registry.key"
    assert path.stat().st_mode & 0o777 == 0o600 and len(key) == 64
    assert signing.signing_key(settings) == key                  # stable once made
    explicit = load_settings(home=home, registry={"signing_key": "k" * 40})
    assert signing.signing_key(explicit) == b"k" * 40
    payload = {"files": {"a": "1"}}
    signing.check(key, payload, signing.sign(key, payload), "x")
    with pytest.raises(IntegrityError):
        signing.check(b"k" * 40, payload, signing.sign(key, payload), "x")


def test_checkpoint_manifest_refuses_a_tampered_file(tmp_path):
    key = b"s" * 32
    (tmp_path / "model.bin").write_bytes(b"weights")
    (tmp_path / "report.json").write_text("{}")
    signing.write_manifest(tmp_path, ["model.bin", "report.json"], key)
    assert signing.verify_folder(tmp_path, key)["model.bin"] == b"weights"
    (tmp_path / "model.bin").write_bytes(b"weightz")
    with pytest.raises(IntegrityError, match="model.bin sha256"):
        signing.verify_folder(tmp_path, key)
    (tmp_path / "model.bin").write_bytes(b"weights")
    manifest = json.loads((tmp_path / signing.MANIFEST).read_text())
    manifest["files"]["model.bin"] = signing.sha256(b"weightz")       # relabel the hash too
    (tmp_path / signing.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(IntegrityError, match="does not verify"):
        signing.verify_folder(tmp_path, key)
    (tmp_path / signing.MANIFEST).unlink()
    with pytest.raises(IntegrityError, match="no readable"):
        signing.verify_folder(tmp_path, key)


def test_a_tampered_tune_checkpoint_is_refused_at_registration(mlops_home, tmp_path):
    """The best trial's checkpoint is verified against the manifest its trial signed:
    a model file changed on disk is refused, never loaded and re-hashed as new."""
    from types import SimpleNamespace

    from ray import tune

    from cluster.config import get_settings
    from cluster.registry.artefacts import model_files, write_files
    from tests.test_registry import tiny_model
    from tuning.runner import TuneRequest, _register_checkpoint
    settings = get_settings()
    folder = tmp_path / "ckpt"
    folder.mkdir()
    files = model_files(tiny_model(1.0))
    write_files(folder, files)
    (folder / "report.json").write_text(json.dumps({"model_config": {}}))
    (folder / "state.json").write_text("{}")
    signing.write_manifest(folder, [*files, "report.json", "state.json"],
                           signing.signing_key(settings))
    write_files(folder, {"model/linear.npz": model_files(tiny_model(2.0))[
        "model/linear.npz"]})                                           # tampered after
    best = {"trial_id": "t1", "result": SimpleNamespace(
        checkpoint=tune.Checkpoint.from_directory(str(folder)))}
    with pytest.raises(IntegrityError, match="trial t1 checkpoint.*model/linear.npz sha256"):
        _register_checkpoint(TuneRequest("lightgbm"), best, None, settings, "x", {})
    assert not (mlops_home / "mlflow.db").exists() or \
        ModelRegistry(home=mlops_home).search(name="x") == []

"""Serving building blocks (statistics, gates, rollout specs, the predictions sink,
tokens), plus what the other serving tests share: real LightGBM versions trained
through the engine, fault-injecting model wrappers and an in-process server.

The wrappers live here, importable as ``tests.test_serving_support``, so that a
registered faulty model loads in a Ray worker too: they store their inner model in
library formats like any model, and the serving tests trust this module
(``registry.model_modules``)."""
from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from serving.gates import FAIL, PASS, WAIT, Gates, evaluate
from serving.stats import StatsBook, VersionStats

FEATURES = [f"f{i}" for i in range(8)]
TOKENS = {"viewer": "tok-viewer", "operator": "tok-operator", "admin": "tok-admin"}
TRUSTED_MODULES = '["cluster.models", "tests.test_serving_support"]'


# -- fault injection: real models wrapped to misbehave on traffic -------------
class _Wrapper:
    window_length = 1

    def __init__(self, inner):
        self.inner = inner
        self.feature_names = list(inner.feature_names)

    def _extra(self) -> dict:
        return {}

    def predict_window(self, windows, dates=None):
        return self.predict_array(np.asarray(windows)[:, -1, :])

    def save_artefacts(self, directory):
        from cluster.registry.artefacts import save_model
        save_model(self.inner, Path(directory) / "inner")
        return self._extra()

    @classmethod
    def load_artefacts(cls, directory, state, trusted=("cluster.models",)):
        from cluster.registry.artefacts import load_model
        return cls(load_model(Path(directory) / "inner", trusted), **state)

    @staticmethod
    def _is_probe(x) -> bool:
        return len(x) == 2 and np.isnan(x[0]).all()     # serving.versions.health_check's rows


class FlakyModel(_Wrapper):
    """Passes the health check, then fails every other prediction."""

    def __init__(self, inner):
        super().__init__(inner)
        self.calls = 0

    def predict_array(self, x):
        if not self._is_probe(x):
            self.calls += 1
            if self.calls % 2:
                raise RuntimeError("injected failure")
        return self.inner.predict_array(x)


class SlowModel(_Wrapper):
    def __init__(self, inner, delay_s: float):
        super().__init__(inner)
        self.delay_s = delay_s

    def _extra(self) -> dict:
        return {"delay_s": self.delay_s}

    def predict_array(self, x):
        if not self._is_probe(x):
            time.sleep(self.delay_s)
        return self.inner.predict_array(x)


class BrokenModel(_Wrapper):
    """Fails its health check: never fit to serve."""

    def predict_array(self, x):
        raise RuntimeError("injected: model file is garbage")


class InvertedModel(_Wrapper):
    """Healthy and fast, but predicts the opposite: its IC is the negative."""

    def predict_array(self, x):
        return -self.inner.predict_array(x)


# -- shared setup ---------------------------------------------------------------
_trained: list = []


def trained_models(tmp_path_factory) -> list:
    """Two LightGBM models trained through the engine on the synthetic feature frame
    (planted signal), once per test session; each test module registers them anew."""
    if not _trained:
        from cluster.config import load_settings
        from cluster.events import EventBus
        from cluster.training.engine import FeatureData, TrainingEngine, TrainRequest
        from tests.strategies import feature_frame
        settings = load_settings(home=tmp_path_factory.mktemp("serving_models"))
        engine = TrainingEngine(settings, EventBus(None), persist_events=False)
        data = FeatureData(feature_frame(), 3, "fs-test")
        for seed in range(2):
            params = dict(num_boost_round=30, num_leaves=8, learning_rate=0.1, seed=seed,
                          early_stopping_rounds=15, report_every=30)
            result = engine.run(TrainRequest("lightgbm", params=params, feature_columns=FEATURES,
                                             register=False), data)
            assert result.state == "completed", result.error
            _trained.append(result.model)
    return list(_trained)


def register(settings, model, name: str = "m", feature_set: str = "fs-test") -> str:
    """Register ``model`` as a new version (cheap: no training); returns its model id."""
    from cluster.registry.store import Lineage, ModelRegistry
    reg = ModelRegistry.for_settings(settings)
    info = reg.register(name, model, lineage=Lineage(data_version=3, feature_set=feature_set),
                        report={"data": {"features": FEATURES}}, config={"kind": "test"})
    return info.model_id


@pytest.fixture(scope="module")
def serving_home(tmp_path_factory):
    """A home with the features table, the two models registered as m/1 and m/2, and API
    tokens (module-wide)."""
    from cluster.config import get_settings, reset_settings
    from cluster.lake.features import FeaturesTable
    from tests.strategies import feature_frame
    models = trained_models(tmp_path_factory)
    home = tmp_path_factory.mktemp("serving_home")
    with pytest.MonkeyPatch.context() as mp:
        api_home(mp, home)
        mp.setenv("MLOPS_REGISTRY__MODEL_MODULES", TRUSTED_MODULES)
        reset_settings()
        settings = get_settings()
        FeaturesTable(settings.lake_dir).append(
            pa.Table.from_pandas(feature_frame(), preserve_index=False), {"feature_set": "fs-test"})
        assert [register(settings, m) for m in models] == ["m/1", "m/2"]
        yield settings, models
    reset_settings()


@contextlib.contextmanager
def in_process(settings, deployment: str, sync_interval_s: float = 0.02):
    """The FastAPI app on an in-process control plane: (client, plane, runtime)."""
    from fastapi.testclient import TestClient

    from serving.app import create_app
    from serving.clients import LocalControl
    from serving.control import ControlPlane
    from serving.runtime import ServingRuntime
    plane = ControlPlane(deployment, settings=settings)
    runtime = ServingRuntime(LocalControl(plane), settings=settings, deployment=deployment,
                             sync_interval_s=sync_interval_s)
    with TestClient(create_app(runtime)) as client:
        yield client, plane, runtime
        if plane.rollout is not None and not plane.rollout.done:
            plane.rollback("test", "test over", token=TOKENS["operator"])


def api_home(mp, home) -> None:
    """Point the settings at ``home`` (no config file) with the tests' API tokens."""
    mp.setenv("MLOPS_HOME", str(home))
    mp.delenv("MLOPS_CONFIG", raising=False)
    mp.setenv("MLOPS_API_TOKENS", ",".join(f"{r}:{t}" for r, t in TOKENS.items()))


def auth(role: str) -> dict:
    return {"Authorization": f"Bearer {TOKENS[role]}"}


def wait_state(plane, states, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = plane.status()
        if status["state"] in states:
            return status
        time.sleep(0.02)
    raise AssertionError(f"deployment still {plane.status()['state']}, wanted {states}")


def drive(client, plane, until, body_of, timeout: float = 30.0, key_of=None):
    """Send requests until the deployment reaches a state in ``until``; returns the
    (status code, answering version, key) of every request."""
    seen, i = [], 0
    deadline = time.monotonic() + timeout
    while plane.status()["state"] not in until:
        assert time.monotonic() < deadline, f"still {plane.status()} after {timeout}s"
        key = key_of(i) if key_of else None
        res = client.post("/predict", json=body_of(i) | ({"key": key} if key else {}),
                          headers=auth("viewer"))
        version = res.json().get("version") if res.status_code == 200 else None
        assert version is None or res.headers["X-Model-Version"] == version
        seen.append((res.status_code, version, key))
        i += 1
    return seen


def row_body(i: int = 0) -> dict:
    rng = np.random.default_rng(i)
    return {"rows": [{f: float(v) for f, v in zip(FEATURES, rng.standard_normal(8))}]}


def deploy(plane, model_id, strategy="canary", **kw) -> dict:
    kw.setdefault("window_s", 0.2)
    gates = kw.pop("gates", {})
    gates.setdefault("min_requests", 5)
    return plane.deploy(model_id, strategy, gates=gates, actor="test", token=TOKENS["operator"],
                        **kw)


# -- unit tests ------------------------------------------------------------------
def test_latency_quantiles_are_within_one_bucket_and_merge():
    a, b = VersionStats(), VersionStats()
    values = np.random.default_rng(0).exponential(5.0, 4000)
    for i, v in enumerate(values):
        (a if i % 2 else b).ok(float(v))
    a.merge_wire(b.to_wire())
    for q in (0.5, 0.99):
        exact = float(np.quantile(values, q))
        assert exact <= a.quantile_ms(q) <= exact * 1.05 + 0.011, (q, exact, a.quantile_ms(q))
    assert a.requests == 4000 and a.error_rate == 0


def test_daily_ic_matches_numpy_and_needs_enough_pairs():
    stats = VersionStats()
    rng = np.random.default_rng(1)
    expected = []
    for day in range(4):
        pred = rng.standard_normal(20)
        ret = 0.5 * pred + rng.standard_normal(20)
        stats.realised(f"2020-01-0{day + 1}", [f"S{i}" for i in range(20)], pred, ret)
        expected.append(np.corrcoef(pred, ret)[0, 1])
    stats.realised("2020-02-01", ["A", "B"], [1.0, 2.0], [0.1, 0.3])     # too few pairs
    stats.realised("2020-02-02", ["A"], [1.0], [float("nan")])           # not realised yet
    ic, days = stats.daily_ic()
    assert days == 4 and math.isclose(ic, float(np.mean(expected)), rel_tol=1e-9)
    book = StatsBook()
    book.merge({"m/1": stats.to_wire()})
    assert book.get("m/1").daily_ic() == (ic, 4)


def test_gates_wait_pass_and_fail():
    gates = Gates(max_error_rate=0.1, p99_ms=50, min_requests=10, min_ic_dates=2)
    cand = VersionStats()
    for _ in range(5):
        cand.ok(5.0)
    assert evaluate(gates, cand, None).status == WAIT
    for _ in range(5):
        cand.ok(5.0)
    assert evaluate(gates, cand, None).status == PASS
    for _ in range(3):
        cand.error()
    report = evaluate(gates, cand, None)
    assert report.status == FAIL and "error rate" in report.reason
    slow = VersionStats()
    for _ in range(20):
        slow.ok(80.0)
    assert "p99" in evaluate(gates, slow, None).reason
    good, bad = VersionStats(), VersionStats()
    rng = np.random.default_rng(2)
    for d in range(3):
        p = rng.standard_normal(30)
        r = p + rng.standard_normal(30)
        names = [f"S{i}" for i in range(30)]
        good.realised(f"d{d}", names, p, r)
        bad.realised(f"d{d}", names, -p, r)
    for s in (good, bad):
        for _ in range(10):
            s.ok(1.0)
    report = evaluate(gates, bad, good)
    assert report.status == FAIL and "IC" in report.reason
    assert evaluate(gates, good, bad).status == PASS
    skipped = [c for c in evaluate(gates, cand, None).checks if c["gate"] == "ic"][0]
    assert skipped["ok"] is None and "skipped" in skipped
    with pytest.raises(ValueError, match="unknown gate"):
        Gates.from_dict({"p99": 3})


def test_rollout_spec_validation():
    from serving.rollout import RolloutSpec
    assert RolloutSpec("m/2", "canary", steps=(5, 25)).steps == (5.0, 25.0, 100.0)
    assert RolloutSpec("m/2", "canary", weights=(90, 10)).steps == (10.0, 100.0)
    assert RolloutSpec("m/2", "ab", weights=(1, 3)).weights == (1.0, 3.0)
    for bad in (dict(strategy="yolo"), dict(strategy="blue_green", weights=(1, 1)),
                dict(steps=(0, 50)), dict(steps=(50, 120)), dict(strategy="ab", weights=(1,)),
                dict(window_s=-1)):
        with pytest.raises(ValueError):
            RolloutSpec("m/2", **bad)


def test_prediction_sink_buffers_then_commits(tmp_path):
    from serving.predictions import PredictionSink, read_predictions
    sink = PredictionSink(tmp_path, flush_rows=3, flush_seconds=30).start()
    now = time.time()
    sink.add([(now, "r1", "k", "m/1", "AAA", "2020-01-02", 7, 0.5, 1.2, False)])
    time.sleep(0.2)
    assert read_predictions(tmp_path).empty, "one row stays buffered (no flush yet)"
    sink.add([(now, "r2", None, "m/1", None, None, None, 0.1, 0.9, False),
              (now, "r2", None, "m/2", None, None, None, 0.2, 1.9, True)])
    deadline = time.monotonic() + 10
    while read_predictions(tmp_path).empty and time.monotonic() < deadline:
        time.sleep(0.05)          # the row threshold woke the flusher
    sink.close()
    frame = read_predictions(tmp_path)
    assert len(frame) == 3 and sink.written == 3
    first = frame[frame.request_id == "r1"].iloc[0]
    assert (first.version, first.instrument, first.data_version, first.output) == \
        ("m/1", "AAA", 7, 0.5)
    assert str(first.date.date()) == "2020-01-02"
    assert frame.shadow.tolist().count(True) == 1


def test_prediction_sinks_of_several_replicas_append_concurrently(tmp_path):
    """Each replica's sink keeps its table open between commits; concurrent commits
    from other replicas must neither fail nor lose rows."""
    import threading

    from serving.predictions import PredictionSink, read_predictions
    sinks = [PredictionSink(tmp_path, flush_rows=10**9, flush_seconds=3600) for _ in range(3)]
    failures = []

    def replica(i, sink):
        for n in range(15):
            sink.add([(time.time(), f"{i}-{n}", None, "m/1", None, None, None, float(n), 1.0,
                       False)] * 4)
            if sink.flush() != 4:
                failures.append((i, n))

    threads = [threading.Thread(target=replica, args=(i, s)) for i, s in enumerate(sinks)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures
    frame = read_predictions(tmp_path)
    assert len(frame) == 3 * 15 * 4 and frame.request_id.nunique() == 45
    assert [s.written for s in sinks] == [60, 60, 60]


def test_tokens_roles_and_audit(tmp_path):
    from fastapi import HTTPException

    from serving.auth import AuditLog, Authenticator
    a = Authenticator({"t-v": "viewer", "t-o": "operator"})
    assert a.check("Bearer t-o", "viewer").role == "operator"
    for header, least, code in [(None, "viewer", 401), ("Bearer nope", "viewer", 401),
                                ("Basic t-v", "viewer", 401), ("Bearer t-v", "operator", 403),
                                ("Bearer t-o", "admin", 403)]:
        with pytest.raises(HTTPException) as err:
            a.check(header, least)
        assert err.value.status_code == code
    with pytest.raises(HTTPException, match="no API tokens"):
        Authenticator({}).check("Bearer x", "viewer")
    log = AuditLog(tmp_path / "audit.jsonl")
    who = a.check("Bearer t-o", "operator").who
    log.write(who, "POST", "/api/x", "ok")
    (record,) = log.read()
    assert record["who"].startswith("operator:") and "t-o" not in record["who"]
    assert {"time", "who", "action", "result"} <= set(record)


def test_serve_env_fills_in_what_is_unset_and_caps_haproxy_threads():
    from serving.ray_env import HAPROXY_MAX_THREADS, serve_env, with_serve_env
    assert serve_env(2)["RAY_SERVE_HAPROXY_NBTHREAD"] == "2"
    assert serve_env(64)["RAY_SERVE_HAPROXY_NBTHREAD"] == str(HAPROXY_MAX_THREADS)
    env = with_serve_env({"RAY_SERVE_ENABLE_HA_PROXY": "0", "OTHER": "x"}, 1)
    assert env["RAY_SERVE_ENABLE_HA_PROXY"] == "0", "a variable already set wins"
    assert env["RAY_SERVE_HAPROXY_METRICS_ENABLED"] == "0" and env["OTHER"] == "x"
    assert env["RAY_SERVE_HAPROXY_NBTHREAD"] == "1"

"""Shared fixtures: an isolated MLOPS_HOME per test, one local Ray per session,
the shared market data (skipped with a reason when absent), and a guard that
fails the run when no test passed."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT))

# Every property runs at least 100 examples; Delta writes make deadlines meaningless.
settings.register_profile("mlops", max_examples=100, deadline=None,
                          suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                 HealthCheck.too_slow])
settings.load_profile("mlops")

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("TQDM_DISABLE", "1")


def shared_file(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"shared data {path} is absent (CI provides ../shared/data beside the repo)")
    return path


@pytest.fixture
def mlops_home(tmp_path, monkeypatch):
    """A fresh MLOPS_HOME (lake + registry) for one test; settings re-read."""
    from cluster.config import reset_settings
    home = tmp_path / "mlops_home"
    monkeypatch.setenv("MLOPS_HOME", str(home))
    monkeypatch.delenv("MLOPS_CONFIG", raising=False)
    reset_settings()
    yield home
    reset_settings()


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole session: 2 CPUs, no dashboard (ray.init costs ~12 s)."""
    import ray
    for attempt in range(3):
        if ray.is_initialized():
            break
        try:
            ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                     runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
        except Exception as exc:
            # Ray gives a new raylet a fixed 30 s to register; a loaded machine misses it
            if "timed out during startup" not in str(exc) or attempt == 2:
                raise
            ray.shutdown()
    yield ray
    try:
        from ray import serve
        serve.shutdown()
    except Exception:
        pass
    ray.shutdown()


@pytest.fixture(scope="session")
def private_cluster():
    """One private multi-node Ray for the session (``tests/ray_cluster.py``): a head with
    the dashboard and a worker, separate ``ray start`` processes with their own temp dirs,
    labels ``head`` / ``worker``. For ``ray job submit`` and the state API; a test that
    kills a node adds its own extra worker for that."""
    from tests.ray_cluster import RAY, PrivateCluster
    if not Path(RAY).exists():
        pytest.skip("ray CLI not found next to the interpreter")
    cluster = PrivateCluster.start(head_cpus=1, workers={"worker": 1})
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def postgres():
    """A private PostgreSQL server for the session (``tests/pg.py``), or a skip naming why."""
    from tests.pg import PostgresServer, ensure_installed
    reason = ensure_installed()
    if reason:
        pytest.skip(reason)
    server = PostgresServer().init()
    yield server
    server.destroy()


_passed = 0


def pytest_runtest_logreport(report):
    global _passed
    if report.when == "call" and report.passed:
        _passed += 1


def pytest_sessionfinish(session, exitstatus):
    # CI must not go green on a run in which nothing was actually tested.
    if exitstatus == 0 and _passed == 0 and not session.config.option.collectonly:
        session.exitstatus = 1
        print("\nno test passed: failing the run", file=sys.stderr)

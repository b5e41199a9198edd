"""The product as a cluster: a head and a worker (separate ``ray start`` processes on
this machine, each its own temp dir, labelled ``head`` / ``worker``), the jobs submitted
with ``ray job submit --working-dir .``, the registry on PostgreSQL and the lake on a
folder every node sees. Ray's state API shows where feature blocks and trials ran.
The Tune run also loses a node: an extra one-CPU worker, the only node with a free CPU
when the run starts, SIGKILLed once a trial trains there (the fault test "a worker node
removed during a Tune run").

The reported ``FileNotFoundError`` from ``os.getcwd()`` in registration came from two
nodes sharing one temp dir (both ``ray start`` on a machine with the default
``/tmp/ray``): the worker's runtime-env agent, preparing the same working dir for the
first feature block it ran, removed and re-extracted the directory the head's driver
was running in (``download_and_unpack_package(overwrite=True)``, logged as
"Removing .../_ray_pkg_..."). Separate machines never share it; on one machine every
node gets its own ``--temp-dir`` (``PrivateCluster``, the README's local variant).

Small on purpose: 8 stocks, a linear model, 3 trials of 2 folds; the seconds go to
Ray starting processes, not to our computation.
"""
from __future__ import annotations

import threading
import time
import uuid

import pytest

from cluster.errors import ConfigError

FEATURE_ENV = {  # every block through Ray Data, two instruments a block: work for both nodes
    "MLOPS_FEATURE_PIPELINE__LOCAL_THRESHOLD_ROWS": "0",
    "MLOPS_FEATURE_PIPELINE__INSTRUMENTS_PER_BLOCK": "2",
}
# a Tune trial's process title while it trains: the actor is ALIVE then (killed during
# its __init__ it would die unplaced, with no node in the state API)
TRIAL = "ImplicitFunc.train"


def _labels(cluster, node_ids) -> set[str]:
    return {cluster.node_label(n) for n in node_ids if n}


@pytest.fixture(scope="module")
def pipeline_run(private_cluster, postgres, tmp_path_factory):
    """``jobs.pipeline`` submitted to the cluster (features on Ray Data, a linear model
    registered on PostgreSQL); the Tune test tunes on the same lake."""
    home = tmp_path_factory.mktemp("multinode") / "shared"    # a folder both nodes see
    uri = postgres.database("multinode")
    out = private_cluster.submit(home, "jobs.pipeline", "--stocks", "8", "--days", "320",
                                 "--model", "linear",
                                 env_vars={"MLOPS_TRACKING_URI": uri, **FEATURE_ENV})
    return home, uri, out


def test_pipeline_runs_its_feature_blocks_on_both_nodes(private_cluster, pipeline_run):
    from ray.util.state import list_tasks

    from cluster.registry.store import ModelRegistry
    cluster = private_cluster
    home, uri, out = pipeline_run
    assert len({cluster.nodes[n].node_id for n in ("head", "worker")}) == 2
    assert out["train"]["state"] == "completed" and out["features"]["instruments"] == 8
    reg = ModelRegistry(tracking_uri=uri, home=home)     # registered on PostgreSQL
    info = reg.get(out["train"]["registry_name"], out["train"]["version"])
    assert info.state == "trained" and reg.lineage(info.name, info.version)["data_version"] == 0
    blocks = [t for t in list_tasks(address=cluster.dashboard, limit=10_000,
                                    raise_on_missing_output=False)
              if "MapBatches(compute)" in (t.name or "") and t.state == "FINISHED"]
    assert len(blocks) >= 4
    assert _labels(cluster, [t.node_id for t in blocks]) == {"head", "worker"}, blocks


def test_tune_trials_run_on_two_nodes_and_survive_losing_one(private_cluster, pipeline_run):
    """The fault test "a worker node removed during a Tune run", which also shows trials
    on more than one node, deterministically whatever the machine's load: an extra
    one-CPU node joins while the CPUs of head and worker are held by other work (a
    sleeping job on each), so the first trial can only start there. The node is
    SIGKILLed (raylet, workers, all) as soon as a trial trains on it, and the CPUs
    are released: the lost trial is rescheduled (FailureConfig max_failures) on the
    nodes left, all three complete, the best one is registered once, and the state API
    shows trial actors on the lost node and on another."""
    from ray.util.state import list_actors

    from cluster.registry.store import ModelRegistry
    cluster = private_cluster
    home, uri, _ = pipeline_run
    label = f"doomed{uuid.uuid4().hex[:4]}"
    doomed = cluster.add_worker(label, cpus=1)
    holds = [cluster.hold_cpus(node) for node in ("head", "worker")]
    name = f"spread-{label}"
    result: dict = {}

    def submit():
        try:
            result["out"] = cluster.submit(
                home, "jobs.tune", "--model", "linear", "--samples", "3", "--folds", "2",
                "--scheduler", "fifo", "--name", name, "--registry-name", name,
                env_vars={"MLOPS_TRACKING_URI": uri})
        except BaseException as exc:
            result["error"] = exc
    thread = threading.Thread(target=submit, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 300
        while not doomed.running(TRIAL):    # its own process tree: cheap to poll
            assert thread.is_alive(), f"the tuning job ended first: {result}"
            assert time.monotonic() < deadline, "no trial started on the extra node"
            time.sleep(0.05)
        cluster.kill_node(label)
    finally:
        cluster.nodes.pop(label, None)
        for job in holds:
            cluster.release(job)
    thread.join(540)
    assert not thread.is_alive(), "the tuning job did not end"
    assert "error" not in result, result
    out = result["out"]
    assert out["experiment"] == name and out["trials"] == {"completed": 3}, out
    reg = ModelRegistry(tracking_uri=uri, home=home)
    assert [v.version for v in reg.search(name=name)] == [out["version"]]   # once
    lineage = reg.lineage(name, out["version"])
    assert lineage["tune_experiment"] == name
    assert lineage["tune_trial_id"] == out["best"]["trial_id"]
    trials = [a for a in list_actors(address=cluster.dashboard, limit=10_000,
                                     raise_on_missing_output=False,
                                     filters=[("class_name", "=", "ImplicitFunc")])]
    nodes = {a.node_id for a in trials}
    assert doomed.node_id in nodes, trials          # a trial was lost with the node
    assert _labels(cluster, nodes) & {"head", "worker"}, trials   # and ran on after it


def test_a_relative_home_is_refused_in_a_submitted_job(monkeypatch):
    from cluster.config import load_settings
    from cluster.ray_env import check_home_for_job
    check_home_for_job(load_settings(home=".mlops"))        # not a submitted job: fine
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR",
                       '{"runtime_env": {"working_dir": "gcs://_ray_pkg_x.zip"}}')
    check_home_for_job(load_settings(home="/shared/mlops"))
    with pytest.raises(ConfigError, match="absolute path on storage every node sees"):
        check_home_for_job(load_settings(home=".mlops"))


def test_ray_cluster_yaml_is_a_launcher_config_with_what_every_node_needs():
    """``ray up ray_cluster.yaml``: Ray's own validator accepts it; head and worker node
    types; the project installed from pyproject + constraints on every node; the shared
    MLOPS_HOME and the PostgreSQL registry in every node's environment; the Serve
    variables of serving/ray_env.py on every ``ray start``; Serve from its config file."""
    import copy

    import yaml
    from ray.autoscaler._private.util import prepare_config, validate_config

    from serving.ray_env import serve_env
    from tests.conftest import ROOT
    config = yaml.safe_load((ROOT / "ray_cluster.yaml").read_text())
    validate_config(prepare_config(copy.deepcopy(config)))
    assert set(config["available_node_types"]) == {"head", "worker"}
    setup = " ".join(config["setup_commands"])
    assert "dev.py setup" in setup and "MLOPS_HOME=/mnt/mlops" in setup
    assert "MLOPS_TRACKING_URI=postgresql" in setup
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = " ".join(config[key])
        assert all(f"{name}=" in start for name in serve_env()), key
    assert "serve deploy serving/serve_config.yaml" in " ".join(config["head_start_ray_commands"])
    text = (ROOT / "pyproject.toml").read_text()
    assert "psycopg2-binary" in text

"""The product as a cluster: a head and a worker (separate ``ray start`` processes on
this machine, each its own temp dir, labelled ``head`` / ``worker``), the jobs submitted
with ``ray job submit --working-dir .``, the registry on PostgreSQL and the lake on a
folder every node sees. Ray's state API shows where feature blocks and trials ran.

The reported ``FileNotFoundError`` from ``os.getcwd()`` in registration came from two
nodes sharing one temp dir (both ``ray start`` on a machine with the default
``/tmp/ray``): the worker's runtime-env agent, preparing the same working dir for the
first feature block it ran, removed and re-extracted the directory the head's driver
was running in (``download_and_unpack_package(overwrite=True)``, logged as
"Removing .../_ray_pkg_..."). Separate machines never share it; on one machine every
node gets its own ``--temp-dir`` (``PrivateCluster``, the README's local variant).
"""
from __future__ import annotations

import pytest

from cluster.errors import ConfigError

FEATURE_ENV = {  # every block through Ray Data, two instruments a block: work for both nodes
    "MLOPS_FEATURE_PIPELINE__LOCAL_THRESHOLD_ROWS": "0",
    "MLOPS_FEATURE_PIPELINE__INSTRUMENTS_PER_BLOCK": "2",
}


def _labels(cluster, node_ids) -> set[str]:
    return {cluster.node_label(n) for n in node_ids if n}


def test_pipeline_and_tune_run_on_both_nodes(private_cluster, postgres, tmp_path):
    from ray.util.state import list_actors, list_tasks

    from cluster.registry.store import ModelRegistry
    cluster = private_cluster
    assert len({n.node_id for n in cluster.nodes.values()}) == 2
    home = tmp_path / "shared"          # a folder both nodes see (one machine)
    uri = postgres.database("multinode")
    env = {"MLOPS_TRACKING_URI": uri, **FEATURE_ENV}
    out = cluster.submit(home, "jobs.pipeline", "--stocks", "8", "--days", "320",
                         env_vars=env)
    assert out["train"]["state"] == "completed" and out["features"]["instruments"] == 8
    reg = ModelRegistry(tracking_uri=uri, home=home)     # registered on PostgreSQL
    info = reg.get(out["train"]["registry_name"], out["train"]["version"])
    assert info.state == "trained" and reg.lineage(info.name, info.version)["data_version"] == 0
    blocks = [t for t in list_tasks(address=cluster.dashboard, limit=10_000,
                                    raise_on_missing_output=False)
              if "MapBatches(compute)" in (t.name or "") and t.state == "FINISHED"]
    assert len(blocks) >= 4
    assert _labels(cluster, [t.node_id for t in blocks]) == {"head", "worker"}, blocks

    out = cluster.submit(home, "jobs.tune", "--model", "linear", "--samples", "2", "--folds",
                         "2", "--scheduler", "fifo", "--name", "spread",
                         env_vars={"MLOPS_TRACKING_URI": uri})
    assert out["experiment"] == "spread" and out["trials"] == {"completed": 2}
    lineage = reg.lineage(out["registry_name"], out["version"])
    assert lineage["tune_experiment"] == "spread"
    assert lineage["tune_trial_id"] == out["best"]["trial_id"]
    trials = [a for a in list_actors(address=cluster.dashboard, limit=10_000,
                                     raise_on_missing_output=False)
              if a.class_name == "ImplicitFunc"]
    assert _labels(cluster, [a.node_id for a in trials]) == {"head", "worker"}, trials


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

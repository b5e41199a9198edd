"""The Ray Serve application: ONE FastAPI ingress deployment that holds every live
model version in process and routes with the traffic policy.

Why one deployment: on this 2-core machine each extra deployment hop per request
halves throughput (a router deployment in front of model deployments reached
2.8% of bare FastAPI, the ingress choosing in process far more; DEVELOPERS.md).
Replicas take a fraction of a CPU (``serving.replica_num_cpus``, default 0.25)
so several fit beside the rest of the cluster. ``@serve.batch`` is not used:
one request already predicts all its rows in one call, and batching across
requests did not raise throughput at 4 concurrent connections (measured).

    serve.run(build_app())                       # from Python
    serve deploy serving/serve_config.yaml       # on a running cluster
"""
from __future__ import annotations

from ray import serve

from serving.app import create_app
from serving.control import DEFAULT_DEPLOYMENT
from serving.runtime import ServingRuntime

APP_NAME = "mlops"
INGRESS_NAME = "ModelServer"


@serve.deployment(name=INGRESS_NAME, ray_actor_options={"num_cpus": 0.25},
                  max_ongoing_requests=64, health_check_period_s=5)
@serve.ingress()
class ModelServer:
    """Each replica syncs with the deployment's control-plane actor, loads the
    versions it names, and serves them behind the FastAPI routes of ``create_app``."""

    def __init__(self, deployment: str = DEFAULT_DEPLOYMENT, sync_interval_s: float | None = None):
        from serving.clients import ActorControl, control_actor
        self.runtime = ServingRuntime(ActorControl(control_actor(deployment), deployment),
                                      deployment=deployment, sync_interval_s=sync_interval_s)

    def __serve_build_asgi_app__(self):
        # The app's lifespan starts the runtime: the first sync (and model loads)
        # completes before Serve routes any request to this replica.
        return create_app(self.runtime)

    def check_health(self) -> None:
        if self.runtime.last_sync is not None and not self.runtime.alive():
            raise RuntimeError("the control-plane sync task of this replica stopped")


def build_app(deployment: str = DEFAULT_DEPLOYMENT, num_replicas: int | None = None,
              num_cpus: float | None = None, env: dict | None = None):
    """The bound application with replica count and CPUs from settings unless given;
    replicas get this process's MLOPS_* settings (home made absolute)."""
    from cluster.config import get_settings
    from serving.clients import mlops_env
    serving = get_settings().serving
    options = {"num_cpus": num_cpus or serving.replica_num_cpus,
               "runtime_env": {"env_vars": {**mlops_env(), **(env or {})}}}
    return ModelServer.options(num_replicas=num_replicas or serving.num_replicas,
                               ray_actor_options=options,
                               logging_config=_logging_config()).bind(deployment)


def _logging_config() -> dict:
    from cluster.config import get_settings
    return {"enable_access_log": get_settings().serving.access_log}


def app_builder(args: dict):
    """For ``serve deploy`` / ``serve run``: ``import_path: serving.deployment:app_builder``
    with optional ``args: {deployment: NAME, sync_interval_s: S}`` (default: the
    ``serving.sync_interval_s`` setting). Replica count and CPUs come from the config
    file's ``deployments`` section; so does ``logging_config`` when it is there
    (otherwise the access log follows ``serving.access_log``)."""
    args = dict(args or {})
    unknown = set(args) - {"deployment", "sync_interval_s"}
    if unknown:
        raise ValueError(f"unknown argument(s) {sorted(unknown)}; "
                         "allowed: deployment, sync_interval_s")
    interval = args.get("sync_interval_s")
    return ModelServer.options(logging_config=_logging_config()).bind(
        args.get("deployment", DEFAULT_DEPLOYMENT), float(interval) if interval else None)

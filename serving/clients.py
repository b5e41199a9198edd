"""How replicas and the API reach the control plane: in process, or a Ray actor.

Both clients expose the same coroutines, so ``ServingRuntime`` and the HTTP
routes do not know which one they hold. The actor is named and detached (one
per deployment, in namespace ``mlops``): it outlives the process that created
it (``jobs.deploy``) and is shared by every replica. It is a threaded actor, so
a replica's heartbeat is answered while a rollout thread waits on its window.
"""
from __future__ import annotations

import asyncio
import os

from serving.control import DEFAULT_DEPLOYMENT, ControlPlane

NAMESPACE = "mlops"


class LocalControl:
    """A ControlPlane in this process (tests, a single-process server)."""

    def __init__(self, plane: ControlPlane):
        self.plane = plane

    async def sync(self, replica_id, revision, loaded, stats):
        return self.plane.sync(replica_id, revision, loaded, stats)

    async def call(self, method: str, *args, **kwargs):
        # deploy/rollback/promote touch the registry and may wait: keep the loop free
        return await asyncio.to_thread(getattr(self.plane, method), *args, **kwargs)


class ActorControl:
    """The deployment's control-plane actor."""

    def __init__(self, handle):
        self.handle = handle

    async def sync(self, replica_id, revision, loaded, stats):
        return await self.handle.sync.remote(replica_id, revision, loaded, stats)

    async def call(self, method: str, *args, **kwargs):
        with _original_errors():
            return await getattr(self.handle, method).remote(*args, **kwargs)

    def call_sync(self, method: str, *args, **kwargs):
        import ray
        with _original_errors():
            return ray.get(getattr(self.handle, method).remote(*args, **kwargs))


class _original_errors:
    """Re-raise the control plane's own exception (a refusal is a DeploymentConflict,
    not a RayTaskError wrapping one), so callers map it to the right status."""

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        from ray.exceptions import RayTaskError
        if isinstance(exc, RayTaskError) and isinstance(exc.cause, Exception):
            raise exc.cause from None
        return False


def actor_name(deployment: str) -> str:
    return f"serving-control-{deployment}"


def mlops_env() -> dict[str, str]:
    """This process's MLOPS_* variables, with MLOPS_HOME/MLOPS_CONFIG made absolute,
    for the actor and the replicas (a relative home would land in a worker's cwd);
    API tokens only as their hashes (``serving.auth.hashed_token_env``)."""
    from serving.auth import hashed_token_env
    from cluster.config import config_path, get_settings
    env = {k: v for k, v in os.environ.items() if k.startswith("MLOPS_")}
    env["MLOPS_HOME"] = str(get_settings().home.resolve())
    cfg = config_path()
    if cfg is not None:
        env["MLOPS_CONFIG"] = str(cfg.resolve())
    return hashed_token_env(env)


def control_actor(deployment: str = DEFAULT_DEPLOYMENT, create: bool = True):
    """The deployment's control-plane actor handle (created once, then shared)."""
    import ray
    name = actor_name(deployment)
    try:
        return ray.get_actor(name, namespace=NAMESPACE)
    except ValueError:
        if not create:
            raise
    remote = ray.remote(ControlPlane)
    # num_cpus=0: it only coordinates; max_concurrency: heartbeats are served while a
    # rollout thread waits and an operator call blocks on its result.
    return remote.options(name=name, namespace=NAMESPACE, lifetime="detached",
                          get_if_exists=True, num_cpus=0, max_concurrency=32,
                          runtime_env={"env_vars": mlops_env()}).remote(deployment)

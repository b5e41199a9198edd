"""How replicas and the API reach the control plane: in process, or a Ray actor.

Both clients expose the same coroutines, so ``ServingRuntime`` and the HTTP
routes do not know which one they hold. The actor is named and detached (one
per deployment, in namespace ``mlops``): it outlives the process that created
it (``jobs.deploy``) and is shared by every replica. It is a threaded actor, so
a replica's heartbeat is answered while a rollout thread waits on its window.

Ray restarts the actor whenever its process dies (``max_restarts=-1``): the new
one restores the persisted desired state, resumes a running rollout and
reconciles the registry (``serving.control``). Handles stay valid across a
restart; a client whose actor was removed for good (killed without restart, its
node lost) looks it up by name again, creating it when nobody else did.

Heartbeats (``sync``) are sealed by the replica (``serving.heartbeat``): the
clients pass the JSON body and its MAC through unchanged.

Operator calls carry the caller's token (``token=``): the actor checks it and
writes the audit record. ``jobs.deploy`` reads it from ``MLOPS_TOKEN``, which
never travels to actors or replicas.
"""
from __future__ import annotations

import asyncio
import logging
import os

from serving.control import DEFAULT_DEPLOYMENT, ControlPlane

NAMESPACE = "mlops"
CLIENT_TOKEN = "MLOPS_TOKEN"     # the caller's own token; never copied to actors
log = logging.getLogger(__name__)


class LocalControl:
    """A ControlPlane in this process (tests, a single-process server)."""

    def __init__(self, plane: ControlPlane):
        self.plane = plane

    async def sync(self, body: str, mac: str):
        return self.plane.sync(body, mac)

    async def call(self, method: str, *args, **kwargs):
        # deploy/rollback/promote touch the registry and may wait: keep the loop free
        return await asyncio.to_thread(getattr(self.plane, method), *args, **kwargs)


class ActorControl:
    """The deployment's control-plane actor."""

    def __init__(self, handle, deployment: str | None = None):
        self.handle = handle
        self.deployment = deployment

    async def sync(self, body: str, mac: str):
        try:
            return await self.handle.sync.remote(body, mac)
        except Exception as exc:
            self._refresh(exc)
            raise

    async def call(self, method: str, *args, **kwargs):
        with _original_errors():
            return await getattr(self.handle, method).remote(*args, **kwargs)

    def call_sync(self, method: str, *args, **kwargs):
        import ray
        with _original_errors():
            return ray.get(getattr(self.handle, method).remote(*args, **kwargs))

    def _refresh(self, exc: Exception) -> None:
        """After the actor died for good, find (or recreate) the deployment's actor."""
        from ray.exceptions import ActorDiedError, ActorUnavailableError
        if self.deployment is None or isinstance(exc, ActorUnavailableError) \
                or not isinstance(exc, ActorDiedError):
            return          # restarting, or another failure: the same handle will do
        try:
            self.handle = control_actor(self.deployment)
        except Exception as again:  # the next heartbeat tries again
            log.warning("control plane of %s not reachable yet: %s", self.deployment, again)


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
    env = {k: v for k, v in os.environ.items() if k.startswith("MLOPS_") and k != CLIENT_TOKEN}
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
    # rollout thread waits and an operator call blocks on its result; max_restarts=-1:
    # Ray brings it back whenever its process dies (it restores its persisted state).
    return remote.options(name=name, namespace=NAMESPACE, lifetime="detached",
                          get_if_exists=True, num_cpus=0, max_concurrency=32,
                          max_restarts=-1,
                          runtime_env={"env_vars": mlops_env()}).remote(deployment)

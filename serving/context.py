"""What every route module shares: the runtime, settings, auth, audit, and the
library objects the routes are built on (registry, event bus, job queue).

Route modules (``serving/routes/*``) each build an ``APIRouter`` from one
``ApiContext``; ``serving.app.create_app`` includes them all. The console mounts
its pages on the same app with the same ``auth``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from serving.auth import AuditLog, Authenticator, Principal
from serving.errors import message, status_of
from serving.runtime import ServingRuntime


@dataclass
class ApiContext:
    runtime: ServingRuntime
    auth: Authenticator
    audit: AuditLog
    queue: Any = None                       # cluster.resources.JobQueue, built on first use
    _lazy: dict = field(default_factory=dict)

    def __post_init__(self):
        self.viewer = self.auth.dependency("viewer")
        self.operator = self.auth.dependency("operator", self.audit)
        self.admin = self.auth.dependency("admin")

    @classmethod
    def for_runtime(cls, runtime: ServingRuntime, queue=None) -> "ApiContext":
        settings = runtime.settings
        return cls(runtime, Authenticator.from_settings(settings),
                   AuditLog.from_settings(settings), queue)

    @property
    def settings(self):
        return self.runtime.settings

    @property
    def registry(self):
        return self.runtime.registry

    @property
    def bus(self):
        from cluster.events import get_bus
        return get_bus(self.settings.lake_dir)

    def explanations(self):
        if "explain" not in self._lazy:
            from cluster.explain.service import Explanations
            self._lazy["explain"] = Explanations(self.registry, self.settings)
        return self._lazy["explain"]

    def job_queue(self):
        if self.queue is None:
            from cluster.resources import JobQueue
            self.queue = JobQueue.for_settings(self.settings)
        return self.queue

    @staticmethod
    async def blocking(fn: Callable, *args, **kwargs):
        """Library calls read tables and the registry: keep them off the event loop."""
        return await run_in_threadpool(fn, *args, **kwargs)

    async def audited(self, request: Request, who: Principal, work: Callable[[], Awaitable],
                      keys: tuple[str, ...] = ("state", "split", "stable", "revision")):
        """Run a mutating call and write its audit record, failures included."""
        try:
            result = await work()
        except Exception as exc:
            self.audit.write(who.who, request.method, request.url.path,
                             f"error: {status_of(exc)}", message(exc))
            raise
        detail = {k: result.get(k) for k in keys} if isinstance(result, dict) else None
        self.audit.write(who.who, request.method, request.url.path, "ok", detail)
        return result

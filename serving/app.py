"""The HTTP API: prediction, deployments, models, features, jobs, data, explanations,
monitoring, audit, health, and the event stream (``/ws/events``).

``create_app(runtime)`` builds the FastAPI app around one ``ServingRuntime``.
The Serve ingress (``serving.deployment``) builds it on each replica; tests and a
single-process server use it directly (``TestClient(create_app(...))``), so both
run the same routes. OpenAPI docs are at ``/docs`` and ``/openapi.json``.

Each area is one route module in ``serving/routes/`` (an ``APIRouter`` built from the
shared ``ApiContext``); every route is built on library functions in ``cluster/``.

Roles: ``/predict`` and every GET under ``/api`` need ``viewer``; mutating calls
(deploy, promote, rollback, training, jobs, feature changes, alerts) need
``operator`` and are written to the audit log, refused calls included; ``/api/audit``
needs ``admin``. ``/healthz``, ``/readyz`` (ready or not; details with a token) and
the docs are open. Errors: ``serving.errors`` (4xx naming the field, never a 5xx for
bad input).
"""
from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI

from serving import errors
from serving.context import ApiContext
from serving.routes import ROUTERS
from serving.runtime import ServingRuntime

# kept importable from here (tests and the bench use them)
from serving.routes.predict import VERSION_HEADER, PredictRequest  # noqa: F401


def create_app(runtime: ServingRuntime, queue=None) -> FastAPI:
    """``queue``: a ``cluster.resources.JobQueue`` (default: the settings' one, opened
    on first use)."""
    ctx = ApiContext.for_runtime(runtime, queue)

    @asynccontextmanager
    async def lifespan(_app):
        await runtime.start()
        settings = runtime.settings.queue
        if settings.run_in_api:         # admit and submit queued jobs from this replica
            ctx.job_queue().start_background(settings.tick_s)
        yield
        if ctx.queue is not None:
            ctx.queue.stop_background()
        await runtime.stop()

    app = FastAPI(title="stock-mlops serving", version="1", lifespan=lifespan,
                  description=__doc__, default_response_class=errors.FiniteJSONResponse)
    app.state.runtime = runtime
    app.state.api = ctx
    errors.install(app)
    for build in ROUTERS:
        app.include_router(build(ctx))
    from serving.compression import ApiGZip     # large /api answers gzipped (console)
    app.add_middleware(ApiGZip)
    from serving.console import mount_console   # the web console's pages, outside /api
    mount_console(app, ctx.auth)
    return app

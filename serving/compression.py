"""Gzip for the API's large JSON answers, and only for those.

A feature-rows answer (a year of one stock: ~180 columns) or a drift window (every
feature on every day) is megabytes of JSON numbers that compress 4-6x; the console
pages read them on every visit. ``/predict`` and everything outside ``/api/`` pass
straight through (no per-request wrapper on the serving hot path), and answers under
``minimum_size`` bytes are sent as they are. The compressing itself is Starlette's.
"""
from __future__ import annotations

from starlette.middleware.gzip import GZipMiddleware

PREFIX = "/api/"


class ApiGZip(GZipMiddleware):
    def __init__(self, app, minimum_size: int = 4096, compresslevel: int = 5):
        super().__init__(app, minimum_size=minimum_size, compresslevel=compresslevel)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(PREFIX):
            await super().__call__(scope, receive, send)
        else:
            await self.app(scope, receive, send)

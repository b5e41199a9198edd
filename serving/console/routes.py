"""The console's routes on the API's app: pages, login, assets, ``whoami``.

Pages need no token to load: they hold no data. What a caller may see and do is
decided by the API routes the page's scripts call with the caller's bearer token.
All of these routes stay out of the OpenAPI document (they are not the API).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates
from markupsafe import Markup

from serving.console.assets import PLOTLY_NAME, PREFIX, Assets

TEMPLATES = Path(__file__).with_name("templates")


@dataclass(frozen=True)
class Page:
    key: str
    path: str
    title: str
    charts: bool = True          # loads Plotly.js


# The navigation, in the order of the page list.
MENU = [Page("dashboard", "/", "Dashboard"),
        Page("features", "/features", "Features"),
        Page("models", "/models", "Models"),
        Page("monitoring", "/monitoring", "Monitoring"),
        Page("experiments", "/experiments", "A/B experiments"),
        Page("data", "/data", "Data versions"),
        Page("explain", "/explain", "Explain")]


def mount_console(app: FastAPI, auth) -> None:
    """Add the console to ``app``; ``auth`` is the API's ``serving.auth.Authenticator``."""
    assets = Assets()
    templates = Jinja2Templates(directory=str(TEMPLATES))
    env = templates.env
    env.globals.update(asset=assets.url, menu=MENU, plotly_url=assets.url(PLOTLY_NAME),
                       import_map=Markup(json.dumps(assets.import_map())))

    def page_route(page: Page):
        async def render(request: Request) -> HTMLResponse:
            return templates.TemplateResponse(request, f"{page.key}.html",
                                              {"page": page, "title": page.title})
        render.__name__ = f"console_{page.key}"
        return render

    for page in MENU:
        app.add_api_route(page.path, page_route(page), methods=["GET"],
                          response_class=HTMLResponse, include_in_schema=False)

    @app.get("/login", response_class=HTMLResponse, include_in_schema=False)
    async def console_login(request: Request) -> HTMLResponse:
        return templates.TemplateResponse(request, "login.html",
                                          {"page": None, "title": "Sign in"})

    @app.get("/console", include_in_schema=False)
    async def console_root() -> RedirectResponse:
        return RedirectResponse("/")

    @app.get(PREFIX + "/{name:path}", include_in_schema=False)
    async def console_asset(name: str, request: Request):
        return assets.respond(name, request)

    @app.get("/console/whoami", include_in_schema=False)
    async def console_whoami(request: Request) -> dict:
        """The role of the bearer token (401 when unknown): the login page's check."""
        who = auth.check(request.headers.get("authorization"), "viewer")
        return {"role": who.role, "who": who.who}

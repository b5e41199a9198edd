"""The web console: server-rendered pages on the serving ingress.

``mount_console(app, auth)`` adds the pages (``/``, ``/features``, ...), the login
page and the static assets to the API's FastAPI app. The pages are shells: every
figure on them is fetched by small JavaScript modules from the ``/api`` routes and
the ``/ws/events`` WebSocket with the bearer token the login page keeps for the
browser session, so a page shows exactly what the API answers that caller and an
operator's button pressed by a viewer is refused by the API too.

No build step and nothing from the internet: templates are Jinja2, scripts are plain
ES modules, and the charts are Plotly.js served from the installed ``plotly`` wheel.
"""
from serving.console.routes import MENU, mount_console

__all__ = ["MENU", "mount_console"]

"""The console's routes in process (no browser): pages and login render, assets are
versioned, cacheable and gzipped, Plotly.js comes from the installed wheel, and
``/console/whoami`` answers a token's role. The browser tests are in
``test_console_browser.py``."""
from __future__ import annotations

import gzip
import re

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from serving.auth import Authenticator
from serving.console import MENU, mount_console
from serving.console.assets import PLOTLY_NAME, Assets, plotly_path

TOKENS = {"tok-v": "viewer", "tok-o": "operator"}


@pytest.fixture(scope="module")
def client():
    app = FastAPI()
    mount_console(app, Authenticator(TOKENS))
    with TestClient(app) as c:
        yield c


def test_every_page_renders_with_the_menu_and_versioned_assets(client):
    for page in MENU:
        res = client.get(page.path)
        assert res.status_code == 200, page
        html = res.text
        for item in MENU:
            assert f'href="{item.path}"' in html
        assert f'data-page="{page.key}"' in html
        assert 'aria-current="page"' in html
        scripts = re.findall(r'src="(/console/static/[^"]+)"', html)
        assert scripts and all("?v=" in s for s in scripts)
        for src in scripts:
            assert client.get(src).status_code == 200, src
    login = client.get("/login")
    assert login.status_code == 200 and 'id="token"' in login.text


def test_assets_are_immutable_when_versioned_and_revalidated_when_not(client):
    url = Assets().url("api.js")
    res = client.get(url)
    assert res.headers["cache-control"].endswith("immutable")
    assert res.headers["content-type"].startswith("text/javascript")
    again = client.get(url, headers={"If-None-Match": res.headers["etag"]})
    assert again.status_code == 304 and again.content == b""
    bare = client.get("/console/static/api.js")
    assert bare.status_code == 200 and bare.headers["cache-control"] == "no-cache"
    assert client.get("/console/static/nope.js").status_code == 404


def test_plotly_is_the_installed_wheels_file_gzipped(client):
    import plotly
    url = Assets().url(PLOTLY_NAME)
    res = client.get(url, headers={"Accept-Encoding": "gzip"})
    assert res.status_code == 200
    assert res.headers["content-encoding"] == "gzip"
    assert res.content == plotly_path().read_bytes()      # httpx decoded the gzip
    assert plotly.__file__.rsplit("/", 1)[0] in str(plotly_path())
    raw = client.get(url, headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in raw.headers
    assert gzip.compress(raw.content)[:2] == b"\x1f\x8b"


def test_import_map_points_modules_at_their_versioned_urls(client):
    html = client.get("/").text
    imports = Assets().import_map()["imports"]
    assert "/console/static/api.js" in imports
    assert all("?v=" in v for v in imports.values())
    assert imports["/console/static/api.js"] in html


def test_whoami_names_the_role_and_refuses_unknown_tokens(client):
    assert client.get("/console/whoami").status_code == 401
    assert client.get("/console/whoami",
                      headers={"Authorization": "Bearer nope"}).status_code == 401
    res = client.get("/console/whoami", headers={"Authorization": "Bearer tok-o"})
    assert res.status_code == 200 and res.json()["role"] == "operator"
    assert "tok-o" not in res.text


def test_console_routes_stay_out_of_the_openapi_document(client):
    paths = client.get("/openapi.json").json()["paths"]
    assert not [p for p in paths if p == "/" or p.startswith("/console")]


def test_large_api_answers_are_gzipped_and_predict_is_left_alone():
    from fastapi.responses import JSONResponse

    from serving.compression import ApiGZip
    app = FastAPI()
    big = {"rows": [{"feature": f"f{i}", "value": i / 7} for i in range(2000)]}

    @app.get("/api/big")
    async def api_big():
        return big

    @app.get("/api/small")
    async def api_small():
        return {"ok": True}

    @app.post("/predict")
    async def predict():
        return JSONResponse(big)

    app.add_middleware(ApiGZip)
    with TestClient(app) as c:
        res = c.get("/api/big", headers={"Accept-Encoding": "gzip"})
        assert res.headers["content-encoding"] == "gzip" and res.json() == big
        assert int(res.headers["content-length"]) < len(res.content) / 3
        assert "content-encoding" not in c.get("/api/small").headers
        assert "content-encoding" not in c.post("/predict",
                                                headers={"Accept-Encoding": "gzip"}).headers

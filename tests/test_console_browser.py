"""The console in a real browser: Playwright driving Debian's chromium, headless, on
loopback, against the API's app after a small synthetic run of the main job.

One app and one browser for the whole module. Every page loads with the pipeline's
real numbers and no console error, and is saved as a screenshot under
``test-artifacts/console/`` (``MLOPS_CONSOLE_SCREENSHOTS`` moves it; git-ignored).
The test command installs chromium with apt-get when running as root and it is
missing; otherwise these tests skip with the reason.
"""
from __future__ import annotations

import re

import pytest

pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install "
                                                  "-c constraints.txt playwright)")

from serving.console import MENU  # noqa: E402
from tests.console_support import (SCREENSHOTS, ConsoleServer, auth, chromium_browser,  # noqa: E402
                                   find_chromium, open_tab, run_pipeline, tokens_env, TOKENS)


@pytest.fixture(scope="module")
def chromium():
    path, why = find_chromium()
    if path is None:
        pytest.skip(why)
    return path


@pytest.fixture(scope="module")
def console(chromium, tmp_path_factory):
    """The main job on a small market, its model deployed, the app on loopback."""
    from cluster.config import get_settings, reset_settings
    home = tmp_path_factory.mktemp("console_home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLOPS_HOME", str(home))
        mp.delenv("MLOPS_CONFIG", raising=False)
        mp.setenv("MLOPS_API_TOKENS", tokens_env())
        reset_settings()
        summary = run_pipeline()
        settings = get_settings()
        model_id = f"{summary['train']['registry_name']}/{summary['train']['version']}"
        with ConsoleServer(settings) as server:
            server.deploy(model_id)
            server.wait_state(("promoted",))
            server.summary, server.model_id = summary, model_id
            yield server
    reset_settings()


@pytest.fixture(scope="module")
def browser(chromium):
    with chromium_browser(chromium) as b:
        yield b


@pytest.fixture
def tab(browser, console):
    tabs = []

    def make(role="viewer"):
        t = open_tab(browser, console.url, role)
        tabs.append(t)
        return t
    yield make
    for t in tabs:
        t.close()


def shot(page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def api_get(console, path, role="viewer"):
    import httpx
    res = httpx.get(console.url + path, headers=auth(role), timeout=30)
    assert res.status_code == 200, res.text
    return res.json()


def test_login_keeps_the_token_for_the_session_and_sends_it_as_bearer(tab, console):
    t = tab(None)
    page = t.open("/", ready=False)
    page.wait_for_url(re.compile(r"/login\?next=%2F$"))
    t.wait_ready()
    shot(page, "login")
    page.fill("#token", "not-a-token")
    page.click("#login-form button")
    page.wait_for_selector("#login-error:not([hidden])")
    assert "not valid" in page.inner_text("#login-error")
    t.errors.clear()        # the refused check is logged by chromium as a failed request
    page.fill("#token", TOKENS["operator"])
    page.click("#login-form button")
    page.wait_for_url(console.url + "/")
    t.wait_ready()
    assert page.inner_text("#who-role") == "operator"
    api_calls = [r for r in t.requests if "/api/" in r.url]
    assert api_calls and all(r.headers.get("authorization") == f"Bearer {TOKENS['operator']}"
                             for r in api_calls)
    page.reload()           # the session survives a reload, not a new browser context
    t.wait_ready()
    assert page.inner_text("#who-role") == "operator"
    assert not t.errors, t.errors


def test_every_page_loads_with_real_numbers_and_no_console_error(tab, console):
    t = tab("viewer")
    for item in MENU:
        page = t.open(item.path)
        assert page.locator(f'nav a[data-nav="{item.key}"]').get_attribute(
            "aria-current") == "page"
        CHECKS[item.key](page, console)
        shot(page, item.key)
    assert not t.errors, t.errors


def _dashboard(page, console):
    status = api_get(console, "/api/deployments")["deployments"][0]
    summary = page.inner_text("#deployment-summary")
    assert console.model_id in summary and status["state"] in summary
    for version, share in status["split"].items():
        assert f"{100 * share:.1f}%" in summary
    assert page.locator("#split-chart .main-svg").count() > 0
    assert "promoted" in page.inner_text("#deployment-history")


CHECKS = {"dashboard": _dashboard}

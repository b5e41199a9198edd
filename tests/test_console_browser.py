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
                                   build_demo, find_chromium, open_tab, tokens_env, TOKENS)


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
        # the job queue talks to this module's own Ray only (never a dashboard found on
        # the machine's default port)
        mp.setenv("MLOPS_QUEUE__DASHBOARD_ADDRESS", "http://127.0.0.1:9")
        reset_settings()
        with ConsoleServer(get_settings()) as server:
            server.demo = build_demo(server)
            server.model_id = server.demo.incumbent
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


def shot(page, name: str, element: str | None = None) -> None:
    """A page (whole) or one element of it, e.g. an open modal, as a test artefact."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = str(SCREENSHOTS / f"{name}.png")
    if element:
        page.locator(element).screenshot(path=path)
    else:
        page.screenshot(path=path, full_page=True)


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
    assert console.model_id in summary and console.demo.candidate in summary
    for version, share in status["split"].items():
        assert page.inner_text(f'[data-split="{version}"]').endswith(f"{100 * share:.1f}%")
    assert page.locator("#split-chart .main-svg").count() > 0
    assert "promoted" in page.inner_text("#deployment-history")
    assert "jobs waiting" in page.inner_text("#dash-cluster")
    hours = api_get(console, "/api/monitoring/predictions?hours=24")["rows"]
    assert page.inner_text('[data-kpi="predictions"] .value') == f"{sum(r['count'] for r in hours):,}"
    active = api_get(console, "/api/monitoring/alerts?state=raised")["alerts"]
    assert page.inner_text('[data-kpi="alerts"] .value') == str(len(active))


def _models(page, console):
    models = {m["model_id"]: m for m in api_get(console, "/api/models")["models"]}
    listed = page.inner_text("#model-list")
    for model_id in (console.demo.incumbent, console.demo.candidate):
        assert model_id in listed
        assert f"{models[model_id]['metrics']['test_rank_ic']:.4f}" in listed
    # the training form: every default of the chosen type with its meaning
    types = {t["model_type"]: t for t in api_get(console, "/api/model-types")["model_types"]}
    assert page.locator("#train-type option").count() == len(types) == 10
    for p in types[page.input_value("#train-type")]["parameters"]:
        assert page.input_value(f'[data-param="{p["name"]}"]') == (
            str(p["default"]).lower() if p["type"] == "boolean" else str(p["default"]))
        assert p["meaning"] in page.inner_text("#train-params")


def _plot(page, div: str) -> list[dict]:
    """The traces Plotly drew in ``div`` (their names, x and y as the page holds them)."""
    return page.evaluate(f"""() => (document.getElementById({div!r}).data || []).map(t => (
        {{name: t.name, type: t.type, x: t.x, y: t.y, z: t.z, close: t.close}}))""")


def _features(page, console):
    catalog = api_get(console, "/api/features")
    assert page.locator("#feature-stock option").count() == len(catalog["instruments"])
    stock = page.input_value("#feature-stock")
    data = api_get(console, f"/api/features/{stock}")
    assert f"{stock}: {data['rows']} days" in page.inner_text("#price-note")
    price = {t["name"]: t for t in _plot(page, "price-chart")}
    assert price["price"]["type"] == "candlestick"
    assert price["price"]["close"] == [b["close"] for b in data["bars"]]
    assert price["sma_5"]["y"] == [r["sma_5"] for r in data["records"]]
    assert {"bb_upper", "bb_lower"} <= set(price)
    assert {t["name"] for t in _plot(page, "oscillator-chart")} >= {"rsi_14", "stoch_k"}
    alpha = _plot(page, "alpha-heatmap")[0]
    assert len(alpha["z"]) == sum(f["source"] == "alpha158" for f in catalog["features"]) == 158
    assert catalog["feature_set"] in page.inner_text("#feature-set-id")
    assert page.locator("#catalog tbody tr").count() == len(catalog["features"])


def _monitoring(page, console):
    model = page.input_value("#monitor-model")
    assert model == console.demo.incumbent
    rows = [r for r in api_get(console, f"/api/monitoring/models/{model}/metrics")["rows"]
            if r["kind"] == "live"]
    assert page.inner_text('[data-kpi="days"] .value') == str(len(rows))
    rolling = {t["name"]: t for t in _plot(page, "ic-chart")}["rolling 20"]
    assert rolling["y"] == [r["rank_ic_20"] for r in rows]
    drift = api_get(console, f"/api/monitoring/drift/{model}")["rows"]
    heat = _plot(page, "drift-heatmap")[0]
    assert len(heat["x"]) == len({r["date"] for r in drift})
    alerts = api_get(console, "/api/monitoring/alerts")["alerts"]
    raised = [a for a in console.demo.summary["monitor"]["alerts"] if a["rule"] == "drift_score"]
    assert raised and alerts
    shown = page.inner_text("#alerts")
    for a in alerts:
        assert page.locator(f'#alerts [data-alert="{a["alert_id"]}"]').count() == 1
    assert "drift_score" in shown


def _experiments(page, console):
    exps = api_get(console, "/api/experiments")["experiments"]
    assert len(exps) == 1 and set(exps[0]["arms"]) == {console.demo.incumbent,
                                                       console.demo.candidate}
    rid = exps[0]["rollout_id"]
    assert page.inner_text("#ab-selected") == rid
    analysis = api_get(console, f"/api/experiments/{rid}")
    assert page.inner_text('[data-kpi="verdict"] .value') == analysis["verdict"]
    assert page.inner_text('[data-kpi="days"] .value') == str(analysis["days"])
    arms = _plot(page, "ab-arms-chart")[0]
    assert arms["y"] == [analysis["mean_rank_ic"][a] for a in analysis["arms"]]
    live = page.inner_text("#ab-live")
    assert "50.0%" in live and console.demo.candidate in live


def _explain(page, console):
    model = page.input_value("#explain-model")
    g = api_get(console, f"/api/explain/{model}")
    bars = _plot(page, "global-chart")[0]
    assert list(reversed(bars["y"])) == list(g["importance"])[:len(bars["y"])]
    assert set(_plot(page, "groups-chart")[0]["y"]) == set(g["groups"])
    water = _plot(page, "local-waterfall")[0]
    assert water["type"] == "waterfall" and water["x"][-1] == "prediction"
    pred = float(page.inner_text('[data-kpi="prediction"] .value'))
    total = float(page.inner_text('[data-kpi="sum"] .value'))
    assert abs(pred - total) < 1e-3 and abs(water["y"][-1] - pred) < 1e-3


def _data(page, console):
    versions = api_get(console, "/api/data/versions")["versions"]
    assert len(versions) == 2
    listed = page.inner_text("#versions")
    for v in versions:
        assert f"{v['rows']:,}" in listed and v["source"] in listed
    assert page.inner_text("#version-id") == str(versions[-1]["version"])
    diff = api_get(console, f"/api/data/diff?a={versions[0]['version']}&b={versions[1]['version']}")
    shown = page.inner_text("#diff")
    assert f"{diff['rows_added']:,}" in shown and f"{diff['rows_restated']:,}" in shown
    day = console.demo.ab_days[-1]          # a day the A/B test served
    page.fill("#served-date", day)
    page.click("#served-form button")
    page.wait_for_function(f"document.querySelector('#served-summary').textContent.includes({day!r})")
    served = api_get(console, f"/api/served?date={day}")
    assert served["predictions"] > 0
    page.wait_for_function(f"document.querySelectorAll('#served tbody tr').length === "
                           f"{len(served['rows'])}")
    assert set(served["versions"]) <= set(page.inner_text("#served").split())
    page.click(f'[data-version="{versions[0]["version"]}"]')
    page.wait_for_function("document.querySelector('#version-id').textContent === '0'")
    page.wait_for_selector(f'#version-models :text("{console.demo.incumbent}")')


CHECKS = {"dashboard": _dashboard, "features": _features, "models": _models,
          "monitoring": _monitoring, "experiments": _experiments, "data": _data,
          "explain": _explain}


def test_compare_two_models_and_open_and_download_a_training_report(tab, console):
    import json
    t = tab("viewer")
    page = t.open("/models")
    a, b = console.demo.incumbent, console.demo.candidate
    page.check(f'[data-compare="{a}"]')
    page.check(f'[data-compare="{b}"]')
    page.click("#compare-button")
    page.wait_for_selector("#compare-importance .main-svg")
    compared = api_get(console, f"/api/models/compare?ids={a},{b}")
    table = page.inner_text("#compare-metrics")
    for v in compared["versions"]:
        assert f"{v['metrics']['test_rank_ic']:.4f}" in table
    assert compared["best"]["test_rank_ic"] in table
    shot(page, "models-compare")

    page.click(f'[data-report="{a}"]')
    page.wait_for_selector("#training-report[open] #report-importance .main-svg")
    report = api_get(console, f"/api/models/{a}/training-report")
    fields = page.inner_text("#report-fields")
    assert report["run_id"] in fields and report["model_type"] in fields
    params = page.inner_text("#report-params")
    for key, value in report["hyper_parameters"].items():
        assert key in params
    assert page.locator("#report-history-loss .main-svg").count() > 0
    shot(page, "training-report", "#training-report")
    with page.expect_download() as download:
        page.click("#report-download")
    assert json.loads(open(download.value.path()).read()) == report
    assert not t.errors, t.errors

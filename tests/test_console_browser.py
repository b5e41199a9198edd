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

import numpy as np
import pytest

pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install "
                                                  "-c constraints.txt playwright)")

from serving.console import MENU  # noqa: E402
from tests.console_support import (SCREENSHOTS, ConsoleServer, auth, chromium_browser,  # noqa: E402
                                   build_demo, cancel_jobs, find_chromium, open_tab,
                                   tokens_env, TOKENS)


@pytest.fixture(scope="module")
def chromium():
    path, why = find_chromium()
    if path is None:
        pytest.skip(why)
    return path


@pytest.fixture(scope="module")
def console(chromium, request, tmp_path_factory):
    """The main job on a small market, its model deployed, the app on loopback; the job
    queue submits to the session's private Ray cluster (training runs are Ray jobs).
    Only the training test needs that cluster: if it cannot start, that test fails
    with the reason and the others still run."""
    from cluster.config import get_settings, reset_settings
    try:
        cluster, cluster_error = request.getfixturevalue("private_cluster"), None
    except Exception as exc:                    # noqa: BLE001 (reported by the test)
        cluster, cluster_error = None, f"{type(exc).__name__}: {str(exc)[-500:]}"
    home = tmp_path_factory.mktemp("console_home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLOPS_HOME", str(home))
        mp.delenv("MLOPS_CONFIG", raising=False)
        mp.setenv("MLOPS_API_TOKENS", tokens_env())
        # the job queue talks to the session's private cluster only (never a dashboard
        # found on the machine's default port)
        mp.setenv("MLOPS_QUEUE__DASHBOARD_ADDRESS",
                  cluster.dashboard if cluster else "http://127.0.0.1:9")
        mp.setenv("MLOPS_QUEUE__TICK_S", "0.5")
        reset_settings()
        with ConsoleServer(get_settings()) as server:
            server.demo = build_demo(server)
            server.model_id = server.demo.incumbent
            server.cluster_error = cluster_error
            try:
                yield server
            finally:            # a failed test leaves no run on the shared cluster
                cancel_jobs(get_settings())
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
    data = api_get(console, f"/api/features/{stock}?limit=250")     # the page's default year
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
    # the page's window: the last 60 days, the 30 features with the highest PSI, the rest
    # as one row (their maximum per day)
    drift = api_get(console, f"/api/monitoring/drift/{model}?days=60&top=30&measure=psi")["rows"]
    heat = _plot(page, "drift-heatmap")[0]
    assert heat["x"] == sorted({r["date"] for r in drift})
    assert set(heat["y"][1:]) == {r["feature"] for r in drift} and "others" in heat["y"][0]
    top = heat["y"][-1]
    assert heat["z"][-1] == [round(r["psi"], 5) for r in drift if r["feature"] == top]
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
    equity = {t["name"]: t for t in _plot(page, "compare-equity")}
    for model_id in (a, b):
        bt = api_get(console, f"/api/models/{model_id}/training-report")["backtest"]["test"]
        assert equity[model_id]["x"] == bt["dates"]
        assert equity[model_id]["y"][-1] == pytest.approx(float(np.prod(1 + np.array(bt["returns"]))))
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


def _set_param(page, name, value):
    page.fill(f'[data-param="{name}"]', str(value))


# Installed in the page: every value the live modal's data-stage / data-percent takes,
# in order (each MutationRecord's oldValue is the value before it; the last is current).
RECORD_LIVE = """() => {
  window.__live = {"data-stage": [], "data-percent": []};
  new MutationObserver((records) => {
    for (const name of Object.keys(window.__live)) {
      const mine = records.filter(r => r.target.id === "training-live" && r.attributeName === name);
      mine.forEach((r, i) => window.__live[name].push(
        i + 1 < mine.length ? mine[i + 1].oldValue : r.target.getAttribute(name)));
    }
  }).observe(document.body, {subtree: true, attributes: true, attributeOldValue: true,
                             attributeFilter: Object.keys(window.__live)});
}"""


def _runs(values):
    """Consecutive repeats collapsed: the stages in the order they came."""
    return [v for i, v in enumerate(values) if i == 0 or values[i - 1] != v]


def test_live_training_runs_to_completed_and_another_is_stopped(tab, console):
    """A run started from the form is a queued Ray job whose progress the modal shows
    over the WebSocket until completed; a second, long run is stopped from the modal."""
    if console.cluster_error:
        pytest.fail(f"the private Ray cluster for training jobs did not start: "
                    f"{console.cluster_error}")
    t = tab("operator")
    page = t.open("/models")
    page.select_option("#train-type", "lightgbm")
    page.fill("#train-name", "stock-console")
    for name, value in {"num_boost_round": 40, "num_leaves": 7, "early_stopping_rounds": 40,
                        "report_every": 5}.items():
        _set_param(page, name, value)
    page.evaluate(RECORD_LIVE)
    page.click("#train-form button[type=submit]")
    page.wait_for_selector("#training-live[open]")
    page.wait_for_selector("#training-live[data-done]", timeout=240_000)
    assert page.get_attribute("#training-live", "data-done") == "completed"
    assert page.get_attribute("#training-live", "data-percent") == "100"
    progress = api_get(console, "/api/models/stock-console/progress")
    assert progress["state"] == "completed"
    # every state the modal went through, as it went (a fast run passes "training" in
    # less than Playwright's 500 ms polling step, so it is recorded, not polled for)
    shown = page.evaluate("window.__live")
    stages = [e["stage"] for e in progress["events"]]
    assert _runs(shown["data-stage"]) == ["queued", *_runs(stages)]
    assert "training" in stages and stages[-1] == "completed"
    pct = [float(v) for v in shown["data-percent"]]
    assert pct == sorted(pct) and pct[-1] == 100 and len(set(pct)) > 3, pct
    log = page.inner_text("#live-log").splitlines()
    assert len(log) == len(stages) + 1          # + the "queued" line the start wrote
    assert [line.split()[1] for line in log[1:]] == stages
    loss = {tr["name"]: tr for tr in _plot(page, "live-loss")}
    rows = [e for e in progress["events"] if e.get("train_loss") is not None]
    assert loss["train loss"]["y"] == [e["train_loss"] for e in rows]
    shot(page, "training-live", "#training-live")
    page.click("#live-open-report")
    page.wait_for_selector("#training-report[open] #report-importance .main-svg")
    assert progress["run_id"] in page.inner_text("#report-fields")
    page.click("#report-close")
    page.click("#live-close")

    # a long run, stopped from the modal
    for name, value in {"num_boost_round": 200000, "early_stopping_rounds": 200000,
                        "learning_rate": 0.0001, "report_every": 500}.items():
        _set_param(page, name, value)
    page.click("#train-form button[type=submit]")
    page.wait_for_selector("#training-live[data-stage=training]", timeout=240_000)
    page.click("#live-stop")
    page.wait_for_selector("#training-live[data-done]", timeout=240_000)
    assert page.get_attribute("#training-live", "data-done") in ("failed", "stopped")
    assert "stop" in page.inner_text("#live-log").lower()
    shot(page, "training-stopped", "#training-live")
    assert not t.errors, t.errors


def test_a_viewer_cannot_press_an_operators_button_and_the_api_refuses_it_too(tab, console):
    import httpx
    t = tab("viewer")
    for path, button in [("/models", "#train-form button[type=submit]"),
                         ("/features", "#recalculate"), ("/experiments", "#ab-start button"),
                         ("/experiments", "#ab-stop-keep"), ("/monitoring", "[data-ack]")]:
        page = t.open(path)
        for b in page.locator(button).all():
            assert b.is_disabled(), (path, button)
            assert "needs the operator role" in b.get_attribute("title")
    refused = [
        ("post", "/api/models/stock-x/training/start", {"model_type": "lightgbm"}),
        ("post", "/api/features/calculate", {"incremental": True}),
        ("post", "/api/deployments/console/rollback", {"reason": "viewer"}),
        ("post", "/api/models/" + console.demo.candidate + "/deploy", {"strategy": "ab"}),
        ("post", "/api/monitoring/alerts", {"alert_id": "x"}),
    ]
    for method, path, body in refused:
        res = httpx.request(method, console.url + path, json=body, headers=auth("viewer"))
        assert res.status_code == 403, (path, res.text)
    # pressed anyway (enabled by hand in the page): the API says no and the page shows it
    page = t.open("/features")
    page.evaluate("document.querySelector('#recalculate').disabled = false")
    page.click("#recalculate")
    page.wait_for_selector("#notice.error:not([hidden])")
    assert "403" in page.inner_text("#notice")
    assert all("403" in e for e in t.errors), t.errors


def test_a_deployment_change_and_an_alert_appear_on_the_dashboard_without_a_reload(tab, console):
    import httpx

    from cluster.config import ResourceThresholds
    from cluster.events import get_bus
    from cluster.monitoring.monitor import Monitor
    t = tab("viewer")
    page = t.open("/")
    page.wait_for_selector("body[data-stream=live]")
    page.evaluate("window.__same_page = true")
    candidate = console.demo.candidate
    assert page.locator(f'[data-split="{candidate}"]').count() == 1
    res = httpx.post(console.url + "/api/deployments/console/rollback",
                     json={"reason": "A/B test over"}, headers=auth("operator"), timeout=60)
    assert res.status_code == 200, res.text
    page.wait_for_selector(f'[data-split="{candidate}"]', state="detached", timeout=30_000)
    page.wait_for_selector('#dash-events [data-event="deployment_changed"]')
    assert page.inner_text(f'[data-split="{console.demo.incumbent}"]').endswith("100.0%")

    # a real monitor run with a node-memory threshold the machine is over: a new alert
    settings = console.runtime.settings
    tight = settings.model_copy(update={"monitoring": settings.monitoring.model_copy(
        update={"resource_thresholds": ResourceThresholds(node_memory=0.001)})})
    assert page.locator('#dash-alerts [data-alert]:has-text("node_memory")').count() == 0
    Monitor(tight, bus=get_bus(settings.lake_dir)).run()
    page.wait_for_selector('#dash-events [data-event="alert_raised"]:has-text("node_memory")',
                           timeout=30_000)
    page.wait_for_selector('#dash-alerts [data-alert]:has-text("node_memory")')
    raised = api_get(console, "/api/monitoring/alerts?state=raised")["alerts"]
    assert page.inner_text('[data-kpi="alerts"] .value') == str(len(raised))
    assert page.evaluate("window.__same_page") is True
    assert len(page.evaluate("performance.getEntriesByType('navigation')")) == 1
    shot(page, "dashboard-live")
    assert not t.errors, t.errors

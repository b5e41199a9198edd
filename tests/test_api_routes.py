"""Every REST route of issue 16 on real data after a small pipeline (synthetic market ->
ingest -> features -> two linear models through the engine -> batch scoring ->
monitoring), in process; then the error contract: schemathesis over /openapi.json,
every route, with and without tokens: no 5xx and responses conform to the schema."""
from __future__ import annotations

import time

import pandas as pd
import pytest

from tests.test_serving_support import TOKENS, api_home, auth

ALPHA = ["KMID", "ROC5", "MA10", "VSTD5", "OPEN0"]
INDICATORS = ["sma_5", "rsi_14", "obv", "atr_14"]


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    from cluster.config import get_settings, reset_settings
    from cluster.features.pipeline import FeaturePipeline
    from cluster.lake.ingest import ingest
    from cluster.monitoring.batch import score
    from cluster.monitoring.monitor import run_monitor
    from cluster.training.engine import TrainingEngine, TrainRequest
    from tests.test_serving_support import deploy, in_process, wait_state
    home = tmp_path_factory.mktemp("api_routes")
    with pytest.MonkeyPatch.context() as mp:
        api_home(mp, home)
        mp.setenv("MLOPS_QUEUE__CAPACITY_CPUS", "2")      # no Ray here: nothing is admitted
        mp.setenv("MLOPS_QUEUE__RUN_IN_API", "false")
        reset_settings()
        settings = get_settings()
        ingest("synthetic", stocks=6, days=160, seed=3)
        ingest("synthetic", stocks=7, days=170, seed=3)         # a second data version
        FeaturePipeline(settings).run(incremental=True, use_ray=False)
        engine = TrainingEngine(settings)
        ids = []
        for alpha in (1.0, 10.0):
            result = engine.run(TrainRequest("linear", params={"alpha": alpha},
                                             feature_columns=ALPHA + INDICATORS))
            assert result.state == "completed", result.error
            ids.append(f"{result.registry_name}/{result.version}")
        score("stock-linear", ids[0].split("/")[1], settings=settings, use_ray=False)
        run_monitor(settings)
        with in_process(settings, "routes") as (client, plane, runtime):
            deploy(plane, ids[0], "blue_green")         # /predict and /readyz serve it
            wait_state(plane, ("promoted",))
            while not runtime.ready():
                time.sleep(0.02)
            yield settings, client, ids
    reset_settings()


def get(client, path, role="viewer", **params):
    res = client.get(path, headers=auth(role), params=params)
    assert res.status_code == 200, (path, res.status_code, res.text)
    return res.json()


def test_features_routes(api):
    settings, client, _ = api
    catalog = get(client, "/api/features")
    assert catalog["feature_set"].startswith("fs-") and len(catalog["features"]) == 180
    assert catalog["instruments"][:2] == ["S0000", "S0001"]
    rsi = next(f for f in catalog["features"] if f["name"] == "rsi_14")
    assert rsi["family"] == "momentum" and rsi["dependencies"] == ["close"]
    rows = get(client, "/api/features/S0001", columns="rsi_14,KMID", limit=5)
    assert rows["rows"] == 5 and set(rows["records"][0]) >= {"date", "rsi_14", "KMID"}
    assert [b["date"] for b in rows["bars"]] == [r["date"] for r in rows["records"]]
    res = client.get("/api/features/NOPE", headers=auth("viewer"))
    assert res.status_code == 404 and "NOPE" in res.text
    res = client.post("/api/features/calculate", json={"instruments": ["S0001"]},
                      headers=auth("operator"))
    assert res.status_code == 202 and res.json()["job_id"].startswith("mlops-features-")
    job = get(client, f"/api/jobs/{res.json()['job_id']}")
    assert job["state"] == "queued" and job["entrypoint"].endswith("--instruments S0001")
    res = client.put("/api/features/rsi_14", json={"params": {"timeperiod": 10}},
                     headers=auth("operator"))
    assert res.status_code == 200, res.text
    change = res.json()
    assert change["previous"] == catalog["feature_set"] != change["feature_set"]
    assert change["changed"] == {"rsi_window": 10} and change["job_id"]
    assert get(client, "/api/features")["feature_set"] == change["feature_set"]
    from cluster.config import load_settings
    assert load_settings().feature_pipeline.indicators.rsi_window == 10   # jobs see it too
    for feature, body, fragment in [("KMID", {"params": {"x": 1}}, "Alpha158"),
                                    ("rsi_10", {"params": {"period": 3}}, "no parameter"),
                                    ("rsi_10", {"params": {"timeperiod": 1}}, "rsi_window"),
                                    ("nope", {"params": {"timeperiod": 3}}, "no feature")]:
        res = client.put(f"/api/features/{feature}", json=body, headers=auth("operator"))
        assert res.status_code == 422 and fragment in res.text, (feature, res.text)
    res = client.put("/api/features/rsi_10", json={"params": {"timeperiod": 14}},
                     headers=auth("operator"))
    assert res.json()["feature_set"] == catalog["feature_set"]            # back again
    jobs = get(client, "/api/jobs", state="queued")["jobs"]
    assert len(jobs) == 3
    res = client.delete(f"/api/jobs/{jobs[0]['id']}", headers=auth("operator"))
    assert res.json()["state"] == "cancelled"


def test_models_routes(api):
    settings, client, ids = api
    found = get(client, "/api/models", name="stock-linear")["models"]
    assert [m["model_id"] for m in found] == ids
    ranked = get(client, "/api/models", metric="valid_rank_ic")["models"]
    assert {m["model_id"] for m in ranked} == set(ids)
    assert [m["model_id"] for m in get(client, "/api/models", state="production")["models"]] == ids[:1]
    cmp = get(client, "/api/models/compare", ids=",".join(ids))
    assert [v["model_id"] for v in cmp["versions"]] == ids and "alpha" in cmp["params_differing"]
    assert cmp["best"]["valid_rank_ic"] in ids
    assert client.get("/api/models/compare", params={"ids": ids[0]},
                      headers=auth("viewer")).status_code == 422
    report = get(client, f"/api/models/{ids[0]}/training-report")
    assert report["status"] == "completed" and report["metrics"]["valid"]
    progress = get(client, f"/api/models/{ids[0]}/progress")
    assert [s["stage"] for s in progress["stages"]][-1] == "completed"
    res = client.get("/api/models/stock-linear/progress", headers=auth("viewer"))
    assert res.status_code == 404 and "queue" in res.text     # not started over the API
    res = client.post("/api/models/stock-linear/training/start",
                      json={"model_type": "linear", "params": {"alpha": 3.0}},
                      headers=auth("operator"))
    assert res.status_code == 202, res.text
    started = res.json()
    progress = get(client, "/api/models/stock-linear/progress")
    assert progress["run_id"] == started["run_id"] and progress["state"] == "queued"
    res = client.post("/api/models/stock-linear/training/stop", headers=auth("operator"))
    assert res.status_code == 200 and res.json()["state"] == "cancelled"
    for body in ({"model_type": "nope"}, {"model_type": "linear", "params": {"bogus": 1}}):
        res = client.post("/api/models/x/training/start", json=body, headers=auth("operator"))
        assert res.status_code == 422, res.text
    types = get(client, "/api/model-types")["model_types"]
    assert len(types) == 10


def test_data_monitoring_and_audit_routes(api):
    settings, client, ids = api
    versions = get(client, "/api/data/versions")["versions"]
    assert [v["version"] for v in versions] == [0, 1]
    one = get(client, "/api/data/versions/1")
    assert one["stats"]["instruments"] == 7
    diff = get(client, "/api/data/diff", a=0, b=1)
    assert diff["instruments_added"] == ["S0006"] and diff["rows_added"] > 0
    assert client.get("/api/data/diff", params={"a": 0, "b": 9},
                      headers=auth("viewer")).status_code == 404
    metrics = get(client, f"/api/monitoring/models/{ids[0]}/metrics")
    assert metrics["rows"] and {"rank_ic", "date", "kind"} <= set(metrics["rows"][0])
    res = client.get(f"/api/monitoring/models/{ids[1]}/metrics", headers=auth("viewer"))
    assert res.status_code == 404 and "jobs.monitor" in res.text           # never scored
    drift = get(client, f"/api/monitoring/drift/{ids[0]}")
    assert drift["rows"] and "psi" in drift["rows"][0]
    _drift_windows(client, ids[0], drift["rows"])
    assert isinstance(get(client, "/api/monitoring/alerts")["alerts"], list)
    res = client.post("/api/monitoring/alerts", json={"alert_id": "nope"},
                      headers=auth("operator"))
    assert res.status_code == 404
    assert get(client, "/api/experiments") == {"experiments": []}
    assert client.get("/api/experiments/x", headers=auth("viewer")).status_code == 404
    day = metrics["rows"][-1]["date"]
    served = get(client, "/api/served", date=day)
    assert served["date"] == day and served["predictions"] > 0
    assert served["rows"][0]["trained_on"]["data_version"] is not None
    assert "rows" in get(client, "/api/monitoring/predictions", hours=2)
    records = get(client, "/api/audit", role="admin", limit=50)["records"]
    assert any(r["action"].startswith("PUT /api/features/rsi_14") for r in records)
    assert client.get("/api/audit", headers=auth("operator")).status_code == 403
    cluster = get(client, "/api/cluster")
    assert cluster["capacity"] == {"cpus": 2.0, "gpus": 0.0}


def _drift_windows(client, model_id, rows):
    """The heat map's trimmed answers agree with the full rows: the last N days, the
    top features by a measure's peak, named features on demand, the rest summarised."""
    full = pd.DataFrame(rows)
    dates = sorted(full["date"].unique())
    last = [d for d in dates if d >= dates[-2]]
    peak = full[full["date"].isin(last)].groupby("feature")["ks"].max()
    top = sorted(peak.index, key=lambda f: (-peak[f], f))[:3]
    named = top[-1] if len(peak) <= 3 else sorted(set(peak.index) - set(top))[0]
    url = f"/api/monitoring/drift/{model_id}"
    part = get(client, url, days=2, top=3, measure="ks", feature=named)["rows"]
    assert sorted({r["date"] for r in part}) == last
    assert {r["feature"] for r in part} == set(top) | {named}
    m = get(client, url, days=2, top=3, measure="ks", feature=named, format="matrix")
    assert m["dates"] == last and m["days_total"] == len(dates) and m["measure"] == "ks"
    assert m["features"][:3] == top and named in m["features"]
    assert m["features_total"] == len(peak) == len(m["ranking"])
    assert m["z"][0] == [next(round(r["ks"], 5) for r in part if r["feature"] == top[0] and r["date"] == d)
                         for d in last]
    rest = full[full["date"].isin(last) & ~full["feature"].isin(m["features"])]
    assert m["rest"]["features"] == rest["feature"].nunique()
    if len(rest):
        assert m["rest"]["max"] == [round(rest[rest["date"] == d]["ks"].max(), 5) for d in last]
    for bad in ({"top": 0}, {"days": -1}, {"measure": "mean"}, {"format": "csv"},
                {"feature": "no_such_feature"}):
        res = client.get(url, params=bad, headers=auth("viewer"))
        assert res.status_code == 422 and next(iter(bad)) in res.text, res.text


# -- the error contract ----------------------------------------------------------------
def test_schemathesis_no_5xx_and_responses_conform(api):
    """Every route, generated inputs with and without tokens (schemathesis on the app's
    own /openapi.json): never a 5xx, and every response as the document says."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings as hsettings
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (content_type_conformance,
                                                   response_schema_conformance,
                                                   status_code_conformance)
    settings, client, ids = api
    app = client.app
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    checks = [not_a_server_error, status_code_conformance, content_type_conformance,
              response_schema_conformance]
    failures = []
    headers_by_role = [{}, {"Authorization": "Bearer wrong"},
                       {"Authorization": f"Bearer {TOKENS['admin']}"}]
    for op in schema.get_all_operations():
        operation = op.ok()
        for headers in headers_by_role:
            @hsettings(max_examples=4, deadline=None, derandomize=True,
                       suppress_health_check=list(HealthCheck), database=None)
            @given(case=operation.as_strategy())
            def run(case):
                case.headers = {**(case.headers or {}), **headers}
                try:
                    case.call_and_validate(checks=checks)
                except (Exception, BaseExceptionGroup) as exc:  # one report, every route
                    failures.append(f"{case.method} {case.formatted_path} "
                                    f"{list(headers)}: {str(exc)[:300]}")
            run()
    assert not failures, "\n".join(failures[:20])

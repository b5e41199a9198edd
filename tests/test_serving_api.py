"""The HTTP API in process (the same FastAPI app the Serve ingress builds): predictions
with the answering version in header and body, the predictions table, the auth
matrix with its audit log, deploy-time refusals, lifecycle/lineage, health, docs."""
from __future__ import annotations

import time

import pytest

from serving.predictions import read_predictions
from tests.test_serving_support import (FEATURES, TOKENS, auth, deploy, in_process, register,
                                        row_body, serving_home, wait_state)  # noqa: F401 (fixture)


@pytest.fixture(scope="module")
def live(serving_home):
    """One deployment serving m/1 (promoted), for the read-only tests of this module."""
    settings, models = serving_home
    with in_process(settings, "api") as (client, plane, runtime):
        deploy(plane, "m/1", "blue_green")
        wait_state(plane, ("promoted",))
        _wait_ready(client)
        yield settings, client, plane, runtime


def _wait_ready(client, timeout=10.0):
    deadline = time.monotonic() + timeout
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, client.get("/readyz").json()
        time.sleep(0.02)


def test_predict_rows_and_instruments_say_which_version_answered(live):
    settings, client, plane, runtime = live
    res = client.post("/predict", json=row_body(1) | {"key": "client-7", "data_version": 3},
                      headers=auth("viewer"))
    assert res.status_code == 200, res.text
    body = res.json()
    assert body["version"] == "m/1" == res.headers["X-Model-Version"]
    assert len(body["predictions"]) == 1
    expected = runtime.snapshot.stable.model.predict_array(
        [[row_body(1)["rows"][0][f] for f in FEATURES]])
    assert body["predictions"][0] == pytest.approx(float(expected[0]))

    res = client.post("/predict", json={"instruments": ["S003", "S001", "S002"],
                                        "date": "2019-03-01"}, headers=auth("viewer"))
    assert res.status_code == 200, res.text
    body = res.json()
    assert body["version"] == res.headers["X-Model-Version"] == "m/1"
    assert body["instruments"] == ["S003", "S001", "S002"] and len(body["predictions"]) == 3
    assert body["date"] == "2019-03-01" and body["data_version"] == 3
    assert len(set(body["predictions"])) == 3

    runtime.sink.flush()
    table = read_predictions(settings.lake_dir)
    mine = table[table.request_id == body["request_id"]]
    assert sorted(mine.instrument) == ["S001", "S002", "S003"]
    assert set(mine.version) == {"m/1"} and not mine.shadow.any()
    assert (mine.data_version == 3).all() and (mine.latency_ms > 0).all()
    assert str(mine.date.iloc[0].date()) == "2019-03-01"
    by_inst = dict(zip(mine.instrument, mine.output))
    assert [by_inst[i] for i in body["instruments"]] == pytest.approx(body["predictions"])
    keyed = table[table.key == "client-7"]
    assert len(keyed) == 1 and keyed.data_version.iloc[0] == 3


@pytest.mark.parametrize("payload,fragment", [
    ({"rows": [{"f0": 1.0}]}, "lacks feature"),
    ({"instruments": ["NOPE"], "date": "2019-03-01"}, "no features for"),
    ({"instruments": ["S001"]}, "need a date"),
    ({"instruments": ["S001"], "date": "2019-03-01", "rows": [{"f0": 1}]}, "either"),
    ({"rows": [{f: "x" for f in FEATURES}]}, "rows"),
])
def test_bad_inputs_are_422_and_name_the_problem(live, payload, fragment):
    _, client, *_ = live
    res = client.post("/predict", json=payload, headers=auth("viewer"))
    assert res.status_code == 422, res.text
    assert fragment in res.text


def test_nothing_deployed_is_503_and_not_ready(serving_home):
    settings, _ = serving_home
    with in_process(settings, "empty") as (client, plane, _):
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 503
        res = client.post("/predict", json=row_body(), headers=auth("viewer"))
        assert res.status_code == 503 and "deploy" in res.json()["detail"]
        assert client.get("/api/deployments", headers=auth("viewer")).json()[
            "deployments"][0]["state"] == "empty"


def test_openapi_documents_every_endpoint(live):
    _, client, *_ = live
    doc = client.get("/openapi.json").json()
    paths = doc["paths"]
    for path, method in [("/predict", "post"), ("/api/models/{model_id}/deploy", "post"),
                         ("/api/deployments", "get"), ("/api/deployments/{name}/rollback", "post"),
                         ("/api/deployments/{name}/promote", "post"),
                         ("/api/models/{model_id}/lifecycle", "get"),
                         ("/api/models/{model_id}/lineage", "get"), ("/healthz", "get"),
                         ("/readyz", "get")]:
        assert method in paths.get(path, {}), path
    predict = paths["/predict"]["post"]
    schema = predict["requestBody"]["content"]["application/json"]["schema"]
    assert {"instruments", "date", "rows", "key"} <= set(schema["properties"])
    assert predict["security"] == [{"HTTPBearer": []}]
    assert "HTTPBearer" in doc["components"]["securitySchemes"]
    assert client.get("/docs").status_code == 200


def test_lifecycle_and_lineage(live):
    _, client, *_ = live
    res = client.get("/api/models/m/1/lifecycle", headers=auth("viewer"))
    assert res.status_code == 200
    body = res.json()
    assert body["state"] == "production"
    assert [t["to"] for t in body["history"]] == ["trained", "validated", "staging", "production"]
    lin = client.get("/api/models/m/1/lineage", headers=auth("viewer")).json()
    assert lin["data_version"] == 3 and lin["feature_set"] == "fs-test" and lin["model_id"] == "m/1"
    assert client.get("/api/models/m/99/lineage", headers=auth("viewer")).status_code == 404


# -- auth matrix -------------------------------------------------------------------
ROLES = [None, "bad", "viewer", "operator", "admin"]
ENDPOINTS = [  # (method, path, json, least role)
    ("post", "/predict", row_body(), "viewer"),
    ("get", "/api/deployments", None, "viewer"),
    ("get", "/api/models/m/1/lifecycle", None, "viewer"),
    ("get", "/api/models/m/1/lineage", None, "viewer"),
    ("post", "/api/models/{candidate}/deploy", {"strategy": "ab"}, "operator"),
    ("post", "/api/deployments/auth/promote", None, "operator"),
    ("post", "/api/deployments/auth/rollback", None, "operator"),
]
RANK = {"viewer": 1, "operator": 2, "admin": 3}


def test_auth_matrix_and_refusals_change_nothing(serving_home):
    from cluster.registry.store import ModelRegistry
    from serving.auth import AuditLog
    settings, models = serving_home
    reg = ModelRegistry(home=settings.home)
    audit = AuditLog.from_settings(settings)
    with in_process(settings, "auth") as (client, plane, _):
        deploy(plane, "m/1", "blue_green")
        wait_state(plane, ("promoted",))
        _wait_ready(client)
        for method, path, body, least in ENDPOINTS:
            for role in ROLES:
                candidate = register(settings, models[1]) if "{candidate}" in path else "m/2"
                target = path.format(candidate=candidate)
                before = (plane.status()["revision"], plane.status()["split"],
                          reg.state(*candidate.split("/")), len(audit.read()))
                headers = ({} if role is None else {"Authorization": "Bearer wrong"}
                           if role == "bad" else auth(role))
                res = client.request(method.upper(), target, json=body, headers=headers)
                allowed = role in RANK and RANK[role] >= RANK[least]
                expected = (200, 202) if allowed else (401,) if role in (None, "bad") else (403,)
                if allowed and ("promote" in path or "rollback" in path):
                    expected = (409,)    # allowed, but nothing to promote / roll back to here
                assert res.status_code in expected, (method, path, role, res.status_code, res.text)
                if res.status_code in (401, 403):
                    after = (plane.status()["revision"], plane.status()["split"],
                             reg.state(*candidate.split("/")))
                    assert after == before[:3], f"refused {method} {path} changed something"
                    if res.status_code == 401:
                        assert res.headers["WWW-Authenticate"] == "Bearer"
                records = audit.read()[before[3]:]
                if least != "operator":
                    assert records == [], (path, role, records)
                    continue
                (rec,) = records            # every mutating call, refused ones included
                assert rec["action"] == f"POST {target}" and rec["time"]
                assert rec["result"] == ("ok" if res.status_code < 300 else
                                         f"refused: {res.status_code}"
                                         if res.status_code in (401, 403) else
                                         f"error: {res.status_code}")
                if role in (None, "bad"):
                    assert rec["who"] == "anonymous"
                else:
                    assert rec["who"].startswith(f"{role}:") and "tok-" not in rec["who"]
                if "{candidate}" in path and allowed:
                    wait_state(plane, ("ab",))
                    plane.rollback("test", "reset the matrix", token=TOKENS["operator"])
                    wait_state(plane, ("rolled_back",))


def test_deploy_refuses_unknown_incompatible_and_tampered_versions(serving_home):
    from cluster.registry.store import ModelRegistry
    settings, models = serving_home
    reg = ModelRegistry(home=settings.home)
    other_fs = register(settings, models[0], feature_set="fs-other")
    tampered = register(settings, models[0])
    name, version = tampered.split("/")
    mv = reg.client.get_model_version(name, version)
    reg.client.set_model_version_tag(name, version, "sha256.model", "0" * 64)
    with in_process(settings, "refusals") as (client, plane, _):
        for model_id, status, fragment in [("m/404", 404, "no model version"),
                                           (other_fs, 422, "feature set"),
                                           (tampered, 422, "signature")]:  # a hash tag
            res = client.post(f"/api/models/{model_id}/deploy", json={"strategy": "canary"},
                              headers=auth("operator"))
            assert res.status_code == status and fragment in res.text, (model_id, res.text)
        assert plane.status()["state"] == "empty" and plane.revision == 0
        assert reg.state(*other_fs.split("/")) == "trained"
        assert reg.state(name, version) == "trained" and mv.run_id

"""The real thing once: ``jobs.deploy`` puts our Serve app on the session Ray, and
HTTP requests reach it while a failing canary is rolled back; plus the
``serve deploy`` config file."""
from __future__ import annotations

import json
import socket
import threading
import time

import pytest
import yaml

from tests.conftest import ROOT
from tests.test_serving_support import (TOKENS, FlakyModel, auth, register, row_body,
                                        serving_home)  # noqa: F401 (fixture)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_config_file_is_a_valid_deploy_config():
    from ray.serve.schema import ServeDeploySchema

    from serving.deployment import INGRESS_NAME, app_builder
    config = ServeDeploySchema.model_validate(
        yaml.safe_load((ROOT / "serving" / "serve_config.yaml").read_text()))
    (app,) = config.applications
    module, _, attr = app.import_path.partition(":")
    assert (module, attr) == ("serving.deployment", "app_builder")
    (dep,) = app.deployments
    assert dep.name == INGRESS_NAME and dep.ray_actor_options.num_cpus == 0.25
    assert dep.logging_config.enable_access_log is False
    built = app_builder(app.args)
    assert built._bound_deployment.name == INGRESS_NAME
    with pytest.raises(ValueError, match="unknown argument"):
        app_builder({"model": "m/1"})


def wait_ready(url: str, seconds: float = 120.0) -> None:
    """Poll ``/readyz`` as a user would until it answers 200, bounded: right after
    ``jobs.deploy`` the Serve proxy may still be binding its port (connection refused)
    and the replica still loading its version (503)."""
    import httpx
    deadline, last = time.monotonic() + seconds, None
    while time.monotonic() < deadline:
        try:
            reply = httpx.get(f"{url}/readyz", timeout=10)
            if reply.status_code == 200:
                return
            last = f"{reply.status_code} {reply.text[:300]}"
        except httpx.TransportError as exc:
            last = repr(exc)
        time.sleep(0.2)
    raise AssertionError(f"{url}/readyz not ready within {seconds:.0f} s: {last}")


def _deploy(capsys, *argv) -> dict:
    from jobs._cli import run
    from jobs.deploy import main
    assert run(main, list(argv)) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_jobs_deploy_on_serve_over_http_with_a_failing_canary(ray_session, serving_home,
                                                              monkeypatch, capsys):
    import httpx
    from ray import serve

    from cluster.config import reset_settings
    from serving.clients import NAMESPACE, actor_name
    from serving.deployment import APP_NAME
    settings, models = serving_home
    port = free_port()
    monkeypatch.setenv("MLOPS_API__PORT", str(port))
    monkeypatch.setenv("MLOPS_TOKEN", TOKENS["operator"])    # jobs.deploy's operator token
    reset_settings()
    stable = register(settings, models[0])
    flaky = register(settings, FlakyModel(models[1]))
    name = "served"
    try:
        summary = _deploy(capsys, "--model", "m", "--version", stable.split("/")[1],
                          "--strategy", "blue_green", "--window", "0", "--deployment", name,
                          "--replicas", "1")
        assert summary["deployment"] == name and summary["state"] == "promoted"
        assert summary["split"] == {stable: 1.0} and summary["rolled_back"] is False
        # Serve keeps the HTTP port it was first started with in this Ray session (an
        # earlier test's): the URL the job reports is where the app answers
        url = summary["url"]
        wait_ready(url)
        client = httpx.Client(base_url=url, timeout=30)
        res = client.post("/predict", json=row_body(), headers=auth("viewer"))
        assert res.status_code == 200 and res.headers["X-Model-Version"] == stable
        assert res.json()["version"] == stable and len(res.json()["predictions"]) == 1
        res = client.post("/predict", json={"instruments": ["S001", "S002"],
                                            "date": "2019-03-01"}, headers=auth("viewer"))
        assert res.status_code == 200 and res.json()["data_version"] == 3
        assert client.post("/predict", json=row_body()).status_code == 401
        assert client.get("/docs").status_code == 200

        # traffic flows while a canary that fails half its predictions is deployed
        codes, versions, stop = [], set(), threading.Event()

        def traffic():
            with httpx.Client(base_url=url, timeout=30) as c:
                i = 0
                while not stop.is_set():
                    r = c.post("/predict", json=row_body(i), headers=auth("viewer"))
                    codes.append(r.status_code)
                    if r.status_code == 200:
                        versions.add(r.headers["X-Model-Version"])
                    i += 1
        worker = threading.Thread(target=traffic, daemon=True)
        worker.start()
        try:
            summary = _deploy(capsys, "--model", "m", "--version", flaky.split("/")[1],
                              "--strategy", "canary", "--steps", "50,100", "--window", "5",
                              "--min-requests", "5", "--deployment", name)
        finally:
            stop.set()
            worker.join(30)
        assert summary["state"] == "rolled_back" and summary["rolled_back"] is True
        assert "error rate" in summary["reason"] and summary["split"] == {stable: 1.0}
        assert codes and set(codes) == {200}, f"{codes.count(200)}/{len(codes)} succeeded"
        assert flaky in versions, "the canary took live traffic before it was rolled back"
        status = _deploy(capsys, "--status", "--deployment", name)
        assert status["stable"] == stable and status["state"] == "rolled_back"
    finally:
        serve.delete(APP_NAME)
        try:
            ray_session.kill(ray_session.get_actor(actor_name(name), namespace=NAMESPACE))
        except ValueError:
            pass
        reset_settings()

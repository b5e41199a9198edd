"""Serving throughput and latency: bare FastAPI versus our Ray Serve app.

    python bench/serve.py [--seconds 10] [--connections 4] [--replicas 2] [--rounds 1]

One LightGBM row per request over HTTP/1.1 keep-alive, ``--connections``
concurrent connections from one asyncio client on loopback, for a bounded time
(``--seconds`` after a 1 s warm-up), in the same run:

  (a) a bare FastAPI + uvicorn app (one process) predicting with the same model;
  (b) our Serve app (``serving.deployment``) serving one version;
  (c) our Serve app during a live 90/10 canary (two versions, gates running).

Ray: a local Ray (``num_cpus=2``) started with the Serve variables of
``serving.ray_env`` unless they are set otherwise (HAProxy in front of the
replicas' direct ingress, throughput-optimized replicas, no per-request
HAProxy log parsing, 2 HAProxy threads);
``--replicas`` ingress replicas of ``serving.replica_num_cpus`` CPUs. The bare
app runs with ``OMP_NUM_THREADS=1``, as Ray runs fractional-CPU replicas.
Prints ratios to (a); target: (c) >= 50% of (a)'s requests/s, p99 <= 10 ms.
"""

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, report

TOKEN = "bench-viewer-token"
OPERATOR = "bench-operator-token"


# -- load generator ----------------------------------------------------------
def _request(port: int, body: bytes) -> bytes:
    return (f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


async def _connection(port: int, payload: bytes, stop_at: float, warm_until: float,
                      lat: list, versions: dict, errors: list) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while True:
            t0 = time.perf_counter()
            if t0 >= stop_at:
                return
            writer.write(payload)
            head = await reader.readuntil(b"\r\n\r\n")
            length, version, status = 0, None, int(head[9:12])
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"x-model-version":
                    version = value.strip().decode()
            await reader.readexactly(length)
            t1 = time.perf_counter()
            if t0 >= warm_until:
                lat.append(t1 - t0)
                if status != 200:
                    errors.append(status)
                versions[version] = versions.get(version, 0) + 1
    finally:
        writer.close()


def load(port: int, body: bytes, seconds: float, connections: int) -> dict:
    async def run():
        lat, versions, errors = [], {}, []
        start = time.perf_counter()
        warm_until, stop_at = start + 1.0, start + 1.0 + seconds
        await asyncio.gather(*[_connection(port, _request(port, body), stop_at, warm_until,
                                           lat, versions, errors) for _ in range(connections)])
        return lat, versions, errors
    lat, versions, errors = asyncio.run(run())
    lat.sort()
    q = lambda p: round(lat[min(len(lat) - 1, int(p * len(lat)))] * 1000, 2) if lat else None
    return {"req_s": round(len(lat) / seconds, 1), "p50_ms": q(0.50), "p99_ms": q(0.99),
            "errors": len(errors), "versions": versions}


def wait_http(port: int, path: str, timeout: float = 120.0) -> None:
    import httpx
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}{path}", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"http://127.0.0.1:{port}{path} not ready after {timeout}s")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- (a) the bare app --------------------------------------------------------
def bare_server(port: int, model_path: str) -> None:
    """uvicorn + FastAPI + the same model and request body, nothing else."""
    import pickle

    import numpy as np
    import uvicorn
    from fastapi import FastAPI
    from pydantic import BaseModel

    model = pickle.loads(Path(model_path).read_bytes())
    features = list(model.feature_names)
    app = FastAPI()

    class Body(BaseModel):
        rows: list[dict[str, float | None]]

    @app.post("/predict")
    async def predict(body: Body):
        x = np.array([[r[f] for f in features] for r in body.rows], dtype=np.float32)
        return {"predictions": model.predict_array(x).tolist()}

    @app.get("/healthz")
    async def healthz():
        return {"ok": True}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


# -- setup -------------------------------------------------------------------
def train_two_versions(home: Path) -> tuple[list[str], dict]:
    import pyarrow as pa

    from cluster.config import get_settings
    from cluster.events import EventBus
    from cluster.lake.features import FeaturesTable
    from cluster.training.engine import FeatureData, TrainingEngine, TrainRequest
    from tests.strategies import feature_frame
    settings = get_settings()
    frame = feature_frame()
    FeaturesTable(settings.lake_dir).append(pa.Table.from_pandas(frame, preserve_index=False),
                                            {"feature_set": "fs-test"})
    features = [f"f{i}" for i in range(8)]
    engine = TrainingEngine(settings, EventBus(None), persist_events=False)
    ids = []
    for seed in (0, 1):
        params = dict(num_boost_round=200, num_leaves=31, learning_rate=0.05, seed=seed,
                      early_stopping_rounds=50)
        result = engine.run(TrainRequest("lightgbm", params=params, feature_columns=features,
                                         registry_name="bench"), FeatureData(frame, 3, "fs-test"))
        assert result.state == "completed", result.error
        ids.append(f"bench/{result.version}")
    row = {f: float(v) for f, v in frame[features].iloc[100].items()}
    return ids, row


def start_ray(address: str | None, attempts: int = 3):
    import ray
    if address:     # a cluster started beforehand (its own env decides the Serve flags)
        ray.init(address=address, log_to_driver=False)
        return ray
    for attempt in range(attempts):
        try:
            ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                     runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
            return ray
        except Exception as exc:  # another Ray on the machine can hold the agent's port
            print(f"ray.init failed ({exc}); retrying", file=sys.stderr)
            time.sleep(10)
    raise RuntimeError("could not start a local Ray")


def wait_state(control, states: tuple[str, ...], timeout: float = 180.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = control.call_sync("status")
        if status["state"] in states:
            return status
        time.sleep(0.2)
    raise RuntimeError(f"deployment not in {states} after {timeout}s: {status['state']}")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--connections", type=int, default=4)
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--address", help="join this Ray cluster instead of starting a local one "
                                     "(start it with the Serve variables set)")
    p.add_argument("--bare-server", nargs=2, metavar=("PORT", "MODEL"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.bare_server:
        bare_server(int(args.bare_server[0]), args.bare_server[1])
        return
    home = Path(tempfile.mkdtemp(prefix="bench_serve_"))
    os.environ.update(MLOPS_HOME=str(home), MLOPS_API_TOKENS=f"viewer:{TOKEN},operator:{OPERATOR}",
                      RAY_USAGE_STATS_ENABLED="0")
    # The Serve variables the product starts Ray with (serving.ray_env: HAProxy ingress,
    # throughput-optimized replicas, replicas recording the HTTP metrics). Set any of
    # them to measure without it.
    from serving.ray_env import serve_env, with_serve_env
    with_serve_env(os.environ, 2)
    from cluster.config import get_settings
    from cluster.registry.store import ModelRegistry
    (v1, v2), row = train_two_versions(home)
    body = json.dumps({"rows": [row]}).encode()
    model_path = home / "bare_model.pkl"
    import pickle
    name, version = v1.split("/")
    model_path.write_bytes(pickle.dumps(ModelRegistry().load(name, version)))

    rows = {"a": [], "b": [], "c": []}
    ray = start_ray(args.address)
    from ray import serve

    from serving.clients import ActorControl, control_actor
    from serving.deployment import APP_NAME, build_app
    serve_port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": serve_port})
    serve.run(build_app(num_replicas=args.replicas), name=APP_NAME, route_prefix="/")
    control = ActorControl(control_actor())
    control.call_sync("deploy", v1, "blue_green", None, None, 0.0, {}, "bench", token=OPERATOR)
    wait_state(control, ("promoted",))
    wait_http(serve_port, "/readyz")
    try:
        for _ in range(args.rounds):
            bare_port = free_port()
            # OMP_NUM_THREADS=1 as Ray gives fractional-CPU replicas: LightGBM's default
            # OpenMP pool costs ~20x per one-row predict on a busy 2-core machine (measured).
            bare = subprocess.Popen([sys.executable, __file__, "--bare-server", str(bare_port),
                                     str(model_path)], cwd=ROOT / "bench",
                                    env=dict(os.environ, OMP_NUM_THREADS="1"))
            try:
                wait_http(bare_port, "/healthz")
                rows["a"].append(load(bare_port, body, args.seconds, args.connections))
            finally:
                bare.terminate()
                bare.wait(10)
            rows["b"].append(load(serve_port, body, args.seconds, args.connections))
            # A live canary: 10% to the new version, held far beyond the measurement.
            control.call_sync("deploy", v2, "canary", None, [10, 100], 3600.0,
                              {"min_requests": 10**9}, "bench", token=OPERATOR)
            wait_state(control, ("canary",))
            # every replica has picked the split up (each syncs every sync_interval_s)
            time.sleep(2 * get_settings().serving.sync_interval_s)
            rows["c"].append(load(serve_port, body, args.seconds, args.connections))
            control.call_sync("rollback", "bench", "bench round over", token=OPERATOR)
    finally:
        if args.address:        # leave a cluster we did not start as we found it
            serve.delete(APP_NAME)
            ray.kill(control.handle)
        else:
            serve.shutdown()
        ray.shutdown()

    def best(runs):  # the round with the highest throughput: other load on the machine only slows
        return max(runs, key=lambda r: r["req_s"])
    a, b, c = best(rows["a"]), best(rows["b"]), best(rows["c"])
    settings = get_settings()
    setup = (f"{args.connections} connections, {args.seconds:g}s per run, "
             f"{args.replicas} replicas x {settings.serving.replica_num_cpus} CPU, "
             + ", ".join(f"{k}={os.environ.get(k)}" for k in serve_env(2)))
    canary_share = c["versions"].get(v2, 0) / max(1, sum(c["versions"].values()))
    report(f"serve: one LightGBM row per request ({setup})", [
        {"what": "(a) bare FastAPI + uvicorn", **{k: a[k] for k in ("req_s", "p50_ms", "p99_ms",
                                                                    "errors")}},
        {"what": "(b) our Serve app, one version", **{k: b[k] for k in ("req_s", "p50_ms",
                                                                        "p99_ms", "errors")},
         "ratio_vs_a": round(b["req_s"] / a["req_s"], 3)},
        {"what": "(c) our Serve app, live 90/10 canary", **{k: c[k] for k in
                                                            ("req_s", "p50_ms", "p99_ms",
                                                             "errors")},
         "ratio_vs_a": round(c["req_s"] / a["req_s"], 3), "canary_share": round(canary_share, 3),
         "target": "ratio >= 0.5, p99 <= 10 ms"},
        {"what": "all rounds req/s", "a": [r["req_s"] for r in rows["a"]],
         "b": [r["req_s"] for r in rows["b"]], "c": [r["req_s"] for r in rows["c"]],
         "p99_c": [r["p99_ms"] for r in rows["c"]],
         "median_ratio_c": round(statistics.median(r["req_s"] for r in rows["c"])
                                 / statistics.median(r["req_s"] for r in rows["a"]), 3)},
    ])


if __name__ == "__main__":
    main()

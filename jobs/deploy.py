"""python -m jobs.deploy --model NAME --version V --strategy canary|blue_green|ab
                        [--weights INCUMBENT,NEW] [--steps 5,25,50,100]
                        [--window S] [--min-requests N] [--max-error-rate X] [--p99-ms MS]
                        [--max-ic-drop X] [--replicas N] [--no-wait]
python -m jobs.deploy --promote | --rollback | --status

Deploys a registered model version on Ray Serve behind the traffic policy and
runs its rollout (strategy ``shadow`` too): the version is integrity- and
feature-set-checked, loaded and health-checked on every replica, then given
traffic step by step; a failed gate rolls back to the last stable version.

Ray: joins RAY_ADDRESS (as under ``ray job submit``) or a running local cluster
(``ray start --head``); with neither it starts a local head (free ports, so it
can sit beside other clusters; Serve's high-throughput mode, the variables of
``serving.ray_env``, unless set) and
leaves it and Serve running (``ray stop`` ends them). The HTTP API listens on
``api.host:api.port`` (default 127.0.0.1:8000).

Deploy, promote and rollback need an operator token in ``MLOPS_TOKEN`` (one of
``MLOPS_API_TOKENS``): the control plane refuses calls without one and writes every
call, refused ones included, to the audit log.

Prints a JSON object last on stdout: deployment, split, state, rolled_back (and
model_id, strategy, stable, reason, url). ``canary`` and ``blue_green`` wait
until promoted or rolled back; ``ab`` and ``shadow`` until their split is live
(end them with ``--promote`` or ``--rollback``). Exit 0 even when the rollout
rolled back (the JSON says so); 1 when the deployment was refused.
"""
from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from cluster.config import get_settings
from cluster.errors import MlopsError
from jobs._cli import run

ROOT = Path(__file__).resolve().parents[1]
WAIT_STATES = {"canary": ("promoted", "rolled_back", "failed"),
               "blue_green": ("promoted", "rolled_back", "failed"),
               "ab": ("ab", "promoted", "rolled_back", "failed"),
               "shadow": ("shadow", "promoted", "rolled_back", "failed")}


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"{text!r} is not a comma-separated list of numbers") from None


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m jobs.deploy", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="registered model name")
    p.add_argument("--version", help="registered version")
    p.add_argument("--strategy", choices=["canary", "blue_green", "ab", "shadow"],
                   default="canary")
    p.add_argument("--weights", type=_floats, help="INCUMBENT,NEW (ab default 50,50)")
    p.add_argument("--steps", type=_floats, help="canary percentages (default 5,25,50,100)")
    p.add_argument("--window", type=float, default=30.0, help="seconds each step is held")
    p.add_argument("--min-requests", type=int, help="requests per step before judging (20)")
    p.add_argument("--max-error-rate", type=float, help="gate (default 0.01)")
    p.add_argument("--p99-ms", type=float, help="gate (default monitoring latency_ms)")
    p.add_argument("--max-ic-drop", type=float, help="gate (default 0.02)")
    p.add_argument("--replicas", type=int, help="ingress replicas (default serving.num_replicas)")
    p.add_argument("--deployment", default="predictor")
    p.add_argument("--address", help="Ray address (default RAY_ADDRESS, a running cluster, "
                                     "or a new local head)")
    p.add_argument("--num-cpus", type=int, help="CPUs of a newly started local head")
    p.add_argument("--timeout", type=float, help="seconds to wait for the rollout")
    p.add_argument("--no-wait", action="store_true", help="return once the rollout started")
    action = p.add_mutually_exclusive_group()
    action.add_argument("--promote", action="store_true", help="end the running rollout: "
                                                               "promote the new version")
    action.add_argument("--rollback", action="store_true", help="back to the last stable "
                                                                "version")
    action.add_argument("--status", action="store_true")
    args = p.parse_args(argv)
    if not (args.promote or args.rollback or args.status) and not (args.model and args.version):
        p.error("--model and --version are required to deploy")
    return args


# -- Ray -------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_local_head(num_cpus: int | None = None) -> None:
    """``ray start --head`` that outlives this process, on free ports (the defaults
    may belong to another Ray on the machine), with our settings in its env."""
    from serving.clients import mlops_env
    ray_bin = str(Path(sys.executable).with_name("ray"))
    from serving.ray_env import with_serve_env
    env = with_serve_env(dict(os.environ, **mlops_env()))     # Serve's fast mode
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    cmd = [ray_bin, "start", "--head", "--disable-usage-stats", "--include-dashboard=false",
           f"--port={_free_port()}", f"--dashboard-agent-listen-port={_free_port()}",
           f"--dashboard-agent-grpc-port={_free_port()}", f"--metrics-export-port={_free_port()}",
           f"--runtime-env-agent-port={_free_port()}", f"--ray-client-server-port={_free_port()}"]
    if num_cpus:
        cmd.append(f"--num-cpus={num_cpus}")
    print(f"starting a local Ray head: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise MlopsError(f"`ray start --head` failed: {done.stderr.strip()[-2000:]}")


def connect(address: str | None, num_cpus: int | None) -> str:
    """Join a cluster (or start one); returns how."""
    import ray
    if ray.is_initialized():
        return "already connected"
    kwargs = dict(log_to_driver=False)
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, **kwargs)
        return f"joined {address}"
    try:
        ray.init(address="auto", **kwargs)
        return "joined the running local cluster"
    except ConnectionError:
        start_local_head(num_cpus)
        ray.init(address="auto", **kwargs)
        return "started a local head (stop it with `ray stop`)"


def ensure_serve(deployment: str, replicas: int | None) -> str:
    """Serve and our app running (started here when absent); returns the URL."""
    from ray import serve
    from serving.deployment import APP_NAME, build_app
    api = get_settings().api
    serve.start(http_options={"host": api.host, "port": api.port})
    apps = serve.status().applications
    app = apps.get(APP_NAME)
    if app is None or str(getattr(app.status, "value", app.status)) != "RUNNING" or replicas:
        serve.run(build_app(deployment, num_replicas=replicas), name=APP_NAME, route_prefix="/")
    try:    # Serve keeps the HTTP options it was first started with: report those
        from ray.serve.context import _get_global_client
        http = _get_global_client().http_config
        host, port = http.host, http.port
    except Exception:
        host, port = api.host, api.port
    if (host, int(port)) != (api.host, int(api.port)):
        print(f"serve: already running on {host}:{port}, not the configured "
              f"api.host:api.port {api.host}:{api.port} (Serve keeps the HTTP options it "
              "was first started with)", file=sys.stderr, flush=True)
    return f"http://{host}:{port}"


def _running_replicas() -> int:
    """Serve's RUNNING replicas of our model server (0 when Serve cannot say)."""
    from ray import serve
    from serving.deployment import APP_NAME
    try:
        server = serve.status().applications[APP_NAME].deployments["ModelServer"]
        return int(server.replica_states.get("RUNNING", 0))
    except Exception:
        return 0


def _until_replicas_apply(control, status: dict, deadline: float) -> dict:
    """Once the rollout has ended, wait (bounded) until every running replica serves the
    final revision: a replica still on an older one answers from the old split, or 503
    when it had none, for up to one sync interval; the job returns when they agree."""
    limit = min(deadline, time.monotonic() + 60.0)
    while True:
        want = max(1, _running_replicas())
        if status.get("replicas_current", want) >= want:
            return status
        if time.monotonic() > limit:
            print(f"  {status.get('replicas_current')}/{want} replicas on revision "
                  f"{status.get('revision')} so far; the others follow at their next sync",
                  file=sys.stderr, flush=True)
            return status
        time.sleep(0.2)
        status = control.call_sync("status")


# -- the job ---------------------------------------------------------------
def summary(status: dict, url: str | None = None) -> dict:
    rollout = status.get("rollout") or {}
    return {"deployment": status["deployment"], "split": status["split"],
            "state": status["state"], "rolled_back": status["rolled_back"],
            "model_id": rollout.get("candidate"), "strategy": rollout.get("strategy"),
            "stable": status["stable"], "reason": rollout.get("reason", ""),
            "shadow": status.get("shadow", []), "url": url}


def main(argv=None):
    args = parse_args(argv)
    from serving.clients import CLIENT_TOKEN, ActorControl, control_actor
    how = connect(args.address, args.num_cpus)
    print(f"ray: {how}", file=sys.stderr, flush=True)
    url = ensure_serve(args.deployment, args.replicas)
    control = ActorControl(control_actor(args.deployment), args.deployment)
    who = f"cli:{os.environ.get('USER', 'unknown')}"
    if args.status:
        return summary(control.call_sync("status"), url)
    # the control plane checks the operator token and writes the audit record
    token = os.environ.get(CLIENT_TOKEN)
    if args.promote or args.rollback:
        method = "promote" if args.promote else "rollback"
        return summary(control.call_sync(method, who, f"{method} from jobs.deploy",
                                         token=token), url)
    gates = {k: v for k, v in {"min_requests": args.min_requests,
                               "max_error_rate": args.max_error_rate, "p99_ms": args.p99_ms,
                               "max_ic_drop": args.max_ic_drop}.items() if v is not None}
    model_id = f"{args.model}/{args.version}"
    status = control.call_sync("deploy", model_id, args.strategy, args.weights, args.steps,
                               args.window, gates, who, token=token)
    print(f"{args.strategy} rollout of {model_id} started", file=sys.stderr, flush=True)
    if args.no_wait:
        return summary(status, url)
    steps = len(args.steps or (5, 25, 50, 100))
    timeout = args.timeout or 120 + steps * max(60.0, 10 * args.window) + 60
    deadline, last = time.monotonic() + timeout, None
    while True:
        status = control.call_sync("status")
        if status["state"] != last:
            print(f"  {status['state']}: split {status['split']}", file=sys.stderr, flush=True)
            last = status["state"]
        rollout = status.get("rollout") or {}
        if rollout.get("candidate") == model_id and status["state"] in WAIT_STATES[args.strategy]:
            return summary(_until_replicas_apply(control, status, deadline), url)
        if time.monotonic() > deadline:
            print(f"still {status['state']} after {timeout:g}s; the rollout goes on in the "
                  "cluster (see --status)", file=sys.stderr)
            return summary(status, url)
        time.sleep(0.5)


if __name__ == "__main__":
    sys.exit(run(main))

"""A private multi-node Ray cluster on this machine, for tests that need a real head.

A head (with the dashboard, for ``ray job submit`` and the state API) and worker
nodes, each its own blocking ``ray start`` process in its own process group, with
every port free-picked (the test session's own Ray holds the defaults), a
``--resources`` label per node and ``RAY_AUTH_MODE=disabled``. Nodes are stopped
by killing their own process trees: ``ray stop`` would kill every Ray on the
machine, the test session's included.

    cluster = PrivateCluster.start(workers={"worker": 1})
    cluster.submit(home, "jobs.ingest", "--source", "synthetic")
    cluster.kill_node("worker")          # a node lost, as a fault test needs
    cluster.stop()
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))
PORT_FLAGS = ("dashboard-agent-listen-port", "dashboard-agent-grpc-port", "metrics-export-port",
              "runtime-env-agent-port", "node-manager-port", "object-manager-port")


# `ray job submit` packs the working dir as .gitignore says, except that numba's caches
# of the compiled feature kernels (__pycache__/*.nbi, *.nbc; ~1 MB) travel with it: their
# index is keyed by the source file's sha256, so they stay valid in the unpacked copy on
# every node and the job's workers load the kernels instead of compiling them again
# (~30 s a node on a quiet 2-core machine, ~90 s at load 15). *.pyc stays out.
SUBMIT_ENV = {"RAY_RUNTIME_ENV_IGNORE_GITIGNORE": "1"}


def package_excludes() -> list[str]:
    lines = (ROOT / ".gitignore").read_text().splitlines()
    return [ln.strip() for ln in lines
            if ln.strip() and not ln.startswith("#") and ln.strip() != "__pycache__/"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tree(pid: int) -> list:
    import psutil
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


class NodeCrashed(RuntimeError):
    """A node's raylet died during start-up (retried)."""


@dataclass
class Node:
    label: str
    proc: subprocess.Popen
    temp: str
    log: object
    node_id: str | None = None
    pids: set[int] = field(default_factory=set)

    def crashed(self) -> str | None:
        """Why this node's raylet died while ``ray start --block`` lives on, if it did.
        On a loaded machine the raylet aborts when its dashboard agent takes longer
        than Ray's fixed 15 s to report its ports ("Check failed" in raylet.err), and
        ``ray start`` notices only minutes later: the caller retries at once instead."""
        for err in Path(self.temp).glob("session_*/logs/raylet.err"):
            with contextlib.suppress(OSError):
                text = err.read_text(errors="replace")
                if "Check failed" in text:
                    return text[:600]
        return None

    def running(self, title: str) -> bool:
        """Whether a process of this node (its raylet's workers) has ``title`` in its
        command line (Ray sets a worker's title to the task it runs)."""
        import psutil
        for p in _tree(self.proc.pid):
            with contextlib.suppress(psutil.Error):
                if title in " ".join(p.cmdline()):
                    return True
        return False

    def remember_tree(self) -> None:
        """Note every process of this node (raylet, agents, workers started so far)."""
        self.pids.update(p.pid for p in _tree(self.proc.pid))

    def kill(self) -> None:
        """SIGKILL the node's process tree: the node is lost, as when a machine dies."""
        import psutil
        self.remember_tree()
        for pid in self.pids:
            with contextlib.suppress(psutil.Error):
                psutil.Process(pid).kill()
        for p in _tree(self.proc.pid):
            with contextlib.suppress(psutil.Error):
                p.kill()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=30)


class PrivateCluster:
    def __init__(self, temp: str, env: dict, gcs: str, dashboard: str):
        self.temp, self.env, self.gcs, self.dashboard = temp, env, gcs, dashboard
        self.nodes: dict[str, Node] = {}

    # -- starting --------------------------------------------------------------
    @classmethod
    def start(cls, head_cpus: int = 1, workers: dict[str, int] | None = None,
              env: dict | None = None, node_temp_dirs: bool = True) -> "PrivateCluster":
        """A head labelled ``head`` and one worker per ``workers`` entry (label: CPUs).

        ``node_temp_dirs``: each node its own ``--temp-dir``, as separate machines
        have. Nodes sharing one temp dir share the runtime_env cache too, so one
        node's cleanup deletes a job's working dir that a driver on another still
        runs in (the ``FileNotFoundError`` from ``os.getcwd()`` a user reported)."""
        temp = tempfile.mkdtemp(prefix="rayc", dir="/tmp")  # short: Ray's socket paths are long
        # The entrypoint's "python" must be this environment's, as in an activated venv.
        path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
        # Without token auth: once any local ray.init() wrote ~/.ray/auth_token,
        # `ray start` would turn it on and our clients be refused.
        full_env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", PATH=path,
                        RAY_AUTH_MODE="disabled", **(env or {}))
        # a loaded machine: give a new raylet longer than Ray's 30 s to register
        full_env.setdefault("RAY_raylet_start_wait_time_s", "120")
        full_env.pop("RAY_ADDRESS", None)
        gcs_port, dash_port = free_port(), free_port()
        self = cls(temp, full_env, f"127.0.0.1:{gcs_port}", f"http://127.0.0.1:{dash_port}")
        try:
            for attempt in range(3):    # a loaded machine can miss the raylet's 30 s window
                head = self._spawn("head", head_cpus, [
                    "--head", f"--port={gcs_port}", f"--dashboard-port={dash_port}",
                    "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                    f"--ray-client-server-port={free_port()}"], node_temp_dirs)
                try:
                    self._wait_for_dashboard()
                    break
                except RuntimeError as exc:
                    if (head.proc.poll() is None and not isinstance(exc, NodeCrashed)) \
                            or attempt == 2:
                        raise
                    head.kill()
                    head.log.close()
                    del self.nodes["head"]
            for label, cpus in (workers or {}).items():
                self.add_worker(label, cpus, node_temp_dirs)
        except BaseException:
            self.stop()
            raise
        return self

    def add_worker(self, label: str, cpus: int = 1, own_temp: bool = True,
                   tries: int = 3) -> Node:
        """Start a worker node and wait until it registered. On a loaded machine a
        raylet can miss Ray's fixed 30 s registration window: that start is retried."""
        for attempt in range(tries):
            node = self._spawn(label, cpus, [f"--address={self.gcs}"], own_temp)
            try:
                self.wait_for_nodes()
                return node
            except RuntimeError as exc:
                if (node.proc.poll() is None and not isinstance(exc, NodeCrashed)) \
                        or attempt == tries - 1:
                    raise
                node.kill()
                node.log.close()
                del self.nodes[label]
        raise AssertionError("unreachable")

    def _spawn(self, label: str, cpus: int, args: list[str], own_temp: bool) -> Node:
        temp = os.path.join(self.temp, label if own_temp else "shared")
        if own_temp:        # a retried start: not the crashed attempt's logs
            shutil.rmtree(temp, ignore_errors=True)
        os.makedirs(temp, exist_ok=True)
        log = open(Path(self.temp) / f"{label}.log", "wb")
        resources = json.dumps({label: 1})
        proc = subprocess.Popen(
            [RAY, "start", "--block", "--disable-usage-stats", f"--num-cpus={cpus}",
             f"--resources={resources}", f"--temp-dir={temp}",
             *(f"--{flag}={free_port()}" for flag in PORT_FLAGS), *args],
            stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
        node = self.nodes[label] = Node(label, proc, temp, log)
        return node

    def _wait_for_dashboard(self, seconds: float = 180) -> None:
        deadline = time.time() + seconds
        head = self.nodes["head"]
        while time.time() < deadline:
            if head.proc.poll() is not None:
                raise RuntimeError(f"ray start --head exited with {head.proc.returncode}: "
                                   f"{self.log_tail('head')}")
            if head.crashed():
                raise NodeCrashed(f"the head's raylet died: {head.crashed()}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"{self.dashboard}/api/version", timeout=5) as r:
                    if r.status == 200:
                        self.wait_for_nodes()
                        return
            time.sleep(1)
        raise RuntimeError(f"the dashboard at {self.dashboard} did not come up in {seconds:.0f} s")

    def wait_for_nodes(self, seconds: float = 120) -> None:
        """Until every started node is alive in the state API; records node ids."""
        from ray.util.state import list_nodes
        deadline = time.time() + seconds
        while True:
            with contextlib.suppress(Exception):
                alive = [n for n in list_nodes(address=self.dashboard, raise_on_missing_output=False)
                         if n.state == "ALIVE"]
                for node in self.nodes.values():
                    for n in alive:
                        if (n.resources_total or {}).get(node.label):
                            node.node_id = n.node_id
            for node in self.nodes.values():
                if node.proc.poll() is not None and node.node_id is None:
                    raise RuntimeError(f"ray start of {node.label} exited: "
                                       f"{self.log_tail(node.label)}")
                if node.node_id is None and node.crashed():
                    raise NodeCrashed(f"the raylet of {node.label} died: {node.crashed()}")
            wanted = [n for n in self.nodes.values() if n.proc.poll() is None]
            if all(n.node_id for n in wanted):
                for n in wanted:
                    n.remember_tree()
                return
            if time.time() > deadline:
                raise RuntimeError(f"nodes {[n.label for n in self.nodes.values()]} did not "
                                   f"all register within {seconds:.0f} s")
            time.sleep(1)

    def log_tail(self, label: str, chars: int = 2000) -> str:
        with contextlib.suppress(OSError):
            return (Path(self.temp) / f"{label}.log").read_text(errors="replace")[-chars:]
        return ""

    # -- using -----------------------------------------------------------------
    def node_label(self, node_id: str) -> str | None:
        return next((n.label for n in self.nodes.values() if n.node_id == node_id), None)

    def submit_command(self, home: Path, *job: str, env_vars: dict | None = None,
                       no_wait: bool = False) -> list[str]:
        runtime_env = {"env_vars": {**({"MLOPS_HOME": str(home)} if home else {}),
                                    **(env_vars or {})},
                       "excludes": package_excludes()}
        return [RAY, "job", "submit", "--address", self.dashboard, "--working-dir", str(ROOT),
                "--runtime-env-json", json.dumps(runtime_env),
                *(["--no-wait"] if no_wait else []), "--", "python", "-m", *job]

    def submit(self, home: Path | None, *job: str, env_vars: dict | None = None,
               timeout: float = 600, check: bool = True) -> dict | subprocess.CompletedProcess:
        """``ray job submit --working-dir <repo> -- python -m <job>``; its JSON summary
        (``check=False``: the finished process, for a test of a failure)."""
        cmd = self.submit_command(home, *job, env_vars=env_vars)
        for _ in range(30):  # the head's job agent registers a little after the dashboard
            proc = subprocess.run(cmd, capture_output=True, text=True, env=SUBMIT_ENV | self.env,
                                  timeout=timeout)
            if "No available agent" not in proc.stdout + proc.stderr:
                break
            time.sleep(2)
        if not check:
            return proc
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-3000:]
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        return json.loads(lines[-1])

    def _rest(self, path: str, body: dict | None = None) -> dict:
        """Ray's Jobs REST API on the head's dashboard."""
        request = urllib.request.Request(
            f"{self.dashboard}{path}", data=None if body is None else json.dumps(body).encode(),
            headers={"Content-Type": "application/json"}, method="GET" if body is None else "POST")
        with urllib.request.urlopen(request, timeout=60) as reply:
            return json.loads(reply.read() or b"{}")

    def hold_cpus(self, label: str, cpus: float = 1.0, wait_s: float = 300) -> str:
        """Keep ``cpus`` CPUs of node ``label`` busy, as other work on a shared cluster
        would: a job whose entrypoint only sleeps, placed there and holding them through
        Ray's entrypoint resources (its supervisor actor has them while it runs).
        Returns the job's id, for ``release``."""
        job = self._rest("/api/jobs/", {"entrypoint": "sleep 3600", "entrypoint_num_cpus": cpus,
                                        "entrypoint_resources": {label: 1}})["submission_id"]
        deadline = time.monotonic() + wait_s
        while (status := self._rest(f"/api/jobs/{job}")["status"]) != "RUNNING":
            if status in ("FAILED", "STOPPED", "SUCCEEDED") or time.monotonic() > deadline:
                raise RuntimeError(f"the job holding {cpus} CPU of {label} is {status}")
            time.sleep(0.2)
        return job

    def release(self, job: str) -> None:
        self._rest(f"/api/jobs/{job}/stop", {})

    def kill_node(self, label: str) -> None:
        self.nodes[label].kill()

    # -- stopping --------------------------------------------------------------
    def stop(self) -> None:
        """Kill this cluster's processes only, workers first, then remove its temp dir."""
        import psutil
        for label in sorted(self.nodes, key=lambda lb: lb == "head"):
            node = self.nodes[label]
            with contextlib.suppress(ProcessLookupError):
                os.killpg(node.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.proc.wait(timeout=15)
            node.kill()
            node.log.close()
        # anything left that names our temp dir (every Ray process of ours does)
        for p in psutil.process_iter(["pid", "cmdline"]):
            with contextlib.suppress(psutil.Error):
                if p.pid != os.getpid() and self.temp in " ".join(p.info["cmdline"] or []):
                    p.kill()
        shutil.rmtree(self.temp, ignore_errors=True)

"""What the browser tests and ``bench/console.py`` share: Debian's chromium (installed
with apt-get when running as root), the console app after a small synthetic run,
served by uvicorn on loopback in this process, and pages opened signed in.

The app is the API's own ``create_app`` on an in-process control plane (the same
routes the Serve ingress runs); the data is what ``jobs.pipeline`` writes.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOKENS = {"viewer": "console-viewer-token", "operator": "console-operator-token",
          "admin": "console-admin-token"}
CHROMIUM = ("chromium", "chromium-browser")
# Small market, fast model: enough days for train/valid/test segments and a chart.
PIPELINE_ARGS = ["--stocks", "12", "--days", "300", "--local",
                 "--set", "num_boost_round=40", "--set", "num_leaves=15"]
SCREENSHOTS = Path(os.environ.get("MLOPS_CONSOLE_SCREENSHOTS",
                                  ROOT / "test-artifacts" / "console"))


def find_chromium(install: bool = True) -> tuple[str | None, str]:
    """(path, "") or (None, why not). Installs Debian's ``chromium`` with apt-get when
    running as root and it is missing (Playwright's own download is not reachable)."""
    found = next(filter(None, map(shutil.which, CHROMIUM)), None)
    if found:
        return found, ""
    if not install or os.geteuid() != 0 or not shutil.which("apt-get"):
        return None, ("chromium is not installed and this is not root with apt-get "
                      "(run: apt-get install -y chromium)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "chromium"]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200)
    if res.returncode != 0:     # a fresh image may lack the package lists
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=600)
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200)
    found = next(filter(None, map(shutil.which, CHROMIUM)), None)
    if found:
        return found, ""
    return None, f"apt-get install chromium failed: {(res.stderr or res.stdout)[-300:]}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ConsoleServer:
    """``create_app`` on an in-process control plane, served by uvicorn in a thread."""

    def __init__(self, settings, deployment: str = "console"):
        import uvicorn

        from serving.app import create_app
        from serving.clients import LocalControl
        from serving.control import ControlPlane
        from serving.runtime import ServingRuntime
        self.plane = ControlPlane(deployment, settings=settings)
        self.runtime = ServingRuntime(LocalControl(self.plane), settings=settings,
                                      deployment=deployment, sync_interval_s=0.05)
        self.app = create_app(self.runtime)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port,
                                                    log_level="warning", ws="websockets-sansio"))
        self._thread = threading.Thread(target=self.server.run, name="console-server",
                                        daemon=True)

    def __enter__(self) -> "ConsoleServer":
        self._thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the console server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        rollout = self.plane.rollout
        if rollout is not None and not rollout.done:
            self.plane.rollback("test", "test over", token=TOKENS["operator"])
        self.server.should_exit = True
        self._thread.join(30)

    def deploy(self, model_id: str, strategy: str = "blue_green", **kw) -> dict:
        kw.setdefault("window_s", 0.2)
        kw.setdefault("gates", {"min_requests": 0})
        return self.plane.deploy(model_id, strategy, actor="console-test",
                                token=TOKENS["operator"], **kw)

    def wait_state(self, states, timeout: float = 60.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.plane.status()
            if status["state"] in states:
                return status
            time.sleep(0.05)
        raise AssertionError(f"deployment still {self.plane.status()['state']}, wanted {states}")


def cancel_jobs(settings) -> list[str]:
    """Cancel every job of this home's queue still waiting or active (its Ray job is
    stopped): a test that failed half-way leaves no training run holding a CPU of the
    session's shared private cluster. Returns the ids cancelled."""
    from cluster.resources import ACTIVE, WAITING, JobQueue
    queue = JobQueue.for_settings(settings)
    jobs = queue.list(WAITING + ACTIVE, limit=10_000)
    for job in jobs:
        queue.cancel(job.id, "test over")
    return [j.id for j in jobs]


def auth(role: str) -> dict:
    return {"Authorization": f"Bearer {TOKENS[role]}"}


@dataclass
class Tab:
    """A page in its own browser context, with what the page logged."""
    page: object
    context: object
    base: str
    errors: list = field(default_factory=list)
    requests: list = field(default_factory=list)

    def open(self, path: str, ready: bool = True, timeout_ms: float = 30_000):
        self.page.goto(self.base + path)
        if ready:
            self.wait_ready(timeout_ms)
        return self.page

    def wait_ready(self, timeout_ms: float = 30_000) -> str:
        self.page.wait_for_function("document.body && document.body.dataset.ready",
                                    timeout=timeout_ms)
        state = self.page.evaluate("document.body.dataset.ready")
        assert state == "true", f"{self.page.url} rendered with an error: {self.errors}"
        return state

    def close(self) -> None:
        self.context.close()


def open_tab(browser, base: str, role: str | None = "viewer") -> Tab:
    """A fresh context (its own session storage), signed in as ``role`` the way the
    login page signs in (token and role in sessionStorage), or signed out."""
    import json
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    if role is not None:
        state = json.dumps({"token": TOKENS[role], "role": role})
        context.add_init_script(
            f"sessionStorage.setItem('mlops.console.session', {json.dumps(state)});")
    page = context.new_page()
    tab = Tab(page, context, base)
    page.on("console", lambda m: m.type == "error" and tab.errors.append(
        f"console: {m.text} @ {m.location.get('url', '')}"))
    page.on("pageerror", lambda e: tab.errors.append(f"pageerror: {e}"))
    page.on("request", lambda r: tab.requests.append(r))
    return tab


@contextlib.contextmanager
def chromium_browser(executable: str):
    from playwright.sync_api import sync_playwright
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, headless=True,
                                     args=["--disable-gpu", "--disable-dev-shm-usage"])
        try:
            yield browser
        finally:
            browser.close()


def run_pipeline(extra: list[str] | None = None) -> dict:
    """The main job on a small synthetic market, in this process (MLOPS_HOME set)."""
    from jobs.pipeline import main
    return main(PIPELINE_ARGS + list(extra or []))


@dataclass
class Demo:
    """What the console shows after ``build_demo``: ids the tests check against."""
    summary: dict
    incumbent: str                  # model id in production
    candidate: str                  # the A/B test's other arm
    ab_days: list[str]
    instruments: list[str]


def build_demo(server: "ConsoleServer", pipeline_args: list[str] | None = None,
               ab_days: int = 30) -> Demo:
    """The main job with its monitoring loop (``--monitor --regime-shift-at 0.7``: batch
    scores, realised IC, drift and alerts), a second version trained on the same
    segments, the first deployed, an A/B test of the two served on ``ab_days`` past
    days (six clients a day, each asking for the whole cross-section), the monitor run
    again over what was served and a second data
    version (a re-ingest with more days). Everything through the jobs' and the API's
    own code; nothing written by hand."""
    import httpx

    from cluster.lake.features import FeaturesTable
    from cluster.lake.ingest import ingest
    from cluster.training.engine import TrainingEngine, TrainRequest
    from jobs.pipeline import model_params, monitor_segments, parse_args
    args = list(pipeline_args if pipeline_args is not None else PIPELINE_ARGS)
    from jobs.pipeline import main as pipeline
    summary = pipeline(args + ["--monitor", "--regime-shift-at", "0.7"])
    settings = server.runtime.settings
    train = summary["train"]
    incumbent = f"{train['registry_name']}/{train['version']}"
    parsed = parse_args(args)
    params = model_params(parsed) | {"seed": 1, "feature_fraction": 0.6}
    second = TrainingEngine(settings).run(TrainRequest(parsed.model, params=params,
                                                       segments=monitor_segments(settings)))
    assert second.state == "completed", second.error
    candidate = f"{second.registry_name}/{second.version}"

    server.deploy(incumbent)
    server.wait_state(("promoted",))
    # The experiment is judged by its own statistics (the A/B page), not stopped early
    # by the rollout gates' IC or latency checks on a busy test machine.
    server.deploy(candidate, "ab", weights=[0.5, 0.5],
                  gates={"min_requests": 0, "max_ic_drop": 10.0, "p99_ms": 60_000.0})
    _wait_split(server, candidate)
    dates = sorted(set(FeaturesTable(settings.lake_dir).read(columns=["KMID"])["date"]))
    days = [str(d.date()) for d in dates[-ab_days - 3:-3]]     # labels known for these
    instruments = sorted(FeaturesTable(settings.lake_dir).read(columns=["KMID"])["instrument"]
                         .unique())
    # A day's whole cross-section per request, for six clients (sticky keys) a day: both
    # arms then serve most days' cross-sections, as the A/B statistics need.
    with httpx.Client(base_url=server.url, headers=auth("viewer"), timeout=30) as client:
        for day in days:
            for j in range(6):
                res = client.post("/predict", json={"instruments": instruments, "date": day,
                                                    "key": f"client-{j}-{day}"})
                assert res.status_code == 200, res.text
    server.runtime.sink.flush()
    # the monitor again: the served days get their realised IC and latency
    from cluster.events import get_bus
    from cluster.monitoring.monitor import Monitor
    Monitor(settings, bus=get_bus(settings.lake_dir)).run()
    ingest("synthetic", stocks=parsed.stocks, days=parsed.days + 5, seed=parsed.seed,
           regime_shift_at=0.7)
    return Demo(summary, incumbent, candidate, days, list(instruments))


def _wait_split(server: "ConsoleServer", candidate: str, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = server.plane.status()
        if status["split"].get(candidate, 0) > 0:
            return status
        time.sleep(0.05)
    raise AssertionError(f"{candidate} never got traffic: {server.plane.status()}")


def tokens_env() -> str:
    return ",".join(f"{role}:{token}" for role, token in TOKENS.items())

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


def tokens_env() -> str:
    return ",".join(f"{role}:{token}" for role, token in TOKENS.items())

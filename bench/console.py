"""Console pages in a real browser: time to first complete render and bytes transferred.

    python bench/console.py [--home DIR] [--repeat 5] [--stocks 60 --days 750]

Without ``--home`` it builds, in a temporary ``MLOPS_HOME``, what the browser tests
show (``tests.console_support.build_demo``) at the README's scale: the main job
(``jobs.pipeline --monitor --regime-shift-at 0.7``, 60 stocks x 750 days), a second
version, the first deployed and an A/B test of the two served on 30 days, a second
data version. With ``--home`` it uses the data a ``python3 dev.py pipeline --monitor``
left there and deploys the newest version. The app is the API's ``create_app`` on an
in-process control plane, served by uvicorn on loopback; the browser is Debian's
chromium through Playwright, headless.

Per page, in the same run:
  cold: a fresh browser context (empty cache) opening the page: ms from navigation
        start to the page's "console-ready" mark (all its API answers drawn), and
        the bytes it transferred (HTML, scripts, Plotly.js, API answers);
  warm: the median of ``--repeat`` visits in one context (the way a user moves
        between pages: versioned assets come from the cache) and its bytes;
  api:  the slowest API answer the page waited for (resource timing): the part of
        the render that is the API's, not the page's.
Baseline, same run: ``shell``, the login page: the console's template, stylesheet and
one module, no API call and no Plotly.js. Target: warm render <= 1000 ms per page.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

from _common import ROOT, report

TARGET_MS = 1000.0

READY = ("() => new Promise(r => { const done = () => r(document.body.dataset.ready); "
         "if (document.body && document.body.dataset.ready) return done(); "
         "new MutationObserver((m, o) => { if (document.body.dataset.ready) "
         "{ o.disconnect(); done(); } }).observe(document.body, {attributes: true}); })")
MEASURE = """() => {
  const nav = performance.getEntriesByType("navigation")[0];
  const mark = performance.getEntriesByName("console-ready")[0];
  const res = performance.getEntriesByType("resource");
  const api = res.filter(e => new URL(e.name).pathname.startsWith("/api/"));
  const bytes = nav.transferSize + res.reduce((s, e) => s + e.transferSize, 0);
  return {ms: mark ? mark.startTime : null, bytes,
          api_ms: api.length ? Math.max(...api.map(e => e.responseEnd - e.startTime)) : 0,
          api_calls: api.length};
}"""


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--home", type=Path, help="an MLOPS_HOME a pipeline run already filled")
    p.add_argument("--repeat", type=int, default=5, help="warm visits per page")
    p.add_argument("--stocks", type=int, default=60)
    p.add_argument("--days", type=int, default=750)
    return p.parse_args(argv)


def visit(tab, path: str) -> dict:
    tab.page.goto(tab.base + path)
    state = tab.page.evaluate(READY)
    if state != "true":
        raise SystemExit(f"{path} rendered with an error: {tab.errors}")
    return tab.page.evaluate(MEASURE)


def main(argv=None) -> None:
    args = parse_args(argv)
    sys.path.insert(0, str(ROOT))
    tmp = None
    if args.home is None:
        tmp = tempfile.TemporaryDirectory(prefix="bench-console-")
        args.home = Path(tmp.name)
    os.environ["MLOPS_HOME"] = str(args.home.resolve())
    os.environ.pop("MLOPS_CONFIG", None)
    from tests.console_support import (ConsoleServer, build_demo, chromium_browser,
                                       find_chromium, open_tab, tokens_env)
    os.environ["MLOPS_API_TOKENS"] = tokens_env()
    os.environ["MLOPS_QUEUE__DASHBOARD_ADDRESS"] = "http://127.0.0.1:9"   # no jobs here
    os.environ["MLOPS_QUEUE__RUN_IN_API"] = "false"
    from cluster.config import get_settings, reset_settings
    from cluster.registry.store import ModelRegistry
    from serving.console import MENU
    reset_settings()
    settings = get_settings()
    chromium, why = find_chromium()
    if chromium is None:
        raise SystemExit(why)
    rows = []
    with ConsoleServer(settings) as server, chromium_browser(chromium) as browser:
        if tmp is not None:
            print(f"building the demo ({args.stocks} stocks x {args.days} days)", file=sys.stderr)
            build_demo(server, ["--stocks", str(args.stocks), "--days", str(args.days),
                                "--local"])
        else:
            server.deploy(_newest_model(ModelRegistry.for_settings(settings)))
            server.wait_state(("promoted",))
        pages = [("shell", "/login")] + [(p.key, p.path) for p in MENU]
        warm_tab = open_tab(browser, server.url, "viewer")
        for key, path in pages:     # first visit of each page fills the cache
            visit(warm_tab, path)
        for key, path in pages:
            cold_tab = open_tab(browser, server.url, "viewer")
            cold = visit(cold_tab, path)
            cold_tab.close()
            warm = [visit(warm_tab, path) for _ in range(args.repeat)]
            ms = statistics.median(w["ms"] for w in warm)
            rows.append({"page": key, "cold_ms": round(cold["ms"], 1),
                         "cold_kb": round(cold["bytes"] / 1024, 1),
                         "warm_ms": round(ms, 1),
                         "warm_kb": round(statistics.median(w["bytes"] for w in warm) / 1024, 1),
                         "api_ms": round(statistics.median(w["api_ms"] for w in warm), 1),
                         "api_calls": warm[0]["api_calls"],
                         "vs_target": round(ms / TARGET_MS, 3)})
        if warm_tab.errors:
            raise SystemExit(f"console errors: {warm_tab.errors}")
        warm_tab.close()
    base = rows[0]["warm_ms"]
    for r in rows:
        r["vs_shell"] = round(r["warm_ms"] / base, 2) if base else None
    report("console pages: first complete render (ms) and bytes transferred", rows)
    if tmp is not None:
        tmp.cleanup()


def _newest_model(registry) -> str:
    found = registry.search()
    if not found:
        raise SystemExit("no registered model in this MLOPS_HOME: run the main job first")
    return max(found, key=lambda i: int(i.version)).model_id


if __name__ == "__main__":
    main()

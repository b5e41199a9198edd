"""python -m jobs.monitor [--model NAME] [--since D] [--follow]
python -m jobs.monitor --served-on D [--instrument X]
python -m jobs.monitor --experiments | --experiment ROLLOUT_ID

Joins served and batch predictions to the realised label once its horizon has
passed: per version and day IC, RankIC, hit rate, top-k long-short, rolling 20/60
days, IC decay against the test RankIC, drift per feature, alerts (table, events,
webhook, actions). Incremental: only days not evaluated yet. ``--follow`` runs
again on every ``data_synced`` event. Prints a JSON summary last on stdout.

Alert actions (``mlops.monitoring.actions``: rule -> rollback | retrain):
``rollback`` asks the deployment's control plane (the Ray actor of ``serving``)
to roll back; ``retrain`` submits ``python -m jobs.train`` (or ``jobs.tune``,
``monitoring.retrain_job``) for the version's model type, as a child process whose
log goes under ``$MLOPS_HOME/runs``.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from cluster.config import get_settings
from cluster.events import get_bus
from cluster.monitoring.alerts import AlertActions, Transition
from cluster.monitoring.monitor import Monitor
from jobs._cli import run

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m jobs.monitor", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="registered model name (default: every model)")
    p.add_argument("--since", help="re-read predictions from this day (YYYY-MM-DD)")
    p.add_argument("--served-on", metavar="D", help="what served on day D, with lineage")
    p.add_argument("--instrument", help="with --served-on: one instrument")
    p.add_argument("--experiments", action="store_true", help="list A/B experiments")
    p.add_argument("--experiment", metavar="ROLLOUT_ID", help="A/B analysis of one experiment")
    p.add_argument("--follow", action="store_true", help="run again on every data_synced")
    p.add_argument("--poll", type=float, default=5.0, help="--follow: seconds between looks")
    p.add_argument("--max-runs", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--deployment", default="predictor", help="for the rollback action")
    p.add_argument("--no-resources", action="store_true", help="skip the resource rules")
    return p.parse_args(argv)


class JobActions(AlertActions):
    """The alert actions wired to serving's control plane and to job submission."""

    def __init__(self, settings, deployment: str = "predictor", control=None,
                 submit: Callable[[list[str], Path, dict], str] | None = None, registry=None,
                 token: str | None = None):
        """``control``: the rollout controller to call (a ``serving.control.ControlPlane``
        in process); default: the deployment's control-plane actor on the Ray cluster.
        ``token``: the operator token the control plane checks and audits (default
        ``MLOPS_TOKEN``, as for jobs.deploy)."""
        self.settings = settings
        self.token = token if token is not None else os.environ.get("MLOPS_TOKEN")
        self.deployment = deployment
        self.control = control
        self._submit = submit or submit_process
        self._registry = registry

    def rollback(self, t: Transition) -> str:
        reason = f"alert {t.reading.rule} on {t.reading.subject}: {t.reading.message}"
        origin = f"jobs.monitor: alert {t.alert_id}"
        if self.control is not None:
            status = self.control.rollback("monitor", reason, token=self.token, origin=origin)
        else:
            status = self._control_rollback(reason, origin)
        if isinstance(status, dict):
            return f"rollback: state {status.get('state')}, stable {status.get('stable')}"
        return str(status)

    def _control_rollback(self, reason: str, origin: str):
        import ray
        from serving.clients import ActorControl, control_actor
        if not ray.is_initialized():
            try:
                ray.init(address=os.environ.get("RAY_ADDRESS", "auto"), namespace="mlops",
                         log_to_driver=False)
            except Exception as exc:
                return f"no Ray cluster to reach the control plane: {exc}"
        try:
            control = ActorControl(control_actor(self.deployment, create=False))
        except ValueError:
            return f"no deployment {self.deployment!r} is running"
        return control.call_sync("rollback", "monitor", reason, token=self.token, origin=origin)

    def retrain(self, t: Transition) -> str:
        from cluster.registry.store import ModelRegistry
        registry = self._registry or ModelRegistry.for_settings(self.settings)
        info = registry.get(t.reading.model, t.reading.version)
        model_type = info.tags.get("model_type")
        if not model_type:
            return f"{t.reading.subject} records no model type; nothing submitted"
        job = self.settings.monitoring.retrain_job
        argv = [sys.executable, "-m", f"jobs.{job}", "--model", model_type]
        if job == "train":
            argv += ["--name", t.reading.model]     # the retrained version joins its model
        log = self.settings.home / "runs" / f"retrain-{t.alert_id}.log"
        env = {"MLOPS_HOME": str(Path(self.settings.home).resolve())}
        return self._submit(argv, log, env)


def submit_process(argv: list[str], log: Path, env: dict | None = None) -> str:
    """Start the job as a detached child process (it outlives this one)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, cwd=str(ROOT), stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True,
                                env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})
    return f"submitted {' '.join(argv[1:])} (pid {proc.pid}, log {log})"


def follow(monitor: Monitor, args, bus) -> dict:
    """Run once now, then again after every data_synced event."""
    after = bus.last_offset()        # before the first run: a sync during it is not missed
    summary = monitor.run(args.model, args.since)
    runs = 1
    while args.max_runs is None or runs < args.max_runs:
        events = bus.read(after, ["data_synced"])
        if events:
            after = events[-1][0]
            summary = monitor.run(args.model)
            runs += 1
            print(f"data_synced at offset {after}: {summary['days_evaluated']} day(s) "
                  f"evaluated, {len(summary['alerts'])} alert transition(s)", file=sys.stderr,
                  flush=True)
        else:
            time.sleep(args.poll)
    return summary


def main(argv=None):
    args = parse_args(argv)
    settings = get_settings()
    if args.instrument and not args.served_on:
        raise ValueError("--instrument goes with --served-on D")
    if args.served_on:
        from cluster.monitoring.served import served_on
        from cluster.registry.store import ModelRegistry
        return served_on(settings.lake_dir, args.served_on, args.instrument,
                         ModelRegistry.for_settings(settings))
    if args.experiments:
        from cluster.monitoring.abtest import experiments
        return {"experiments": experiments(settings.lake_dir)}
    if args.experiment:
        from cluster.monitoring.abtest import experiment_analysis
        return experiment_analysis(settings.lake_dir, args.experiment)
    bus = get_bus(settings.lake_dir)
    monitor = Monitor(settings, bus=bus, actions=JobActions(settings, args.deployment),
                      resources=not args.no_resources)
    if args.follow:
        return follow(monitor, args, bus)
    return monitor.run(args.model, args.since)


if __name__ == "__main__":
    sys.exit(run(main))

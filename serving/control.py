"""The control plane of one deployment: what every replica should serve, and rollouts.

It holds the desired state (the versions to keep loaded, the traffic policy,
the stable version and the warm standby) under a revision number. Replicas call
``sync`` every ``serving.sync_interval_s`` (1 s): they send the revision they have
applied, which versions they hold (or why one failed to load) and their
statistics since the last call, and get the desired state back when it moved on.
A rollout first asks replicas to load the new version at weight 0 and waits until
every live replica reports it loaded and healthy; only then does traffic reach it.

Plain Python (threads, no Ray): in process it is called directly, on a cluster
it runs as one named, detached Ray actor (``serving.actor``). The desired state
is saved under ``$MLOPS_HOME/serving/<deployment>.json`` so a restarted control
plane serves the last stable version again.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path

from cluster.config import Settings, get_settings
from cluster.errors import MlopsError
from cluster.events import DeploymentChanged, get_bus
from serving.gates import GateReport, Gates, evaluate
from serving.policy import TrafficPolicy
from serving.rollout import DEFAULT_STEPS, TERMINAL, Rollout, RolloutAborted, RolloutSpec, staging_moves
from serving.stats import StatsBook, VersionStats
from serving.versions import split_model_id

log = logging.getLogger(__name__)

DEFAULT_DEPLOYMENT = "predictor"
HISTORY_LIMIT = 200


class DeploymentConflict(MlopsError):
    """The request does not fit the deployment's current state (e.g. a rollout is running)."""


class ControlPlane:
    def __init__(self, deployment: str = DEFAULT_DEPLOYMENT, settings: Settings | None = None,
                 registry=None, bus=None, replica_ttl_s: float = 5.0):
        self.deployment = deployment
        self.settings = settings or get_settings()
        self._registry = registry
        self._bus = bus
        self.replica_ttl_s = replica_ttl_s
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self.revision = 0
        self.versions: list[str] = []
        self.policy: TrafficPolicy | None = None
        self.stable: str | None = None
        self.standby: str | None = None
        self.history: list[dict] = []
        self.replicas: dict[str, dict] = {}
        self.step_stats = StatsBook()
        self.rollout_stats = StatsBook()
        self.rollout: Rollout | None = None
        self.last_rollout: dict | None = None
        self._reserved = False          # a deploy call is between its checks and its start
        self.state_path = Path(self.settings.home) / "serving" / f"{deployment}.json"
        self._restore()

    # -- collaborators (lazy: MLflow and the lake cost time to open) -------
    @property
    def registry(self):
        if self._registry is None:
            from cluster.registry.store import ModelRegistry
            self._registry = ModelRegistry.for_settings(self.settings)
        return self._registry

    @property
    def bus(self):
        if self._bus is None:
            self._bus = get_bus(self.settings.lake_dir)
        return self._bus

    # -- replicas ----------------------------------------------------------
    def desired(self) -> dict:
        with self._lock:
            rollout = self.rollout.status if self.rollout is not None else self.last_rollout
            return {"deployment": self.deployment, "revision": self.revision,
                    "versions": list(self.versions), "stable": self.stable,
                    "policy": self.policy.to_dict() if self.policy else None,
                    # replicas record it with every prediction (A/B analysis, "served on")
                    "rollout": (rollout or {}).get("id")}

    def sync(self, replica_id: str, revision: int, loaded: dict[str, str],
             stats: dict | None = None) -> dict | None:
        """A replica's heartbeat; returns the desired state when the replica is behind."""
        with self._changed:
            self.replicas[replica_id] = {"seen": time.monotonic(), "revision": int(revision),
                                         "loaded": dict(loaded)}
            if stats and self.rollout is not None and not self.rollout.done:
                # Only a running rollout is judged; between rollouts the predictions
                # table is the record (and memory stays bounded).
                self.step_stats.merge(stats)
                self.rollout_stats.merge(stats)
            self._changed.notify_all()
            return self.desired() if revision != self.revision else None

    def live_replicas(self) -> dict[str, dict]:
        now = time.monotonic()
        with self._lock:
            for rid in [r for r, v in self.replicas.items()
                        if now - v["seen"] > 4 * self.replica_ttl_s]:
                del self.replicas[rid]
            return {r: v for r, v in self.replicas.items() if now - v["seen"] <= self.replica_ttl_s}

    # -- operator API ------------------------------------------------------
    def deploy(self, model_id: str, strategy: str = "canary", weights=None, steps=None,
               window_s: float = 30.0, gates: dict | None = None, actor: str = "unknown",
               load_timeout_s: float = 120.0, step_timeout_s: float | None = None,
               salt: str | None = None) -> dict:
        """Check the version (registry, integrity, feature set), move it to staging and
        start its rollout in the background; returns the deployment's status."""
        spec = RolloutSpec(model_id, strategy, tuple(weights) if weights else None,
                           tuple(steps) if steps else DEFAULT_STEPS, window_s,
                           Gates.from_dict(gates), load_timeout_s, step_timeout_s, salt or "",
                           actor)
        name, version = split_model_id(model_id)
        with self._lock:
            if self._reserved or (self.rollout is not None and not self.rollout.done):
                current = self.rollout.spec if self.rollout is not None else None
                raise DeploymentConflict(
                    "a rollout is starting or running"
                    + (f" ({current.strategy} of {current.candidate})" if current else "")
                    + "; promote or roll it back first")
            if model_id == self.stable:
                raise DeploymentConflict(f"{model_id} is already the stable version")
            self._reserved = True     # checks and registry moves below run unlocked
        try:
            info = self.registry.get(name, version)
            moves = staging_moves(info.state)
            self.check_servable(model_id, info)
            for state in moves:
                self.registry.transition(name, version, state, actor,
                                         f"deploy ({strategy}): integrity and feature set "
                                         "checked")
            with self._lock:
                self.step_stats, self.rollout_stats = StatsBook(), StatsBook()
                self.rollout = Rollout(self, spec, self.stable)
                self._note("deploy", f"{strategy} rollout of {model_id} started by {actor}",
                           candidate=model_id)
                self.rollout.thread.start()
        finally:
            with self._lock:
                self._reserved = False
        return self.status()

    def check_servable(self, model_id: str, info=None) -> None:
        """Refuse a version whose artefacts changed or whose feature set is not served."""
        from cluster.registry.store import CompatibilityError
        from serving.inputs import serving_feature_set
        name, version = split_model_id(model_id)
        info = info or self.registry.get(name, version)
        expected = serving_feature_set(self.settings)
        if info.feature_set != expected:
            raise CompatibilityError(f"{model_id} was trained on feature set "
                                     f"{info.feature_set!r}; this deployment serves "
                                     f"{expected!r}; retrain it on the current features")
        self.registry.verify(name, version)

    def rollback(self, actor: str = "unknown", reason: str = "") -> dict:
        """Stop the running rollout (back to stable), or switch back to the standby."""
        reason = reason or f"rolled back by {actor}"
        with self._lock:
            running = self.rollout is not None and not self.rollout.done
            if running:
                self.rollout.request("rollback", actor, reason)
        if running:
            self._wait_rollout()
            return self.status()
        with self._lock:
            if self.standby is None or self.stable is None:
                raise DeploymentConflict("nothing to roll back to: no previous stable version "
                                         "is kept warm")
            current, previous = self.stable, self.standby
        self._switch_back(current, previous, reason, actor)
        return self.status()

    def promote(self, actor: str = "unknown", reason: str = "") -> dict:
        with self._lock:
            if self.rollout is None or self.rollout.done:
                raise DeploymentConflict("no rollout is running")
            self.rollout.request("promote", actor, reason)
        self._wait_rollout()
        return self.status()

    def _wait_rollout(self, timeout: float = 60.0) -> None:
        rollout = self.rollout
        if rollout is not None:
            rollout.thread.join(timeout)

    def status(self) -> dict:
        with self._lock:
            running = self.rollout is not None and not self.rollout.done
            current = self.rollout.status if running else self.last_rollout
            state = current["state"] if current else ("serving" if self.stable else "empty")
            return {"deployment": self.deployment, "revision": self.revision,
                    "state": state, "rolled_back": state == "rolled_back",
                    "split": self.policy.shares() if self.policy else {},
                    "shadow": list(self.policy.shadow) if self.policy else [],
                    "stable": self.stable, "standby": self.standby,
                    "versions": list(self.versions),
                    "rollout": dict(current) if current else None,
                    "replicas": len(self.live_replicas()),
                    "stats": self.rollout_stats.summary(),
                    "history": list(self.history[-50:])}

    # -- called by the rollout thread --------------------------------------
    def stage(self, candidate: str, rollout: Rollout) -> None:
        """Have every live replica load and health-check ``candidate`` at weight 0."""
        with self._lock:
            versions = list(dict.fromkeys([v for v in (self.stable, candidate, self.standby) if v]))
            revision = self._set(versions, self.policy)
        self._event("staging", f"loading {candidate} on every replica")
        deadline = time.monotonic() + rollout.spec.load_timeout_s
        with self._changed:
            while True:
                rollout._check_command()
                live = self.live_replicas()
                errors = {r: v["loaded"].get(candidate) for r, v in live.items()
                          if v["revision"] >= revision and v["loaded"].get(candidate) not in
                          (None, "ok")}
                if errors:
                    rid, err = next(iter(errors.items()))
                    raise RolloutAborted(f"{candidate} failed to load on replica {rid}: {err}")
                ready = [r for r, v in live.items()
                         if v["revision"] >= revision and v["loaded"].get(candidate) == "ok"]
                if live and len(ready) == len(live):
                    return
                if time.monotonic() > deadline:
                    raise RolloutAborted(f"{candidate} was not loaded by every replica within "
                                         f"{rollout.spec.load_timeout_s:g}s "
                                         f"({len(ready)}/{len(live)} ready)")
                self._changed.wait(0.1)

    def route(self, policy: TrafficPolicy, state: str, reason: str, timeout: float = 5.0) -> None:
        """Apply a split and wait (briefly) until every live replica routes with it, so a
        step's window and an experiment start when the traffic really follows them."""
        with self._changed:
            revision = self._set(self.versions, policy)
            deadline = time.monotonic() + timeout
            while any(v["revision"] < revision for v in self.live_replicas().values()):
                if time.monotonic() > deadline:
                    log.warning("not every replica applied revision %d within %ss", revision,
                                timeout)
                    break
                self._changed.wait(0.05)
        self._event(state, reason)

    def reset_step(self) -> None:
        with self._lock:
            self.step_stats = StatsBook()

    def gate_report(self, candidate: str, incumbent: str | None, gates: Gates) -> GateReport:
        with self._lock:
            step = self.step_stats.by_version
            whole = self.rollout_stats.by_version
            return evaluate(gates, step.get(candidate, VersionStats()), step.get(incumbent),
                            whole.get(candidate, VersionStats()), whole.get(incumbent))

    def promote_now(self, candidate: str, incumbent: str | None, reason: str, actor: str) -> None:
        with self._lock:
            self.stable, self.standby = candidate, incumbent
            versions = [v for v in (candidate, incumbent) if v]
            weights = {candidate: 1.0, **({incumbent: 0.0} if incumbent else {})}
            self._set(versions, TrafficPolicy(weights, salt=self.policy.salt if self.policy
                                              else "default"))
        self._move(candidate, "production", actor, reason)
        if incumbent:
            self._move(incumbent, "deprecated", actor, f"replaced by {candidate}")
        self._event("promoted", reason)

    def rollback_now(self, candidate: str, incumbent: str, reason: str) -> None:
        """Traffic back to the incumbent at once; the candidate is unloaded."""
        with self._lock:
            if self.standby == candidate:
                self.standby = None     # it just failed: not a version to switch back to
            versions = [v for v in (incumbent, self.standby) if v and v != candidate]
            weights = {incumbent: 1.0, **{v: 0.0 for v in versions if v != incumbent}}
            self._set(versions, TrafficPolicy(weights, salt="default"))
        self._move(candidate, "validated", "rollout", reason, only_from=("staging",))
        self._event("rolled_back", reason)

    def abandon(self, candidate: str, reason: str) -> None:
        """A first deployment failed before taking traffic: serve nothing, as before."""
        with self._lock:
            self._set([v for v in self.versions if v != candidate], self.policy)
        self._move(candidate, "validated", "rollout", reason, only_from=("staging",))
        self._event("failed", reason)

    def rollout_ended(self, rollout: Rollout, state: str, reason: str) -> None:
        with self._lock:        # status() never sees a finished rollout without its ending
            rollout.status.update(state=state, reason=reason, ended=time.time())
            self.last_rollout = dict(rollout.status)
            self._save()

    # -- internals ---------------------------------------------------------
    def _switch_back(self, current: str, previous: str, reason: str, actor: str) -> None:
        """Instant switch-back to the warm standby after a completed rollout."""
        with self._lock:
            self.stable, self.standby = previous, current
            self._set([previous, current], TrafficPolicy({previous: 1.0, current: 0.0}))
            self.last_rollout = {"state": "rolled_back", "candidate": current,
                                 "incumbent": previous, "reason": reason, "ended": time.time(),
                                 "strategy": "switch_back"}
            self._note("rolled_back", f"switched back from {current} to {previous}: {reason}",
                       candidate=current)
        self._move(current, "deprecated", actor, reason)
        self._move(previous, "production", actor, reason)
        self._event("rolled_back", reason)

    def _set(self, versions: list[str], policy: TrafficPolicy | None) -> int:
        with self._changed:
            self.versions = list(versions)
            self.revision += 1
            self.policy = (TrafficPolicy(policy.weights, policy.shadow, policy.salt,
                                         self.revision) if policy else None)
            self._save()
            self._changed.notify_all()
            return self.revision

    def _move(self, model_id: str, to_state: str, actor: str, reason: str,
              only_from: tuple[str, ...] | None = None) -> None:
        """A registry transition that must never break serving: failures are noted."""
        name, version = split_model_id(model_id)
        try:
            current = self.registry.state(name, version)
            if current == to_state or (only_from is not None and current not in only_from):
                return
            self.registry.transition(name, version, to_state, actor, reason)
        except Exception as exc:
            log.warning("registry move of %s to %s failed: %s", model_id, to_state, exc)
            self._note("registry_error", f"{model_id} -> {to_state}: {exc}", candidate=model_id)

    def _event(self, state: str, reason: str) -> None:
        with self._lock:
            split = self.policy.shares() if self.policy else {}
            self._note(state, reason, split=split)
        try:
            self.bus.publish(DeploymentChanged(deployment=self.deployment, split=split,
                                               state=state, reason=reason))
        except Exception as exc:  # the events table being down must not stop a rollback
            log.warning("publishing deployment_changed failed: %s", exc)

    def _note(self, what: str, detail: str, **extra) -> None:
        with self._lock:
            self.history.append({"time": time.time(), "revision": self.revision,
                                 "event": what, "detail": detail, **extra})
            del self.history[:-HISTORY_LIMIT]

    def _save(self) -> None:
        state = {"deployment": self.deployment, "stable": self.stable, "standby": self.standby,
                 "versions": self.versions, "revision": self.revision,
                 "policy": self.policy.to_dict() if self.policy else None,
                 "rollout": self.rollout.status if self.rollout else self.last_rollout,
                 "history": self.history[-HISTORY_LIMIT:]}
        try:
            self.state_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.state_path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(json.dumps(state, default=str))
            tmp.replace(self.state_path)
        except OSError as exc:
            log.warning("saving %s failed: %s", self.state_path, exc)

    def _restore(self) -> None:
        if not self.state_path.exists():
            return
        try:
            state = json.loads(self.state_path.read_text())
        except (OSError, ValueError) as exc:
            log.warning("cannot read %s (%s); starting empty", self.state_path, exc)
            return
        self.stable, self.standby = state.get("stable"), state.get("standby")
        self.history = list(state.get("history") or [])
        self.revision = int(state.get("revision") or 0)
        last = state.get("rollout")
        if last and last.get("state") not in TERMINAL:
            # The control plane died mid-rollout: serve the stable version only.
            last = dict(last, state="rolled_back", reason="control plane restarted mid-rollout")
            self._note("rolled_back", last["reason"], candidate=last.get("candidate"))
            cand = last.get("candidate")
            if cand and cand != self.stable:
                self._move(cand, "validated", "control", last["reason"], only_from=("staging",))
        self.last_rollout = last
        if self.stable:
            versions = [v for v in (self.stable, self.standby) if v]
            weights = {self.stable: 1.0, **({self.standby: 0.0} if self.standby else {})}
            self._set(versions, TrafficPolicy(weights))

"""The control plane of one deployment: the one interface to what replicas serve.

Three parts, each its own module, put together here:

- ``desired.DesiredStateStore``: the persisted desired state (versions, policy,
  stable, standby, the running rollout's spec and progress) under a revision;
- ``replicas.ReplicaRegistry``: heartbeats, live replicas, the statistics a step
  is judged on;
- ``rollout.Rollout``: the strategies and every registry move, run in a thread
  against this class through ``rollout.RolloutHost``.

The interface, for replicas: ``sync`` (a heartbeat sealed with the deployment's
key, ``serving.heartbeat``; returns the desired state when the replica is behind)
and ``desired``; for operators: ``deploy``, ``promote``,
``rollback``, ``transition`` (a lifecycle move) and ``status``. Every mutating
call goes through ``_authorised``: it needs an operator token (checked against the
API's token hashes) and writes the audit record -- ok, error or refused -- so a Ray
client holding the actor's handle is held to the same rule as an HTTP caller. The
gates' automatic promotions and rollbacks are audited too (``rollout._end``).

Plain Python (threads, no Ray): in process it is called directly; on a cluster it
runs as one named, detached Ray actor that Ray restarts when it dies
(``serving.clients``). At start it restores the desired state, resumes a rollout
that was running (its current step's window again, gates on), and reconciles the
registry with what is served, recording what it changed.
"""
from __future__ import annotations

import logging
import math
import threading
import time

from cluster.config import Settings, get_settings
from cluster.errors import MlopsError
from cluster.events import DeploymentChanged, get_bus
from serving.desired import DesiredState, DesiredStateStore
from serving.gates import GateReport, Gates, evaluate
from serving.heartbeat import BadHeartbeat, HeartbeatOpener, heartbeat_key
from serving.policy import TrafficPolicy
from serving.replicas import ReplicaRegistry
from serving.rollout import (DEFAULT_STEPS, Rollout, RolloutAborted, RolloutSpec,
                             reconcile_registry, registry_targets, switch_back)
from serving.stats import VersionStats
from serving.versions import split_model_id

log = logging.getLogger(__name__)

DEFAULT_DEPLOYMENT = "predictor"
RECONCILE_EVERY_S = 5.0


class DeploymentConflict(MlopsError):
    """The request does not fit the deployment's current state (e.g. a rollout is running)."""


class Unauthorized(MlopsError):
    """A control-plane call without a valid token (401)."""
    status = 401


class Forbidden(MlopsError):
    """A control-plane call whose token's role may not do it (403)."""
    status = 403


class ControlPlane:
    def __init__(self, deployment: str = DEFAULT_DEPLOYMENT, settings: Settings | None = None,
                 registry=None, bus=None, replica_ttl_s: float = 5.0):
        self.deployment = deployment
        self.settings = settings or get_settings()
        self._registry = registry
        self._bus = bus
        self._lock = threading.RLock()
        self.replicas = ReplicaRegistry(replica_ttl_s, self._lock)
        self.store = DesiredStateStore.for_deployment(self.settings.home, deployment)
        self.state: DesiredState = self.store.load(deployment)
        self.rollout: Rollout | None = None
        self._reserved = False          # a deploy call is between its checks and its start
        self._auth = self._audit = None
        self._registry_dirty = True
        self._last_reconcile = 0.0
        self._opener: HeartbeatOpener | None = None
        self._refused_beats, self._refused_logged_at = 0, -math.inf
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

    # views of the desired state (read by tests, status and the rollout)
    revision = property(lambda self: self.state.revision)
    versions = property(lambda self: list(self.state.versions))
    policy = property(lambda self: self.state.policy)
    stable = property(lambda self: self.state.stable)
    standby = property(lambda self: self.state.standby)
    last_rollout = property(lambda self: self.state.last_rollout)

    # -- replicas ----------------------------------------------------------
    def desired(self) -> dict:
        with self._lock:
            s = self.state
            rollout = self.rollout.status if self.rollout is not None else s.last_rollout
            return {"deployment": self.deployment, "revision": s.revision,
                    "versions": list(s.versions), "stable": s.stable,
                    "policy": s.policy.to_dict() if s.policy else None,
                    # replicas record it with every prediction (A/B analysis, "served on")
                    "rollout": (rollout or {}).get("id")}

    def sync(self, body: str, mac: str) -> dict | None:
        """A replica's heartbeat, sealed by ``serving.heartbeat`` (its JSON body and the
        HMAC of it under the deployment's key); returns the desired state when the
        replica is behind. An unsealed, stale or replayed heartbeat is refused
        (``Unauthorized``) before any of its numbers reach the gates."""
        try:
            beat = self._heartbeats().open(body, mac)
        except (BadHeartbeat, ValueError, KeyError, TypeError) as exc:
            self._refused_heartbeat(exc)
            raise Unauthorized(str(exc) if isinstance(exc, BadHeartbeat)
                               else f"heartbeat refused: malformed ({type(exc).__name__})") \
                from None
        judging = self.rollout is not None and not self.rollout.done
        self.replicas.heartbeat(beat["replica"], beat["revision"], beat["loaded"],
                                beat["stats"], judging)
        self._maybe_reconcile()
        return self.desired() if int(beat["revision"]) != self.state.revision else None

    def _heartbeats(self) -> HeartbeatOpener:
        if self._opener is None:
            self._opener = HeartbeatOpener(heartbeat_key(self.settings, self.deployment))
        return self._opener

    def _refused_heartbeat(self, exc: Exception) -> None:
        """Audit refused heartbeats, at most one record a minute (a flood of forged
        ones must not flood the audit log)."""
        now = time.monotonic()
        self._refused_beats += 1
        if now - self._refused_logged_at < 60.0:
            return
        self._refused_logged_at = now
        self._write_audit("anonymous", f"sync {self.deployment}:heartbeat", "refused: 401",
                          {"reason": str(exc)[:200], "refused_since_last_record":
                           self._refused_beats})
        self._refused_beats = 0

    def live_replicas(self) -> dict[str, dict]:
        return self.replicas.live()

    # -- operator API (every call authorised and audited) -------------------
    def deploy(self, model_id: str, strategy: str = "canary", weights=None, steps=None,
               window_s: float = 30.0, gates: dict | None = None, actor: str = "unknown",
               load_timeout_s: float = 120.0, step_timeout_s: float | None = None,
               salt: str | None = None, *, token: str | None = None,
               origin: str | None = None) -> dict:
        """Check the version (registry, integrity, feature set), move it to staging and
        start its rollout in the background; returns the deployment's status."""
        def work(who):
            spec = RolloutSpec(model_id, strategy, tuple(weights) if weights else None,
                               tuple(steps) if steps else DEFAULT_STEPS, window_s,
                               Gates.from_dict(gates), load_timeout_s, step_timeout_s,
                               salt or "", _actor(who, actor))
            return self._deploy(spec)
        return self._authorised("deploy", model_id, token, origin, work)

    def rollback(self, actor: str = "unknown", reason: str = "", *, token: str | None = None,
                 origin: str | None = None) -> dict:
        """Stop the running rollout (back to stable), or switch back to the standby."""
        return self._authorised("rollback", self.deployment, token, origin,
                                lambda who: self._rollback(_actor(who, actor), reason))

    def promote(self, actor: str = "unknown", reason: str = "", *, token: str | None = None,
                origin: str | None = None) -> dict:
        return self._authorised("promote", self.deployment, token, origin,
                                lambda who: self._promote(_actor(who, actor), reason))

    def transition(self, model_id: str, to_state: str, reason: str = "",
                   actor: str = "unknown", *, token: str | None = None,
                   origin: str | None = None) -> dict:
        """A lifecycle move of a registered version by an operator (audited). A version
        this deployment serves is moved by its rollouts only."""
        def work(who):
            with self._lock:
                served = {v for v in (self.state.stable, self.state.standby) if v}
                if self.rollout is not None and not self.rollout.done:
                    served.add(self.rollout.spec.candidate)
            if model_id in served:
                raise DeploymentConflict(f"{model_id} is served by deployment "
                                         f"{self.deployment!r}; deploy, promote or roll back "
                                         "instead of moving it by hand")
            name, version = split_model_id(model_id)
            t = self.registry.transition(name, version, to_state, _actor(who, actor), reason)
            return {"model_id": model_id, "state": t.to_state, "transition": t.to_dict()}
        return self._authorised("transition", model_id, token, origin, work)

    def status(self) -> dict:
        with self._lock:
            s = self.state
            running = self.rollout is not None and not self.rollout.done
            current = self.rollout.status if running else s.last_rollout
            live = self.replicas.live()
            state = current["state"] if current else ("serving" if s.stable else "empty")
            return {"deployment": self.deployment, "revision": s.revision,
                    "state": state, "rolled_back": state == "rolled_back",
                    "split": s.policy.shares() if s.policy else {},
                    "shadow": list(s.policy.shadow) if s.policy else [],
                    "stable": s.stable, "standby": s.standby,
                    "versions": list(s.versions),
                    "rollout": dict(current) if current else None,
                    "replicas": len(live),
                    # replicas serving this revision (the rest answer 503 until they sync)
                    "replicas_current": sum(1 for r in live.values()
                                            if int(r.get("revision", -1)) == s.revision),
                    "stats": self.replicas.rollout_stats.summary(),
                    "history": list(s.history[-50:])}

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

    # -- the operator calls' work ----------------------------------------------
    def _deploy(self, spec: RolloutSpec) -> dict:
        model_id = spec.candidate
        with self._lock:
            if self._reserved or (self.rollout is not None and not self.rollout.done):
                current = self.rollout.spec if self.rollout is not None else None
                raise DeploymentConflict(
                    "a rollout is starting or running"
                    + (f" ({current.strategy} of {current.candidate})" if current else "")
                    + "; promote or roll it back first")
            if model_id == self.state.stable:
                raise DeploymentConflict(f"{model_id} is already the stable version")
            self._reserved = True     # checks and registry moves below run unlocked
        try:
            name, version = split_model_id(model_id)
            info = self.registry.get(name, version)
            self.check_servable(model_id, info)
            Rollout.prepare(self.registry, model_id, spec.actor, spec.strategy)
            with self._lock:
                self.replicas.reset_rollout()
                self.rollout = Rollout(self, spec, self.state.stable)
                self.state.rollout = self.rollout.to_dict()
                self.state.note("deploy", f"{spec.strategy} rollout of {model_id} started by "
                                          f"{spec.actor}", candidate=model_id)
                self._save()
                self.rollout.thread.start()
        finally:
            with self._lock:
                self._reserved = False
        return self.status()

    def _rollback(self, actor: str, reason: str) -> dict:
        reason = reason or f"rolled back by {actor}"
        with self._lock:
            running = self.rollout is not None and not self.rollout.done
            if running:
                self.rollout.request("rollback", actor, reason)
        if running:
            self._wait_rollout()
            return self.status()
        with self._lock:
            if self.state.standby is None or self.state.stable is None:
                raise DeploymentConflict("nothing to roll back to: no previous stable version "
                                         "is kept warm")
            current, previous = self.state.stable, self.state.standby
            self.state.last_rollout = {"state": "rolled_back", "candidate": current,
                                       "incumbent": previous, "reason": reason,
                                       "ended": time.time(), "strategy": "switch_back"}
        switch_back(self, current, previous, reason, actor)
        return self.status()

    def _promote(self, actor: str, reason: str) -> dict:
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

    # -- authorisation and audit ------------------------------------------------
    def _authorised(self, action: str, target: str, token: str | None, origin: str | None,
                    work):
        """The one path of every mutating call: token -> principal (operator or above),
        the work, and its audit record whatever happened."""
        from serving.auth import ROLE_RANK, Authenticator
        if self._auth is None:
            self._auth = Authenticator.from_settings(self.settings)
        what = origin or f"{action} {self.deployment}:{target}"
        credential = token if token is None or token.lower().startswith("bearer ") \
            else f"Bearer {token}"
        who = self._auth.principal(credential)
        if who is None or ROLE_RANK[who.role] < ROLE_RANK["operator"]:
            error = (Unauthorized(f"{action} needs an operator token (the API's bearer token; "
                                  "jobs.deploy reads it from MLOPS_TOKEN)") if who is None
                     else Forbidden(f"role {who.role!r} may not {action}; it needs 'operator' "
                                    "or above"))
            self._write_audit(who.who if who else "anonymous", what,
                              f"refused: {error.status}", str(error))
            raise error
        try:
            result = work(who)
        except Exception as exc:
            from serving.errors import message, status_of
            self._write_audit(who.who, what, f"error: {status_of(exc)}", message(exc))
            raise
        detail = {k: result.get(k) for k in ("state", "split", "stable", "revision")} \
            if isinstance(result, dict) else None
        self._write_audit(who.who, what, "ok", detail)
        return result

    def _write_audit(self, who: str, action: str, result: str, detail=None) -> None:
        from serving.auth import AuditLog
        if self._audit is None:
            self._audit = AuditLog.from_settings(self.settings)
        method, _, target = action.partition(" ")
        try:
            self._audit.write(who, method, target, result, detail)
        except OSError as exc:
            log.warning("audit record of %s %s not written: %s", who, action, exc)

    # -- RolloutHost: what the rollout thread calls ----------------------------
    def audit(self, who: str, action: str, target: str, result: str, detail=None) -> None:
        self._write_audit(who, f"{action} {self.deployment}:{target}", result, detail)

    def stage(self, candidate: str, rollout: Rollout) -> None:
        """Have every live replica load and health-check ``candidate`` at weight 0."""
        with self._lock:
            s = self.state
            versions = list(dict.fromkeys([v for v in (s.stable, candidate, s.standby) if v]))
            revision = self._set(versions, s.policy)
        self._event("staging", f"loading {candidate} on every replica")
        deadline = time.monotonic() + rollout.spec.load_timeout_s
        with self._lock:
            while True:
                rollout._check_command()
                live = self.replicas.live()
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
                self.replicas.wait(0.1)

    def route(self, policy: TrafficPolicy, state: str, reason: str, timeout: float = 5.0) -> None:
        """Apply a split and wait (briefly) until every live replica routes with it, so a
        step's window and an experiment start when the traffic really follows them."""
        with self._lock:
            revision = self._set(self.state.versions, policy)
            deadline = time.monotonic() + timeout
            while any(v["revision"] < revision for v in self.replicas.live().values()):
                if time.monotonic() > deadline:
                    log.warning("not every replica applied revision %d within %ss", revision,
                                timeout)
                    break
                self.replicas.wait(0.05)
        self._event(state, reason)

    def settle(self, versions, policy, stable, standby, state, reason) -> None:
        with self._lock:
            self.state.stable, self.state.standby = stable, standby
            if policy is not None and self.state.policy is not None and state == "promoted":
                policy = TrafficPolicy(policy.weights, salt=self.state.policy.salt)
            self._set(list(versions), policy if versions else self.state.policy)
            self._registry_dirty = True
        self._event(state, reason)

    def reset_step(self) -> None:
        self.replicas.reset_step()

    def gate_report(self, candidate: str, incumbent: str | None, gates: Gates) -> GateReport:
        with self._lock:
            step = self.replicas.step_stats.by_version
            whole = self.replicas.rollout_stats.by_version
            return evaluate(gates, step.get(candidate, VersionStats()), step.get(incumbent),
                            whole.get(candidate, VersionStats()), whole.get(incumbent))

    def progress(self, rollout: Rollout) -> None:
        with self._lock:
            if rollout is self.rollout:
                self.state.rollout = rollout.to_dict()
                self._save()

    def ended(self, rollout: Rollout, state: str, reason: str) -> None:
        with self._lock:        # status() never sees a finished rollout without its ending
            rollout.status.update(state=state, reason=reason, ended=time.time())
            self.state.last_rollout = dict(rollout.status)
            if rollout is self.rollout:
                self.state.rollout = None
            self._save()

    def registry_failed(self, model_id: str, to_state: str, exc: Exception) -> None:
        log.warning("registry move of %s to %s failed: %s (reconciled later)", model_id,
                    to_state, exc)
        with self._lock:
            self._registry_dirty = True
            self.state.note("registry_error", f"{model_id} -> {to_state}: {exc}",
                            candidate=model_id)

    # -- start: restore, resume, reconcile ---------------------------------------
    def _restore(self) -> None:
        s = self.state
        if s.rollout is not None:
            spec = RolloutSpec.from_dict(s.rollout["spec"])
            status = s.rollout["status"]
            self.rollout = Rollout(self, spec, status.get("incumbent"), status=status)
            s.note("resumed", f"control plane restarted: {spec.strategy} rollout of "
                              f"{spec.candidate} resumes at step {status.get('step')} with its "
                              "gates", candidate=spec.candidate)
            self._save()
            self.rollout.thread.start()
        self.reconcile(force=True)

    def reconcile(self, force: bool = False) -> list[dict]:
        """Bring the registry in line with the served state (stable = production, ...);
        the changes are recorded in the history and the audit log."""
        with self._lock:
            if not (force or self._registry_dirty):
                return []
            s = self.state
            targets = registry_targets(s.stable, s.standby, s.rollout, s.last_rollout)
            self._registry_dirty = False
            self._last_reconcile = time.monotonic()
        if not targets:
            return []
        changes = reconcile_registry(self.registry, targets, f"control:{self.deployment}")
        done = [c for c in changes if c["done"]]
        with self._lock:
            if any(not c["done"] and "Unavailable" in c.get("why", "") for c in changes):
                self._registry_dirty = True         # the registry is down: try again later
            if changes:
                self.state.note("reconciled", "; ".join(
                    f"{c['model_id']} {c.get('from', '?')} -> {c['to']}"
                    + ("" if c["done"] else f" not done ({c['why']})") for c in changes),
                    changes=changes)
                self._save()
        for c in done:
            self.audit(f"control:{self.deployment}", "reconcile", c["model_id"], "ok", c)
        return changes

    def _maybe_reconcile(self) -> None:
        if self._registry_dirty and time.monotonic() - self._last_reconcile > RECONCILE_EVERY_S:
            threading.Thread(target=self.reconcile, name="reconcile", daemon=True).start()
            self._last_reconcile = time.monotonic()

    # -- internals ---------------------------------------------------------
    def _set(self, versions: list[str], policy: TrafficPolicy | None) -> int:
        with self._lock:
            s = self.state
            s.versions = list(versions)
            s.revision += 1
            s.policy = (TrafficPolicy(policy.weights, policy.shadow, policy.salt, s.revision)
                        if policy else None)
            if self.rollout is not None and not self.rollout.done:
                s.rollout = self.rollout.to_dict()
            self._save()
            self.replicas.notify()
            return s.revision

    def _save(self) -> None:
        self.store.save(self.state)

    def _event(self, state: str, reason: str) -> None:
        with self._lock:
            split = self.state.policy.shares() if self.state.policy else {}
            self.state.note(state, reason, split=split)
        try:
            self.bus.publish(DeploymentChanged(deployment=self.deployment, split=split,
                                               state=state, reason=reason))
        except Exception as exc:  # the events table being down must not stop a rollback
            log.warning("publishing deployment_changed failed: %s", exc)


def _actor(who, label: str) -> str:
    """The principal, with the caller's own label when it gave one (cli:USER, ...)."""
    return who.who if label in (None, "", "unknown") or label == who.who \
        else f"{label} ({who.who})"

"""Rollout strategies, run step by step against the control plane.

- ``blue_green``: stand the new version up beside the stable one, health-check it
  on every replica, switch all traffic at once, watch the gates for one window;
  the old version stays loaded (weight 0) for an instant switch-back.
- ``canary``: the same staging, then traffic steps (default 5 -> 25 -> 50 -> 100 %),
  each held for a window and judged by the gates before the next.
- ``ab``: a fixed sticky split (default 50/50, a fresh salt per experiment) until
  an operator promotes or rolls back; the gates still guard it.
- ``shadow``: the new version gets a copy of every request; its answers are
  recorded, never returned; gates judge them; ends like ``ab``.

A load or health-check failure, a failed gate, too little traffic to judge
within the step timeout, or an operator's rollback return all traffic to the
last stable version. Requests never fail because of a switch: the ingress holds
every version a policy can route to, and a request the new version fails is
answered by the stable one in process.

Registry states follow, and this module makes every such move: the new version
goes to ``staging`` when its rollout starts, ``production`` when promoted (the old
one ``deprecated`` in the same registry step), back to ``validated`` when rolled
back. Serving changes come first (traffic must be safe whatever the registry does);
a registry move that fails is left to ``reconcile_registry``, which the control
plane runs at start and until the registry matches the served state again.

A rollout talks to its control plane only through ``RolloutHost`` (below); the
control plane persists the rollout's spec and progress, so a restarted control
plane resumes it (the current step's window starts again, gates on) instead of
leaving traffic at a step nobody judges.
"""
from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Protocol

from cluster.errors import MlopsError
from serving.gates import FAIL, PASS, GateReport, Gates
from serving.policy import TrafficPolicy
from serving.versions import split_model_id

log = logging.getLogger(__name__)

STRATEGIES = ("canary", "blue_green", "ab", "shadow")
TERMINAL = ("promoted", "rolled_back", "failed")
DEFAULT_STEPS = (5.0, 25.0, 50.0, 100.0)
TICK_S = 0.1


class RolloutAborted(Exception):
    """Ends a rollout with a rollback; the message is the reason."""


@dataclass
class RolloutSpec:
    candidate: str
    strategy: str = "canary"
    weights: tuple[float, float] | None = None      # (incumbent, new)
    steps: tuple[float, ...] = DEFAULT_STEPS          # percent of traffic to the new one
    window_s: float = 30.0
    gates: Gates = field(default_factory=Gates)
    load_timeout_s: float = 120.0
    step_timeout_s: float | None = None               # default: max(60, 10 x window)
    salt: str = ""
    actor: str = "unknown"

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy {self.strategy!r} is not one of {STRATEGIES}")
        if self.window_s < 0 or not math.isfinite(self.window_s):
            raise ValueError(f"window_s must be >= 0, got {self.window_s}")
        if self.weights is not None:
            if self.strategy in ("blue_green", "shadow"):
                raise ValueError(f"weights do not apply to {self.strategy}: it switches all "
                                 "traffic (blue_green) or copies it (shadow)")
            w = tuple(float(x) for x in self.weights)
            if len(w) != 2 or min(w) < 0 or sum(w) <= 0:
                raise ValueError(f"weights must be INCUMBENT,NEW >= 0 with a positive sum, "
                                 f"got {self.weights}")
            self.weights = w
            if self.strategy == "canary" and tuple(self.steps) == DEFAULT_STEPS:
                self.steps = (100.0 * w[1] / sum(w), 100.0)
        steps = sorted({float(s) for s in self.steps})
        if not steps or steps[0] <= 0 or steps[-1] > 100:
            raise ValueError(f"steps must be percentages in (0, 100], got {list(self.steps)}")
        if steps[-1] < 100:
            steps.append(100.0)     # a canary ends with all traffic on the new version
        self.steps = tuple(steps)
        self.salt = self.salt or uuid.uuid4().hex[:12]
        if self.step_timeout_s is None:
            self.step_timeout_s = max(60.0, 10.0 * self.window_s)

    def to_dict(self) -> dict:
        return {"candidate": self.candidate, "strategy": self.strategy,
                "weights": list(self.weights) if self.weights else None,
                "steps": list(self.steps), "window_s": self.window_s,
                "gates": self.gates.to_dict(), "salt": self.salt, "actor": self.actor,
                "load_timeout_s": self.load_timeout_s, "step_timeout_s": self.step_timeout_s}

    @classmethod
    def from_dict(cls, d: dict) -> "RolloutSpec":
        return cls(d["candidate"], d["strategy"], tuple(d["weights"]) if d.get("weights")
                   else None, tuple(d["steps"]), float(d["window_s"]),
                   Gates.from_dict(d.get("gates")), float(d.get("load_timeout_s") or 120.0),
                   d.get("step_timeout_s"), d.get("salt") or "", d.get("actor") or "unknown")


class RolloutHost(Protocol):
    """What a rollout needs from its control plane (``serving.control`` implements it)."""
    registry: object

    def stage(self, candidate: str, rollout: "Rollout") -> None:
        """Load ``candidate`` at weight 0 on every live replica; raise RolloutAborted
        when one refuses it or they are not all ready in ``load_timeout_s``."""

    def route(self, policy: TrafficPolicy, state: str, reason: str) -> None:
        """Apply a split and wait briefly until every live replica routes with it."""

    def settle(self, versions: list[str], policy: TrafficPolicy | None, stable: str | None,
               standby: str | None, state: str, reason: str) -> None:
        """The serving state a rollout ends in (promotion, rollback, abandon)."""

    def reset_step(self) -> None: ...

    def gate_report(self, candidate: str, incumbent: str | None, gates: Gates) -> GateReport: ...

    def progress(self, rollout: "Rollout") -> None:
        """Persist the rollout's progress (resume point)."""

    def ended(self, rollout: "Rollout", state: str, reason: str) -> None: ...

    def audit(self, who: str, action: str, target: str, result: str, detail=None) -> None: ...

    def registry_failed(self, model_id: str, to_state: str, exc: Exception) -> None:
        """A registry move failed after the serving change: reconcile later."""


class Rollout:
    """One rollout, run in its own thread by the control plane (``host``)."""

    def __init__(self, host: RolloutHost, spec: RolloutSpec, incumbent: str | None,
                 status: dict | None = None):
        self.host = host
        self.spec = spec
        self.incumbent = incumbent
        self.command: tuple[str, str, str] | None = None      # (what, actor, reason)
        self._wake = threading.Event()
        self.resumed = status is not None
        self.status = dict(status) if status else {
            "id": uuid.uuid4().hex[:12], **spec.to_dict(), "incumbent": incumbent,
            "state": "staging", "step": None, "gates": None, "reason": "",
            "started": time.time(), "ended": None}
        if self.resumed:
            self.status["resumed"] = int(self.status.get("resumed") or 0) + 1
        self.thread = threading.Thread(target=self.run, name=f"rollout-{spec.candidate}",
                                       daemon=True)

    def to_dict(self) -> dict:
        return {"spec": self.spec.to_dict(), "status": dict(self.status)}

    @staticmethod
    def prepare(registry, model_id: str, actor: str, strategy: str) -> list[str]:
        """Move a checked version to ``staging`` (the registry half of starting a rollout);
        returns the moves made."""
        name, version = split_model_id(model_id)
        moves = staging_moves(registry.state(name, version))
        for state in moves:
            registry.transition(name, version, state, actor,
                                f"deploy ({strategy}): integrity and feature set checked")
        return moves

    @property
    def done(self) -> bool:
        return self.status["state"] in TERMINAL

    def request(self, what: str, actor: str, reason: str) -> None:
        """An operator's promote or rollback; the rollout thread acts on it."""
        self.command = (what, actor, reason)
        self._wake.set()

    # -- the run -----------------------------------------------------------
    def run(self) -> None:
        spec, cand = self.spec, self.spec.candidate
        try:
            self.host.stage(cand, self)
            if self.incumbent is None:          # first deployment: nothing to compare with
                self._route({cand: 1.0}, "promoting", "first version of this deployment")
                self._finish_promote("first deployment")
                return
            getattr(self, f"_{spec.strategy}")()
        except RolloutAborted as exc:
            self._finish_rollback(str(exc))
        except Exception as exc:  # a bug or a registry outage must still leave traffic safe
            log.exception("rollout of %s failed", cand)
            self._finish_rollback(f"rollout error: {type(exc).__name__}: {exc}")

    def _blue_green(self) -> None:
        cand, inc = self.spec.candidate, self.incumbent
        self._route({cand: 1.0, inc: 0.0}, "blue_green", "all traffic switched to the new version")
        self._hold(self.spec.window_s, step=100.0)
        self._finish_promote("blue-green window passed its gates")

    def _canary(self) -> None:
        cand, inc = self.spec.candidate, self.incumbent
        at = self.status.get("step") if self.resumed else None
        for pct in self.spec.steps:
            if at is not None and pct < float(at):
                continue                # passed before the control plane restarted
            weights = {inc: 100.0 - pct, cand: pct} if pct < 100 else {cand: 1.0, inc: 0.0}
            self._route(weights, "canary", f"canary step {pct:g}%")
            self._hold(self.spec.window_s, step=pct)
        self._finish_promote("every canary step passed its gates")

    def _ab(self) -> None:
        cand, inc = self.spec.candidate, self.incumbent
        w_inc, w_new = self.spec.weights or (50.0, 50.0)
        self._route({inc: w_inc, cand: w_new}, "ab", f"A/B split {w_inc:g}/{w_new:g}")
        self._hold(math.inf, step=100.0 * w_new / (w_inc + w_new), until_command=True)
        self._finish_promote(self._command_reason("A/B test ended by an operator"))

    def _shadow(self) -> None:
        cand, inc = self.spec.candidate, self.incumbent
        self._route({inc: 1.0}, "shadow", "new version shadows all traffic", shadow=(cand,))
        self._hold(math.inf, step=0.0, until_command=True)
        self._finish_promote(self._command_reason("shadow test ended by an operator"))

    # -- steps -------------------------------------------------------------
    def _route(self, weights: dict[str, float], state: str, reason: str,
               shadow: tuple[str, ...] = ()) -> None:
        self._check_command()
        policy = TrafficPolicy(weights, shadow=shadow, salt=self.spec.salt)
        self.host.route(policy, state, reason)
        self.status["state"] = state

    def _hold(self, seconds: float, step: float, until_command: bool = False) -> None:
        """Keep the split for ``seconds`` (or until an operator's command), judging the
        gates every tick; a failed gate aborts, too little traffic in time too."""
        spec, cand = self.spec, self.spec.candidate
        self.status["step"] = step
        self.host.reset_step()
        self.host.progress(self)       # the resume point: this step, gates from scratch
        started = time.monotonic()
        while True:
            if self._check_command():
                return                              # promote requested
            report = self.host.gate_report(cand, self.incumbent, spec.gates)
            self.status["gates"] = report.to_dict()
            if report.status == FAIL:
                raise RolloutAborted(f"gate failed at {step:g}%: {report.reason}")
            elapsed = time.monotonic() - started
            if not until_command:
                if seconds == 0 or (elapsed >= seconds and report.status == PASS):
                    return      # a zero window: switch without waiting for evidence
                if elapsed >= max(seconds, spec.step_timeout_s):
                    raise RolloutAborted(f"too little traffic to judge step {step:g}% within "
                                         f"{spec.step_timeout_s:g}s: {report.reason}")
            self._wake.wait(TICK_S)
            self._wake.clear()

    def _check_command(self) -> bool:
        """True when promotion was requested; raises when a rollback was."""
        if self.command is None:
            return False
        what, actor, reason = self.command
        if what == "rollback":
            raise RolloutAborted(reason or f"rolled back by {actor}")
        return True

    def _command_reason(self, default: str) -> str:
        if self.command is None:
            return default
        _, actor, reason = self.command
        return reason or f"promoted by {actor}"

    # -- endings: serving first, then the registry, then the record ---------
    def _decider(self) -> str:
        """Who ended it: the operator who asked, or the gates/rollout itself."""
        return self.command[1] if self.command is not None else f"rollout:{self.spec.actor}"

    def _finish_promote(self, reason: str) -> None:
        cand, inc, host = self.spec.candidate, self.incumbent, self.host
        versions = [v for v in (cand, inc) if v]
        host.settle(versions, TrafficPolicy({cand: 1.0, **({inc: 0.0} if inc else {})},
                                            salt=self.spec.salt), cand, inc, "promoted", reason)
        move(host, cand, "production", self.spec.actor, reason)   # deprecates inc with it
        self._end("promoted", reason)

    def _finish_rollback(self, reason: str) -> None:
        cand, inc, host = self.spec.candidate, self.incumbent, self.host
        if inc is None:     # a first deployment failed before taking traffic: serve nothing
            host.settle([], None, None, None, "failed", reason)
            move(host, cand, "validated", "rollout", reason, only_from=("staging",))
            self._end("failed", reason)
            return
        standby = getattr(host, "standby", None)
        standby = None if standby == cand else standby   # it just failed: no switch-back
        versions = [v for v in (inc, standby) if v and v != cand]
        host.settle(versions, TrafficPolicy({inc: 1.0, **{v: 0.0 for v in versions if v != inc}}),
                    inc, standby, "rolled_back", reason)
        move(host, cand, "validated", "rollout", reason, only_from=("staging",))
        self._end("rolled_back", reason)

    def _end(self, state: str, reason: str) -> None:
        # the audit record first: whoever sees the ending can find its record
        self.host.audit(self._decider(), "promote" if state == "promoted" else "rollback",
                        self.spec.candidate, "ok" if state == "promoted" else state,
                        {"reason": reason, "strategy": self.spec.strategy,
                         "automatic": self.command is None, "rollout": self.status["id"]})
        self.host.ended(self, state, reason)


def move(host: RolloutHost, model_id: str, to_state: str, actor: str, reason: str,
         only_from: tuple[str, ...] | None = None) -> bool:
    """One registry move after a serving change: it must never undo or block serving,
    so a failure is handed to the host (reconciled later), not raised."""
    name, version = split_model_id(model_id)
    try:
        current = host.registry.state(name, version)
        if current == to_state or (only_from is not None and current not in only_from):
            return True
        host.registry.transition(name, version, to_state, actor, reason,
                                 expected_state=current)
        return True
    except Exception as exc:
        host.registry_failed(model_id, to_state, exc)
        return False


def switch_back(host: RolloutHost, current: str, previous: str, reason: str,
                actor: str) -> None:
    """After a completed rollout: all traffic back to the warm standby at once."""
    host.settle([previous, current], TrafficPolicy({previous: 1.0, current: 0.0}), previous,
                current, "rolled_back", reason)
    move(host, previous, "production", actor, reason)          # deprecates current with it


def registry_targets(stable: str | None, standby: str | None, rollout: dict | None,
                     last_rollout: dict | None) -> dict[str, tuple[str, tuple[str, ...]]]:
    """The registry state each version of a serving state should be in, and the states
    it may be moved from to get there: stable = production, its standby deprecated,
    a running rollout's candidate staging, a rolled-back one validated."""
    out: dict[str, tuple[str, tuple[str, ...]]] = {}
    last = last_rollout or {}
    if last.get("state") in ("rolled_back", "failed") and last.get("candidate") \
            and last["candidate"] not in (stable, standby):
        out[last["candidate"]] = ("validated", ("staging",))
    if rollout is not None:
        out[rollout["spec"]["candidate"]] = ("staging", ("trained", "validated"))
    if standby:
        out[standby] = ("deprecated", ("production", "staging"))
    if stable:
        out[stable] = ("production", ("staging", "deprecated", "validated"))
    return out


def reconcile_registry(registry, targets: dict, actor: str) -> list[dict]:
    """Move every version whose registry state differs from its target (when the move is
    legal from where it is); returns what was changed, and what could not be."""
    changes = []
    for model_id, (target, movable_from) in targets.items():
        name, version = split_model_id(model_id)
        try:
            current = registry.state(name, version)
            if current == target:
                continue
            if current not in movable_from:
                changes.append({"model_id": model_id, "from": current, "to": target,
                                "done": False, "why": f"not moved from {current!r}"})
                continue
            path = ["staging", target] if (current, target) == ("validated", "production") \
                else [target]
            for state in path:
                registry.transition(name, version, state, actor,
                                    "reconciled with the served state at control-plane start")
            changes.append({"model_id": model_id, "from": current, "to": target, "done": True})
        except Exception as exc:
            changes.append({"model_id": model_id, "to": target, "done": False,
                            "why": f"{type(exc).__name__}: {exc}"})
    return changes


def staging_moves(state: str) -> list[str]:
    """Registry moves that bring a version of ``state`` to where a rollout can start."""
    moves = {"trained": ["validated", "staging"], "validated": ["staging"], "staging": [],
             "deprecated": [], "production": []}
    if state not in moves:
        raise MlopsError(f"a version in state {state!r} cannot be deployed; "
                         "deployable states: trained, validated, staging, deprecated")
    return moves[state]

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

Registry states follow: the new version goes to ``staging`` when its rollout
starts, ``production`` when promoted (the old one ``deprecated``), back to
``validated`` when rolled back.
"""
from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from dataclasses import dataclass, field

from cluster.errors import MlopsError
from serving.gates import FAIL, PASS, Gates
from serving.policy import TrafficPolicy

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
                "gates": self.gates.to_dict(), "salt": self.salt, "actor": self.actor}


class Rollout:
    """One rollout, run in its own thread by the control plane."""

    def __init__(self, plane, spec: RolloutSpec, incumbent: str | None):
        self.plane = plane
        self.spec = spec
        self.incumbent = incumbent
        self.command: tuple[str, str, str] | None = None      # (what, actor, reason)
        self._wake = threading.Event()
        self.status = {"id": uuid.uuid4().hex[:12], **spec.to_dict(), "incumbent": incumbent,
                       "state": "staging", "step": None, "gates": None, "reason": "",
                       "started": time.time(), "ended": None}
        self.thread = threading.Thread(target=self.run, name=f"rollout-{spec.candidate}",
                                       daemon=True)

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
            self.plane.stage(cand, self)
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
        for pct in self.spec.steps:
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
        self.plane.route(policy, state, reason)
        self.status["state"] = state

    def _hold(self, seconds: float, step: float, until_command: bool = False) -> None:
        """Keep the split for ``seconds`` (or until an operator's command), judging the
        gates every tick; a failed gate aborts, too little traffic in time too."""
        spec, cand = self.spec, self.spec.candidate
        self.status["step"] = step
        self.plane.reset_step()
        started = time.monotonic()
        while True:
            if self._check_command():
                return                              # promote requested
            report = self.plane.gate_report(cand, self.incumbent, spec.gates)
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

    # -- endings -----------------------------------------------------------
    def _finish_promote(self, reason: str) -> None:
        self.plane.promote_now(self.spec.candidate, self.incumbent, reason, self.spec.actor)
        self._end("promoted", reason)

    def _finish_rollback(self, reason: str) -> None:
        if self.incumbent is None:
            self.plane.abandon(self.spec.candidate, reason)
            self._end("failed", reason)
        else:
            self.plane.rollback_now(self.spec.candidate, self.incumbent, reason)
            self._end("rolled_back", reason)

    def _end(self, state: str, reason: str) -> None:
        self.plane.rollout_ended(self, state, reason)


def staging_moves(state: str) -> list[str]:
    """Registry moves that bring a version of ``state`` to where a rollout can start."""
    moves = {"trained": ["validated", "staging"], "validated": ["staging"], "staging": [],
             "deprecated": [], "production": []}
    if state not in moves:
        raise MlopsError(f"a version in state {state!r} cannot be deployed; "
                         "deployable states: trained, validated, staging, deprecated")
    return moves[state]

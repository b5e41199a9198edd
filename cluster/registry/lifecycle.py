"""Model lifecycle: the states a registered version moves through, and the legal moves.

    training -> trained -> validated -> staging -> production -> deprecated -> archived
    (any of training/trained -> failed; failed -> archived)

Rollouts move versions both ways: a canary that fails goes ``staging -> validated``;
a rollback after a switch sends the new version ``production -> deprecated`` and
brings the old one back ``deprecated -> production``.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from cluster.errors import MlopsError

STATES = ("training", "trained", "validated", "staging", "production", "deprecated",
          "archived", "failed")

TRANSITIONS: dict[str, frozenset[str]] = {
    "training": frozenset({"trained", "failed"}),
    "trained": frozenset({"validated", "failed", "archived"}),
    "validated": frozenset({"staging", "archived"}),
    "staging": frozenset({"production", "validated", "archived"}),
    "production": frozenset({"deprecated"}),
    "deprecated": frozenset({"production", "archived"}),
    "failed": frozenset({"archived"}),
    "archived": frozenset(),
}


class IllegalTransition(MlopsError):
    """A lifecycle move the state machine does not allow; nothing was changed."""


@dataclass(frozen=True)
class Transition:
    from_state: str | None
    to_state: str
    actor: str
    reason: str
    time: str

    def to_dict(self) -> dict:
        return {"from": self.from_state, "to": self.to_state, "actor": self.actor,
                "reason": self.reason, "time": self.time}

    @classmethod
    def from_dict(cls, d: dict) -> "Transition":
        return cls(d.get("from"), d["to"], d.get("actor", ""), d.get("reason", ""),
                   d.get("time", ""))


def check_transition(current: str | None, target: str) -> None:
    if target not in STATES:
        raise IllegalTransition(f"unknown state {target!r}; states are {STATES}")
    if current is None:
        if target not in ("training", "trained", "failed"):
            raise IllegalTransition(f"a new version starts as training, trained or failed, "
                                    f"not {target!r}")
        return
    if target not in TRANSITIONS[current]:
        allowed = sorted(TRANSITIONS[current]) or ["none: it is final"]
        raise IllegalTransition(f"cannot move from {current!r} to {target!r}; "
                                f"allowed from {current!r}: {allowed}")


def make_transition(current: str | None, target: str, actor: str, reason: str) -> Transition:
    check_transition(current, target)
    return Transition(current, target, actor or "unknown", reason or "",
                      datetime.now(timezone.utc).isoformat(timespec="milliseconds"))

"""The persisted desired state of one deployment: what every replica should serve.

The versions to keep loaded, the traffic policy, the stable version and its warm
standby, under a revision number; the running rollout (its spec and progress, so
a restarted control plane resumes it) or the last one's ending; a bounded history.
Saved under ``$MLOPS_HOME/serving/<deployment>.json`` with an atomic replace after
every change, so whichever process holds the control plane next (the restarted
actor, or a new one) starts from exactly the last committed state.
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from serving.policy import TrafficPolicy

log = logging.getLogger(__name__)

HISTORY_LIMIT = 200


@dataclass
class DesiredState:
    deployment: str
    revision: int = 0
    versions: list[str] = field(default_factory=list)
    policy: TrafficPolicy | None = None
    stable: str | None = None
    standby: str | None = None
    rollout: dict | None = None         # {"spec": ..., "status": ...} while one runs
    last_rollout: dict | None = None    # the last rollout's status once it ended
    history: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"deployment": self.deployment, "revision": self.revision,
                "versions": list(self.versions), "stable": self.stable,
                "standby": self.standby,
                "policy": self.policy.to_dict() if self.policy else None,
                "rollout": self.rollout, "last_rollout": self.last_rollout,
                "history": self.history[-HISTORY_LIMIT:]}

    @classmethod
    def from_dict(cls, d: dict) -> "DesiredState":
        last = d.get("last_rollout")
        rollout = d.get("rollout")
        if rollout is not None and "spec" not in rollout:       # the pre-split layout
            rollout, last = None, rollout
        return cls(d["deployment"], int(d.get("revision") or 0), list(d.get("versions") or []),
                   TrafficPolicy.from_dict(d["policy"]) if d.get("policy") else None,
                   d.get("stable"), d.get("standby"), rollout, last,
                   list(d.get("history") or []))

    def note(self, what: str, detail: str, **extra) -> None:
        self.history.append({"time": time.time(), "revision": self.revision, "event": what,
                             "detail": detail, **extra})
        del self.history[:-HISTORY_LIMIT]


class DesiredStateStore:
    def __init__(self, path: Path):
        self.path = Path(path)

    @classmethod
    def for_deployment(cls, home: Path, deployment: str) -> "DesiredStateStore":
        return cls(Path(home) / "serving" / f"{deployment}.json")

    def load(self, deployment: str) -> DesiredState:
        if not self.path.exists():
            return DesiredState(deployment)
        try:
            return DesiredState.from_dict(json.loads(self.path.read_text()))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("cannot read %s (%s); starting empty", self.path, exc)
            return DesiredState(deployment)

    def save(self, state: DesiredState) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(json.dumps(state.to_dict(), default=str))
            tmp.replace(self.path)
        except OSError as exc:
            log.warning("saving %s failed: %s", self.path, exc)

"""The replica registry: which replicas are alive, what they applied and hold, and the
statistics their heartbeats carry while a rollout is judged.

Replicas call ``ControlPlane.sync`` every ``serving.sync_interval_s``; each call is
recorded here. A replica unseen for ``ttl_s`` is not live (a rollout does not wait
for it); after four ttls it is forgotten. Waiters (staging, routing) block on one
condition that every heartbeat and every desired-state change notifies.
"""
from __future__ import annotations

import threading
import time

from serving.stats import StatsBook


class ReplicaRegistry:
    def __init__(self, ttl_s: float = 5.0, lock: threading.RLock | None = None):
        self.ttl_s = ttl_s
        self.lock = lock or threading.RLock()
        self.changed = threading.Condition(self.lock)
        self.replicas: dict[str, dict] = {}
        self.step_stats = StatsBook()       # this rollout step's numbers
        self.rollout_stats = StatsBook()    # the whole rollout's (the IC gate)

    def heartbeat(self, replica_id: str, revision: int, loaded: dict[str, str],
                  stats: dict | None, judging: bool) -> None:
        with self.changed:
            self.replicas[replica_id] = {"seen": time.monotonic(), "revision": int(revision),
                                         "loaded": dict(loaded)}
            if stats and judging:
                # Only a running rollout is judged; between rollouts the predictions
                # table is the record (and memory stays bounded).
                self.step_stats.merge(stats)
                self.rollout_stats.merge(stats)
            self.changed.notify_all()

    def live(self) -> dict[str, dict]:
        now = time.monotonic()
        with self.lock:
            for rid in [r for r, v in self.replicas.items() if now - v["seen"] > 4 * self.ttl_s]:
                del self.replicas[rid]
            return {r: v for r, v in self.replicas.items() if now - v["seen"] <= self.ttl_s}

    def reset_rollout(self) -> None:
        with self.lock:
            self.step_stats, self.rollout_stats = StatsBook(), StatsBook()

    def reset_step(self) -> None:
        with self.lock:
            self.step_stats = StatsBook()

    def wait(self, seconds: float) -> None:
        """Block until a heartbeat or a change (or ``seconds``); call with the lock held."""
        self.changed.wait(seconds)

    def notify(self) -> None:
        with self.changed:
            self.changed.notify_all()

"""Traffic policy: which model version answers a request.

- weighted split over any number of versions (canary 95/5, A/B 50/50, ...);
- sticky: a request with a key (instrument, client id, header) is hashed with
  the experiment's salt onto [0, 1) and lands in the same arm for as long as the
  experiment (the salt) lives; without a key the draw is random;
- shadow: versions that get a copy of the traffic; their answers are recorded,
  never returned.

A policy is immutable; the ingress swaps the whole object to change traffic, so
a request sees either the old split or the new one, never a mix.
"""
from __future__ import annotations

import bisect
import hashlib
import random
from dataclasses import dataclass, field


@dataclass(frozen=True)
class TrafficPolicy:
    weights: dict[str, float]                 # version id -> weight (need not sum to 1)
    shadow: tuple[str, ...] = ()
    salt: str = "default"                     # one experiment = one salt
    revision: int = 0
    _edges: tuple[float, ...] = field(init=False, repr=False, compare=False)
    _arms: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        arms = [(v, float(w)) for v, w in self.weights.items() if float(w) > 0]
        if not arms:
            raise ValueError("a traffic policy needs at least one version with weight > 0")
        if any(float(w) < 0 for w in self.weights.values()):
            raise ValueError(f"weights must be >= 0: {self.weights}")
        total = sum(w for _, w in arms)
        edges, acc = [], 0.0
        for _, w in arms:
            acc += w / total
            edges.append(acc)
        edges[-1] = 1.0
        object.__setattr__(self, "_edges", tuple(edges))
        object.__setattr__(self, "_arms", tuple(v for v, _ in arms))

    @property
    def versions(self) -> list[str]:
        return list(dict.fromkeys([*self.weights, *self.shadow]))

    def shares(self) -> dict[str, float]:
        total = sum(float(w) for w in self.weights.values() if float(w) > 0)
        return {v: (float(w) / total if float(w) > 0 else 0.0) for v, w in self.weights.items()}

    def point(self, key: str | None) -> float:
        """Where a key falls on [0, 1): a stable hash with the salt, or random."""
        if key is None:
            return random.random()
        digest = hashlib.blake2b(f"{self.salt}\x00{key}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") / 2.0 ** 64

    def choose(self, key: str | None = None) -> str:
        if len(self._arms) == 1:
            return self._arms[0]
        return self._arms[bisect.bisect_right(self._edges, self.point(key))]

    def to_dict(self) -> dict:
        return {"weights": dict(self.weights), "shadow": list(self.shadow), "salt": self.salt,
                "revision": self.revision, "shares": self.shares()}

    @classmethod
    def from_dict(cls, d: dict) -> "TrafficPolicy":
        return cls(weights=dict(d["weights"]), shadow=tuple(d.get("shadow", ())),
                   salt=d.get("salt", "default"), revision=int(d.get("revision", 0)))

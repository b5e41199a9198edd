"""Per-version serving statistics that the rollout gates read.

Replicas count requests, errors and latencies per version and, for predictions
whose realised return is already in the features table, keep (prediction,
return) pairs per date. They ship the counts to the control plane as plain
dicts ("wire" form) and start again from zero; the control plane merges them.
Latency goes into a log-bucket histogram (5% wide buckets) so merging is a sum
and p99 is exact to within one bucket, whatever the traffic.
"""
from __future__ import annotations

import math

import numpy as np

_BASE = 1.05          # bucket width: a quantile is reported to within 5%
_FLOOR_MS = 0.01      # everything at or below 10 µs lands in bucket 0
_LOG_BASE = math.log(_BASE)
MAX_PAIRS_PER_DATE = 5000   # bounds memory: one entry per instrument and date


def _bucket(ms: float) -> int:
    if ms <= _FLOOR_MS:
        return 0
    return int(math.log(ms / _FLOOR_MS) / _LOG_BASE) + 1


def _upper_edge(bucket: int) -> float:
    return _FLOOR_MS * _BASE ** bucket


class VersionStats:
    """Requests, errors, a latency histogram and realised-return pairs of one version."""

    __slots__ = ("requests", "errors", "latency", "pairs")

    def __init__(self):
        self.requests = 0
        self.errors = 0
        self.latency: dict[int, int] = {}
        # date -> instrument -> (prediction, realised return)
        self.pairs: dict[str, dict[str, tuple[float, float]]] = {}

    def ok(self, latency_ms: float) -> None:
        self.requests += 1
        b = _bucket(latency_ms)
        self.latency[b] = self.latency.get(b, 0) + 1

    def error(self) -> None:
        self.requests += 1
        self.errors += 1

    def realised(self, date: str, instruments, predictions, returns) -> None:
        """Keep pairs whose realised return is known (finite)."""
        day = self.pairs.setdefault(date, {})
        for inst, p, r in zip(instruments, predictions, returns):
            if r == r and math.isfinite(r) and math.isfinite(p) and (
                    inst in day or len(day) < MAX_PAIRS_PER_DATE):
                day[inst] = (float(p), float(r))

    # -- reading -----------------------------------------------------------
    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def quantile_ms(self, q: float) -> float | None:
        total = sum(self.latency.values())
        if not total:
            return None
        rank, seen = q * total, 0
        for b in sorted(self.latency):
            seen += self.latency[b]
            if seen >= rank:
                return round(_upper_edge(b), 3)
        return round(_upper_edge(max(self.latency)), 3)

    def daily_ic(self, min_pairs: int = 5) -> tuple[float | None, int]:
        """Mean over dates of the cross-sectional Pearson IC, and the number of dates."""
        from cluster.training.metrics import DailyScorer   # the one daily IC scorer
        rows = [(k, p, r) for k, day in enumerate(self.pairs.values()) if len(day) >= min_pairs
                for p, r in day.values()]
        if not rows:
            return None, 0
        days, p, r = zip(*rows)          # a date's number groups its rows (keys are labels)
        daily = DailyScorer(np.array(days), np.array(r, dtype=np.float64)).daily(
            np.array(p, dtype=np.float64))
        ics = daily[np.isfinite(daily)]      # a constant day has no IC
        return (float(ics.mean()) if len(ics) else None), int(len(ics))

    def summary(self) -> dict:
        ic, days = self.daily_ic()
        return {"requests": self.requests, "errors": self.errors,
                "error_rate": round(self.error_rate, 6), "p50_ms": self.quantile_ms(0.5),
                "p99_ms": self.quantile_ms(0.99), "ic": ic, "ic_dates": days}

    # -- wire form ---------------------------------------------------------
    def to_wire(self) -> dict:
        return {"requests": self.requests, "errors": self.errors,
                "latency": {str(k): v for k, v in self.latency.items()},
                "pairs": {d: {i: list(v) for i, v in day.items()} for d, day in self.pairs.items()}}

    def merge_wire(self, wire: dict) -> None:
        self.requests += int(wire.get("requests", 0))
        self.errors += int(wire.get("errors", 0))
        for k, v in wire.get("latency", {}).items():
            self.latency[int(k)] = self.latency.get(int(k), 0) + int(v)
        for date, day in wire.get("pairs", {}).items():
            mine = self.pairs.setdefault(date, {})
            for inst, (p, r) in day.items():
                if inst in mine or len(mine) < MAX_PAIRS_PER_DATE:
                    mine[inst] = (float(p), float(r))


class StatsBook:
    """One VersionStats per version; ``drain()`` hands them over and starts afresh."""

    def __init__(self):
        self.by_version: dict[str, VersionStats] = {}

    def get(self, version: str) -> VersionStats:
        stats = self.by_version.get(version)
        if stats is None:
            stats = self.by_version[version] = VersionStats()
        return stats

    def drain(self) -> dict[str, dict]:
        book, self.by_version = self.by_version, {}
        return {v: s.to_wire() for v, s in book.items()}

    def merge(self, wire: dict[str, dict]) -> None:
        for version, stats in wire.items():
            self.get(version).merge_wire(stats)

    def summary(self) -> dict[str, dict]:
        return {v: s.summary() for v, s in sorted(self.by_version.items())}

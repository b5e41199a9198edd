"""Rollout gates: is the new version at least as good as the one it replaces?

Three checks on the statistics gathered while the new version takes traffic:
error rate, p99 latency (threshold seeded from
``monitoring.alert_thresholds.latency_ms``), and, where realised returns are
available, its daily IC against the incumbent's. Error rate and latency are
judged only once ``min_requests`` have been seen (a verdict on three requests is
noise); the IC only when both versions have ``min_ic_dates`` dates of realised
returns, otherwise it is reported as skipped and does not block.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from serving.stats import VersionStats

PASS, FAIL, WAIT = "pass", "fail", "wait"


@dataclass(frozen=True)
class Gates:
    max_error_rate: float = 0.01
    p99_ms: float | None = None          # None: the settings' latency_ms threshold
    max_ic_drop: float = 0.02            # new IC may trail the incumbent's by this much
    min_requests: int = 20
    min_ic_dates: int = 3

    def resolved(self) -> "Gates":
        if self.p99_ms is not None:
            return self
        from cluster.config import get_settings
        threshold = get_settings().monitoring.alert_thresholds.latency_ms
        return Gates(self.max_error_rate, float(threshold), self.max_ic_drop,
                     self.min_requests, self.min_ic_dates)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict | None) -> "Gates":
        d = dict(d or {})
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown gate(s) {sorted(unknown)}; "
                             f"gates are {sorted(cls.__dataclass_fields__)}")
        return cls(**d)


@dataclass
class GateReport:
    status: str                 # pass | fail | wait
    checks: list[dict]
    reason: str = ""

    def to_dict(self) -> dict:
        return {"status": self.status, "checks": self.checks, "reason": self.reason}


def evaluate(gates: Gates, candidate: VersionStats, incumbent: VersionStats | None,
             cand_long: VersionStats | None = None,
             inc_long: VersionStats | None = None) -> GateReport:
    """``candidate`` holds this step's numbers; the IC compares the whole rollout's
    (``cand_long``/``inc_long``, default the same objects)."""
    g = gates.resolved()
    checks, failures = [], []
    n = candidate.requests
    enough = n >= g.min_requests
    rate = candidate.error_rate
    checks.append({"gate": "error_rate", "value": round(rate, 6), "threshold": g.max_error_rate,
                   "requests": n, "ok": (rate <= g.max_error_rate) if enough else None})
    p99 = candidate.quantile_ms(0.99)
    checks.append({"gate": "p99_ms", "value": p99, "threshold": g.p99_ms,
                   "ok": (p99 is None or p99 <= g.p99_ms) if enough else None})
    cand_ic, cand_days = (cand_long or candidate).daily_ic()
    inc_ic, inc_days = (inc_long or incumbent).daily_ic() if (inc_long or incumbent) else (None, 0)
    ic_ok = None
    if cand_ic is not None and inc_ic is not None and min(cand_days, inc_days) >= g.min_ic_dates:
        ic_ok = cand_ic >= inc_ic - g.max_ic_drop
    checks.append({"gate": "ic", "value": cand_ic, "incumbent": inc_ic, "dates": cand_days,
                   "max_drop": g.max_ic_drop, "ok": ic_ok,
                   **({} if ic_ok is not None else {"skipped": "too few dates with realised "
                                                               "returns"})})
    for c in checks:
        if c["ok"] is False:
            if c["gate"] == "ic":
                failures.append(f"IC {c['value']:.4f} trails the incumbent's "
                                f"{c['incumbent']:.4f} by more than {g.max_ic_drop}")
            elif c["gate"] == "p99_ms":
                failures.append(f"p99 latency {c['value']} ms > {g.p99_ms} ms")
            else:
                failures.append(f"error rate {c['value']:.4f} > {g.max_error_rate} "
                                f"({candidate.errors}/{n} requests)")
    if failures:
        return GateReport(FAIL, checks, "; ".join(failures))
    if not enough:
        return GateReport(WAIT, checks, f"{n}/{g.min_requests} requests seen")
    return GateReport(PASS, checks)

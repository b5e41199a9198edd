"""A/B statistics for an experiment run by serving (one rollout id, two arms).

Per arm and trading day, the realised RankIC of the predictions of the keys the
traffic policy assigned to that arm (the ``arm`` column: intent to treat, so a
request the stable version answered for a failing arm still counts against the
arm), by the project's one scorer. Then on the paired daily difference
``d_t = RankIC_B(t) - RankIC_A(t)`` (B, A: the arms in name order):

- a stationary block bootstrap confidence interval of the mean difference
  (``arch.bootstrap.StationaryBootstrap``, block length from
  ``arch.bootstrap.optimal_block_length``);
- a Newey-West t-statistic: the mean over its HAC standard error, the long-run
  variance from the Bartlett kernel (``arch.covariance.kernel.Bartlett``), as daily
  IC series are autocorrelated and a plain t-test overstates significance;
- the **stopping rule**: a two-sided normal-mixture confidence sequence (Robbins'
  mixture; Howard, Ramdas, McAuliffe & Sekhon 2021, "Time-uniform, nonparametric,
  nonasymptotic confidence sequences"). With ``S_t = sum d_i`` over ``t`` days and
  the Newey-West long-run standard deviation ``s``, a difference is declared only
  when ``|S_t| / s >= sqrt((t + m) * ln((t + m) / (m * alpha**2)))`` (``m`` =
  ``MIXTURE_DAYS``, where the boundary is tightest; ``s`` is the larger of the
  Newey-West and the plain standard deviation, as a HAC estimate from a few weeks
  of data is noisy and an underestimate would make early looks too bold). The boundary holds at every
  ``t`` at once with probability ``1 - alpha`` under "no difference", so looking
  at the result every day and stopping at the first crossing keeps the error rate
  at ``alpha`` (a fixed-sample test checked daily would not). Until it is
  crossed, and before ``MIN_DAYS`` paired days, the verdict is "no difference yet".
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from cluster.training.metrics import daily_ic

MIN_DAYS = 20
MIXTURE_DAYS = 20
MIN_KEYS = 5


def arm_daily_rank_ic(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame``: arm, instrument, date, output, label -> date x arm RankIC."""
    out = {}
    for arm, g in frame.groupby("arm", sort=True):
        g = g.groupby(["date", "instrument"], as_index=False)[["output", "label"]].mean()
        counts = g.groupby("date")["output"].transform("size")
        g = g[counts >= MIN_KEYS]
        if g.empty:
            continue
        idx = pd.MultiIndex.from_arrays([pd.DatetimeIndex(g["date"]), g["instrument"]],
                                        names=["datetime", "instrument"])
        out[arm] = daily_ic(pd.Series(g["output"].to_numpy(), idx),
                            pd.Series(g["label"].to_numpy(), idx), "spearman")
    return pd.DataFrame(out).sort_index()


def newey_west(d: np.ndarray) -> tuple[float, float]:
    """(long-run standard deviation, t-statistic of the mean) with a Bartlett kernel."""
    from arch.covariance.kernel import Bartlett
    n = len(d)
    if n < 3 or np.allclose(d, d[0]):
        return float("nan"), float("nan")
    lrv = float(np.asarray(Bartlett(d).cov.long_run).squeeze())
    sd = float(np.sqrt(max(lrv, 1e-18)))
    return sd, float(d.mean() / (sd / np.sqrt(n)))


def boundary(t: int, alpha: float, m: int = MIXTURE_DAYS) -> float:
    """The normal-mixture confidence sequence's boundary for |S_t| / s."""
    return float(np.sqrt((t + m) * np.log((t + m) / (m * alpha ** 2))))


def decide(d: np.ndarray, alpha: float = 0.05) -> tuple[str, float, float]:
    """(verdict "b" | "a" | "none", |S_t| / s, the boundary) on the differences so far."""
    t = len(d)
    if t < MIN_DAYS:
        return "none", float("nan"), float("nan")
    sd, _ = newey_west(d)
    if not np.isfinite(sd):
        return "none", float("nan"), boundary(t, alpha)
    # a short series' HAC estimate is noisy and can fall below the plain standard
    # deviation: the larger of the two keeps early looks conservative
    sd = max(sd, float(d.std(ddof=1)))
    z = float(d.sum() / sd)
    b = boundary(t, alpha)
    if abs(z) < b:
        return "none", z, b
    return ("b" if z > 0 else "a"), z, b


def bootstrap_ci(d: np.ndarray, alpha: float = 0.05, reps: int = 1000,
                 seed: int = 0) -> tuple[float, float] | None:
    from arch.bootstrap import StationaryBootstrap, optimal_block_length
    if len(d) < MIN_DAYS or reps <= 0:
        return None
    block = float(optimal_block_length(d)["stationary"].iloc[0])
    bs = StationaryBootstrap(max(block, 1.0), d, seed=np.random.default_rng(seed))
    lo, hi = bs.conf_int(lambda x: np.array([x.mean()]), reps=reps, method="percentile",
                         size=1 - alpha).ravel()
    return float(lo), float(hi)


def analyse(daily: pd.DataFrame, alpha: float = 0.05, reps: int = 1000, seed: int = 0) -> dict:
    """``daily``: date x arm RankIC (two arms). The experiment's statistics and verdict."""
    arms = sorted(daily.columns)
    out = {"arms": arms, "alpha": alpha, "stopping_rule": "normal-mixture confidence "
           "sequence on the paired daily RankIC difference (always valid under daily looks)"}
    if len(arms) != 2:
        return out | {"verdict": "no difference yet", "winner": None, "days": 0,
                      "reason": f"an A/B analysis needs two arms, found {len(arms)}"}
    a, b = arms
    paired = daily[[a, b]].dropna()
    d = (paired[b] - paired[a]).to_numpy(np.float64)
    sd, t_nw = newey_west(d) if len(d) >= 3 else (float("nan"), float("nan"))
    call, z, bound = decide(d, alpha)
    ci = bootstrap_ci(d, alpha, reps, seed)
    winner = {"b": b, "a": a}.get(call)
    return out | {
        "days": int(len(d)),
        "mean_rank_ic": {a: _f(paired[a].mean()), b: _f(paired[b].mean())},
        "difference": _f(d.mean()) if len(d) else None, "difference_of": f"{b} - {a}",
        "bootstrap_ci": list(ci) if ci else None,
        "newey_west_t": _f(t_nw), "long_run_sd": _f(sd),
        "sequence_statistic": _f(z), "sequence_boundary": _f(bound),
        "verdict": f"{winner} wins" if winner else "no difference yet", "winner": winner,
        "daily": [{"date": str(pd.Timestamp(day).date()), a: _f(r[a]), b: _f(r[b])}
                  for day, r in paired.iterrows()],
    }


def _f(v):
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return round(v, 6) if np.isfinite(v) else None


# -- over the lake ----------------------------------------------------------
# Per (rollout, arm, day) figures come from the ``ab_daily`` table the monitor keeps
# (cluster/monitoring/abdaily.py) plus a date-pruned read of the days it has not seen:
# the cost of a call stays that of one experiment's days, not of every day served.
def _served_with_labels(lake_dir, rollout_id: str | None = None) -> pd.DataFrame:
    """The whole predictions table's served rows of experiments, with labels (the
    reference the incremental figures are tested against; not used on a request)."""
    from cluster.monitoring import abdaily
    pred = abdaily.served(lake_dir, abdaily.Unseen(None), rollout_id)
    pred = pred[pred["instrument"].notna()]
    return abdaily.with_labels(lake_dir, pred).dropna(subset=["label"]) if len(pred) \
        else pred.assign(label=pd.Series(dtype=float))


def experiments(lake_dir) -> list[dict]:
    """Every rollout whose served predictions came from more than one arm (``rows``:
    served rows with a trading day)."""
    from cluster.monitoring import abdaily
    days = abdaily.daily_frame(lake_dir)
    out = []
    for rid, g in days.groupby("rollout_id", sort=True):
        arms = sorted(g["arm"].dropna().unique())
        if len(arms) < 2:
            continue
        out.append({"rollout_id": rid, "arms": arms, "rows": int(g["rows"].sum()),
                    "first_day": str(pd.Timestamp(g["date"].min()).date()),
                    "last_day": str(pd.Timestamp(g["date"].max()).date())})
    return out


def experiment_analysis(lake_dir, rollout_id: str, alpha: float = 0.05,
                        reps: int = 1000) -> dict:
    from cluster.monitoring import abdaily
    days = abdaily.daily_frame(lake_dir, rollout_id)
    days = days[days["arm"].notna() & (days["keys"] >= MIN_KEYS)]
    daily = days.pivot(index="date", columns="arm", values="rank_ic").sort_index() \
        if len(days) else pd.DataFrame()
    daily.columns.name = None
    return {"rollout_id": rollout_id, **analyse(daily, alpha, reps)}

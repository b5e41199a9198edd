"""Evaluation of a signal against realised returns: daily cross-sectional IC and
RankIC (and their IR), MSE, and a top-k long-short daily backtest."""
from __future__ import annotations

import numpy as np
import pandas as pd

TRADING_DAYS = 252


class DailyIC:
    """Fast daily cross-sectional Pearson IC for a fixed grouping of rows by date.

    Built once per evaluation set (e.g. the valid segment) and called every
    boosting round or epoch: rows are sorted by date once, then each call is a
    few vectorised reductions.
    """

    def __init__(self, dates, label):
        dates = np.asarray(pd.to_datetime(np.asarray(dates)).values)
        label = np.asarray(label, dtype=np.float64)
        self.order = np.argsort(dates, kind="stable")
        d = dates[self.order]
        self.starts = np.flatnonzero(np.r_[True, d[1:] != d[:-1]])
        self.counts = np.diff(np.r_[self.starts, len(d)])
        self.label = label[self.order]

    def _group_mean(self, x):
        return np.add.reduceat(x, self.starts) / self.counts

    def daily(self, pred) -> np.ndarray:
        p = np.asarray(pred, dtype=np.float64)[self.order]
        y = self.label
        ok = np.isfinite(p) & np.isfinite(y)
        p, y = np.where(ok, p, 0.0), np.where(ok, y, 0.0)
        n = np.add.reduceat(ok.astype(np.float64), self.starts)
        with np.errstate(invalid="ignore", divide="ignore"):
            mp = np.add.reduceat(p, self.starts) / n
            my = np.add.reduceat(y, self.starts) / n
            rep = np.repeat
            dp = np.where(ok, p - rep(mp, self.counts), 0.0)
            dy = np.where(ok, y - rep(my, self.counts), 0.0)
            cov = np.add.reduceat(dp * dy, self.starts)
            vp = np.add.reduceat(dp * dp, self.starts)
            vy = np.add.reduceat(dy * dy, self.starts)
            ic = cov / np.sqrt(vp * vy)
        ic[(n < 2) | (vp <= 0) | (vy <= 0)] = np.nan
        return ic

    def __call__(self, pred) -> float:
        ic = self.daily(pred)
        return float(np.nanmean(ic)) if np.isfinite(ic).any() else float("nan")


def daily_ic(pred: pd.Series, label: pd.Series, method: str = "pearson") -> pd.Series:
    """IC per date; ``pred``/``label`` indexed (datetime, instrument)."""
    frame = pd.DataFrame({"pred": pred, "label": label}).replace([np.inf, -np.inf], np.nan)
    frame = frame.dropna()
    if frame.empty:
        return pd.Series(dtype=float)
    if method == "spearman":
        frame = frame.groupby(level="datetime").rank()
    dates = frame.index.get_level_values("datetime")
    ic = DailyIC(dates, frame["label"].to_numpy()).daily(frame["pred"].to_numpy())
    return pd.Series(ic, index=pd.DatetimeIndex(sorted(set(dates))), name=method)


def ic_summary(pred: pd.Series, label: pd.Series) -> dict[str, float]:
    ic = daily_ic(pred, label).dropna()
    ric = daily_ic(pred, label, "spearman").dropna()

    def ir(s):
        return float(s.mean() / s.std(ddof=1)) if len(s) > 1 and s.std(ddof=1) > 0 else float("nan")
    return {"ic": float(ic.mean()) if len(ic) else float("nan"), "icir": ir(ic),
            "rank_ic": float(ric.mean()) if len(ric) else float("nan"), "rank_icir": ir(ric),
            "days": int(len(ic))}


def long_short_backtest(pred: pd.Series, returns: pd.Series, topk: int | None = None
                        ) -> dict[str, float]:
    """Each day go long the ``topk`` highest predictions and short the ``topk`` lowest,
    equal-weighted; the day's return is the mean realised return of the longs minus
    that of the shorts. ``returns`` is the realised next-day return of each row (the
    raw label). Turnover is the mean fraction of both books replaced per day."""
    frame = pd.DataFrame({"pred": pred, "ret": returns}).replace([np.inf, -np.inf], np.nan)
    frame = frame.dropna()
    if frame.empty:
        return {"annual_return": float("nan"), "sharpe": float("nan"),
                "max_drawdown": float("nan"), "turnover": float("nan"), "topk": 0, "days": 0}
    if topk is None:
        per_day = frame.groupby(level="datetime").size().median()
        topk = max(1, int(round(per_day * 0.1)))
    daily, turnover = [], []
    prev_long, prev_short = set(), set()
    for date, day in frame.groupby(level="datetime", sort=True):
        if len(day) < 2 * topk:
            continue
        ranked = day.sort_values("pred")
        insts = ranked.index.get_level_values("instrument")
        short, long_ = set(insts[:topk]), set(insts[-topk:])
        daily.append((date, ranked["ret"].iloc[-topk:].mean() - ranked["ret"].iloc[:topk].mean()))
        if prev_long:
            changed = len(long_ - prev_long) + len(short - prev_short)
            turnover.append(changed / (2 * topk))
        prev_long, prev_short = long_, short
    if not daily:
        return {"annual_return": float("nan"), "sharpe": float("nan"),
                "max_drawdown": float("nan"), "turnover": float("nan"), "topk": topk, "days": 0}
    r = pd.Series([v for _, v in daily], index=[d for d, _ in daily])
    wealth = (1 + r).cumprod()
    drawdown = (wealth / wealth.cummax() - 1).min()
    sd = r.std(ddof=1)
    return {
        "annual_return": float(r.mean() * TRADING_DAYS),
        "sharpe": float(r.mean() / sd * np.sqrt(TRADING_DAYS)) if sd > 0 else float("nan"),
        "max_drawdown": float(drawdown),
        "turnover": float(np.mean(turnover)) if turnover else 0.0,
        "topk": int(topk),
        "days": int(len(r)),
    }


def evaluate(pred: pd.Series, label: pd.Series, raw_returns: pd.Series | None = None,
             topk: int | None = None) -> dict[str, float]:
    """IC, ICIR, RankIC, RankICIR, MSE (vs ``label``) and the long-short backtest
    (on ``raw_returns``, the un-normalised label, when given)."""
    joined = pd.DataFrame({"pred": pred, "label": label}).dropna()
    out = ic_summary(joined["pred"], joined["label"])
    out["mse"] = float(((joined["pred"] - joined["label"]) ** 2).mean()) if len(joined) else \
        float("nan")
    out["rows"] = int(len(joined))
    bt = long_short_backtest(pred, raw_returns if raw_returns is not None else label, topk)
    out.update({f"ls_{k}": v for k, v in bt.items()})
    return out

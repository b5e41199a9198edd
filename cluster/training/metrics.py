"""Evaluation of a signal against realised returns: daily cross-sectional IC and
RankIC (and their IR), MSE, and a top-k long-short daily backtest after costs.
:class:`DailyScorer` is the one daily IC scorer of the project."""
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


class DailyScorer:
    """The one daily scorer: IC (Pearson), RankIC (Spearman) and MSE of predictions
    against a fixed label, for rows grouped by date. Built once per evaluation set;
    early stopping (trees and torch), evaluation, tuning and monitoring all use it.

        scorer = DailyScorer(dates, label)
        scorer.ic(pred), scorer.rank_ic(pred), scorer.mse(pred)
        scorer.daily(pred, "spearman")          # one value per date, in date order
        scorer.score(pred, "rank_ic")           # higher is better ("loss" = -MSE)

    Ranks are average ranks within each date. Rows where the prediction or the label
    is not finite are left out of that date's correlation.
    """

    METRICS = ("ic", "rank_ic", "loss")

    def __init__(self, dates, label):
        dates = np.asarray(pd.to_datetime(np.asarray(dates)).values)
        self.label = np.asarray(label, dtype=np.float64)
        self.codes, uniques = pd.factorize(dates, sort=True)
        self.dates = pd.DatetimeIndex(uniques)
        self._pearson = DailyIC(dates, self.label)
        self._spearman = None

    def _rank(self, v) -> np.ndarray:
        v = np.asarray(v, dtype=np.float64)
        v = np.where(np.isfinite(v), v, np.nan)
        return pd.Series(v).groupby(self.codes).rank().to_numpy()

    def daily(self, pred, method: str = "pearson") -> np.ndarray:
        if method == "spearman":
            if self._spearman is None:
                label = np.where(np.isfinite(self.label), self.label, np.nan)
                self._spearman = DailyIC(self.dates[self.codes], self._rank(label))
            return self._spearman.daily(self._rank(pred))
        if method != "pearson":
            raise ValueError(f"method must be 'pearson' or 'spearman', not {method!r}")
        return self._pearson.daily(pred)

    @staticmethod
    def _mean(daily: np.ndarray) -> float:
        return float(np.nanmean(daily)) if np.isfinite(daily).any() else float("nan")

    def ic(self, pred) -> float:
        return self._mean(self.daily(pred, "pearson"))

    def rank_ic(self, pred) -> float:
        return self._mean(self.daily(pred, "spearman"))

    def mse(self, pred) -> float:
        with np.errstate(all="ignore"):
            return float(np.mean((np.asarray(pred, dtype=np.float64) - self.label) ** 2))

    def score(self, pred, metric: str) -> float:
        """The early-stopping score of ``metric`` (higher is better)."""
        if metric == "ic":
            return self.ic(pred)
        if metric == "rank_ic":
            return self.rank_ic(pred)
        if metric == "loss":
            return -self.mse(pred)
        raise ValueError(f"early_stop_metric must be one of {self.METRICS}, not {metric!r}")


def daily_ic(pred: pd.Series, label: pd.Series, method: str = "pearson") -> pd.Series:
    """IC per date; ``pred``/``label`` indexed (datetime, instrument)."""
    frame = pd.DataFrame({"pred": pred, "label": label}).replace([np.inf, -np.inf], np.nan)
    frame = frame.dropna()
    if frame.empty:
        return pd.Series(dtype=float)
    scorer = DailyScorer(frame.index.get_level_values("datetime"), frame["label"].to_numpy())
    return pd.Series(scorer.daily(frame["pred"].to_numpy(), method), index=scorer.dates,
                     name=method)


def ic_summary(pred: pd.Series, label: pd.Series) -> dict[str, float]:
    ic = daily_ic(pred, label).dropna()
    ric = daily_ic(pred, label, "spearman").dropna()

    def ir(s):
        return float(s.mean() / s.std(ddof=1)) if len(s) > 1 and s.std(ddof=1) > 0 else float("nan")
    return {"ic": float(ic.mean()) if len(ic) else float("nan"), "icir": ir(ic),
            "rank_ic": float(ric.mean()) if len(ric) else float("nan"), "rank_icir": ir(ric),
            "days": int(len(ic))}


def _empty_backtest(topk: int, cost_bps: float) -> dict[str, float]:
    nan = float("nan")
    return {"annual_return": nan, "sharpe": nan, "gross_annual_return": nan,
            "gross_sharpe": nan, "max_drawdown": nan, "turnover": nan, "cost_bps": cost_bps,
            "topk": topk, "days": 0}


def _annualised(r: pd.Series) -> tuple[float, float]:
    sd = r.std(ddof=1)
    sharpe = float(r.mean() / sd * np.sqrt(TRADING_DAYS)) if len(r) > 1 and sd > 0 else \
        float("nan")
    return float(r.mean() * TRADING_DAYS), sharpe


def long_short_days(pred: pd.Series, returns: pd.Series, topk: int | None = None,
                    cost_bps: float = 0.0) -> tuple[pd.DataFrame, int, list[float]]:
    """The days of :func:`long_short_backtest`: a frame indexed by date with the
    ``gross`` and ``net`` return of each day traded, the ``topk`` used and each day's
    turnover after the first (the console draws the equity curve from ``net``)."""
    frame = pd.DataFrame({"pred": pred, "ret": returns}).replace([np.inf, -np.inf], np.nan)
    frame = frame.dropna()
    cost = float(cost_bps) / 1e4
    empty = pd.DataFrame({"gross": [], "net": []}, dtype=float)
    if frame.empty:
        return empty, 0, []
    if topk is None:
        per_day = frame.groupby(level="datetime").size().median()
        topk = max(1, int(round(per_day * 0.1)))
    frame = frame.reset_index()
    frame["instrument"] = frame["instrument"].astype(str)
    frame = frame.sort_values(["datetime", "pred", "instrument"], kind="stable")
    gross, net, turnover, dates = [], [], [], []
    prev: dict[str, float] = {}
    for date, day in frame.groupby("datetime", sort=True):
        if len(day) < 2 * topk:
            continue
        insts, rets = day["instrument"].to_numpy(), day["ret"].to_numpy()
        short, long_ = insts[:topk], insts[-topk:]
        weights = {i: -1.0 / topk for i in short} | {i: 1.0 / topk for i in long_}
        traded = sum(abs(w - prev.get(i, 0.0)) for i, w in weights.items()) + \
            sum(abs(w) for i, w in prev.items() if i not in weights)
        g = float(rets[-topk:].mean() - rets[:topk].mean())
        if prev:
            changed = len(set(long_) - {i for i, w in prev.items() if w > 0}) + \
                len(set(short) - {i for i, w in prev.items() if w < 0})
            turnover.append(changed / (2 * topk))
        gross.append(g)
        net.append(g - cost * traded)
        dates.append(date)
        prev = weights
    if not net:
        return empty, int(topk), []
    return pd.DataFrame({"gross": gross, "net": net}, index=dates), int(topk), turnover


def long_short_backtest(pred: pd.Series, returns: pd.Series, topk: int | None = None,
                        cost_bps: float = 0.0) -> dict[str, float]:
    """Each day go long the ``topk`` highest predictions and short the ``topk`` lowest,
    equal-weighted (+1/k and -1/k), rebalanced daily.

    - Ranking sorts by prediction, ties broken by instrument id (ascending), so the
      books never depend on row order: among equal predictions the later ids go long.
    - Gross day return: mean realised return of the longs minus that of the shorts
      (``returns`` is the realised next-day return of each row, the raw label).
    - Costs: ``cost_bps`` per unit of traded notional on each side, a buy and a sell
      each paying it: traded notional = sum over names of |w_today - w_yesterday|
      (2.0 on the first day, when both books are bought; 4.0 when both books are
      replaced entirely). Net day return = gross - cost_bps / 1e4 * traded.
      Weight drift within the day is ignored; the book is not closed at the end.
    - Days with fewer than ``2 * topk`` rows are skipped (the book is carried).
    - ``turnover``: mean fraction of both books replaced per day after the first.
    ``annual_return``/``sharpe``/``max_drawdown`` are net of costs; the gross figures
    are reported beside them. The days themselves: :func:`long_short_days`."""
    days, topk, turnover = long_short_days(pred, returns, topk, cost_bps)
    if days.empty:
        return _empty_backtest(topk, float(cost_bps))
    r = days["net"]
    wealth = (1 + r).cumprod()
    annual, sharpe = _annualised(r)
    g_annual, g_sharpe = _annualised(days["gross"])
    return {
        "annual_return": annual, "sharpe": sharpe,
        "gross_annual_return": g_annual, "gross_sharpe": g_sharpe,
        "max_drawdown": float((wealth / wealth.cummax() - 1).min()),
        "turnover": float(np.mean(turnover)) if turnover else 0.0,
        "cost_bps": float(cost_bps), "topk": int(topk), "days": int(len(r)),
    }


def evaluate(pred: pd.Series, label: pd.Series, raw_returns: pd.Series | None = None,
             topk: int | None = None, cost_bps: float = 0.0) -> dict[str, float]:
    """IC, ICIR, RankIC, RankICIR, MSE (vs ``label``) and the long-short backtest
    (on ``raw_returns``, the un-normalised label, when given; net of ``cost_bps``)."""
    joined = pd.DataFrame({"pred": pred, "label": label}).dropna()
    out = ic_summary(joined["pred"], joined["label"])
    out["mse"] = float(((joined["pred"] - joined["label"]) ** 2).mean()) if len(joined) else \
        float("nan")
    out["rows"] = int(len(joined))
    bt = long_short_backtest(pred, raw_returns if raw_returns is not None else label, topk,
                             cost_bps)
    out.update({f"ls_{k}": v for k, v in bt.items()})
    return out

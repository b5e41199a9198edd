"""A seeded synthetic market in Yahoo's columns (raw prices plus ``Adj Close``).

- returns load on a market factor and a sector factor (correlated stocks);
- a two-state volatility regime (calm / turbulent, Markov switching);
- one explicit *learnable signal* component of returns, predictable from past
  bars only: by default a weak weekly reversal (:func:`reversal_signal`), so
  there is something for a model to learn;
- optionally a *planted* signal instead (``signal_ic=X``, see below) whose
  theoretical daily RankIC is X: the only predictable part of returns;
- optionally a regime shift (``regime_shift_at=F``): from trading day
  ``int(F * n_days)`` on, every volatility doubles and the learnable signal
  flips sign, so a model trained before it decays and its inputs drift;
- volume that rises with |return| and with the regime;
- occasional splits: raw prices drop by the ratio, and ``Adj Close`` is the
  raw close divided by the product of later split ratios, as Yahoo publishes
  it, so ``factor = Adj Close / Close`` is not always 1.

Planted signal (``signal_ic=X``). Each stock's idiosyncratic return shock
``u[i, t]`` is an AR process at lag two, ``u[t] = rho * u[t-2] + sqrt(1 - rho^2) *
eps[t]`` (``u = eps`` on the first two days; ``eps`` iid N(0, 1)), so every ``u``
is N(0, 1), stocks are independent, and ``rho * u[t-2]`` is the learnable component.
Returns are ``ret[i, t] = market[t] + sigma[t] * u[i, t]``: one common market
move (beta 1, no sector term) and one idiosyncratic volatility ``sigma[t]`` for all
stocks (it still doubles in turbulent regimes), and the weekly reversal is off.
The open is the previous close (no gap), so a day's return is in its bar
(``KMID = close / open - 1``). The label of day t, ``close[t+2] / close[t+1] - 1 =
exp(ret[t+2]) - 1``, ranks stocks exactly as ``u[t+2]``; the best predictor from
bars up to t ranks them as ``u[t]`` (``E[u[t+2] | past] = rho * u[t]``, nothing else
in the past adds to it). Each day's ``n`` pairs ``(u[i, t], u[i, t+2])`` are iid
bivariate normal with correlation ``rho``, and the expected sample Spearman
correlation of ``n`` such pairs is (Moran 1948)

    E[RankIC] = 6 / (pi * (n + 1)) * (arcsin(rho) + (n - 2) * arcsin(rho / 2)),

which tends to ``(6 / pi) * arcsin(rho / 2)`` for large n. :func:`planted_rho`
solves it for ``rho`` so that the expected daily RankIC is exactly X for the
number of stocks asked for (price rounding to cents aside). A model's mean daily
RankIC over T test days scatters around at most X with a standard deviation of
about ``1 / sqrt((n - 1) * T)`` (:func:`planted_rank_ic_sigma`, the null SD of a
daily Spearman correlation, an upper bound for weak correlations).

Market draws for day ``t`` come from a generator seeded by ``(seed, t)`` and
each stock's draws from its own stream, so asking for one more day or one more
stock leaves the other raw prices unchanged (a later split still restates
``Adj Close``, as it does in real data).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

N_SECTORS = 5
REVERSAL = 0.08


def trading_days(n_days: int, start: str = "2015-01-05") -> pd.DatetimeIndex:
    return pd.bdate_range(start=start, periods=n_days)


def reversal_signal(recent: np.ndarray) -> np.ndarray:
    """The built-in learnable signal: minus a fraction of the last week's mean return.
    Written as ``-(R * mean)`` so that adding it equals the original ``- R * mean``
    bit for bit (the default market stays identical)."""
    return -(REVERSAL * recent.mean(axis=0))


PLANTED_SIGMA = 0.0175   # idiosyncratic daily volatility of every stock, planted market


def planted_rank_ic(rho: float, n_stocks: int) -> float:
    """Expected daily sample RankIC of ``n_stocks`` iid pairs at correlation ``rho``."""
    n = int(n_stocks)
    return float(6.0 / (np.pi * (n + 1)) * (np.arcsin(rho) + (n - 2) * np.arcsin(rho / 2.0)))


def planted_rho(signal_ic: float, n_stocks: int) -> float:
    """The lag-two autocorrelation ``rho`` whose expected daily RankIC is ``signal_ic``."""
    x = float(signal_ic)
    if not 0.0 < x < 1.0:
        raise ValueError(f"signal_ic must be in (0, 1), got {signal_ic}")
    if int(n_stocks) < 3:
        raise ValueError(f"a planted signal needs at least 3 stocks, got {n_stocks}")
    lo, hi = 0.0, 1.0
    for _ in range(80):              # planted_rank_ic is increasing in rho
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if planted_rank_ic(mid, n_stocks) < x else (lo, mid)
    return (lo + hi) / 2


def planted_rank_ic_sigma(n_stocks: int, days: int) -> float:
    """About the standard deviation of a mean daily RankIC over ``days`` days."""
    return float(1.0 / np.sqrt(max(int(n_stocks) - 1, 1) * max(int(days), 1)))


class PlantedSignal:
    """The planted learnable component: ``rho * u[t-2]`` of each stock's shock."""

    def __init__(self, signal_ic: float, n_stocks: int):
        self.rho = planted_rho(signal_ic, n_stocks)
        self.history = np.zeros((2, n_stocks))   # u[t-1], u[t-2]
        self.t = 0

    def component(self) -> np.ndarray:
        return self.rho * self.history[1] if self.t >= 2 else np.zeros(self.history.shape[1])

    def shock(self, component: np.ndarray, eps: np.ndarray) -> np.ndarray:
        """Today's unit-variance shock ``u[t]`` from the (possibly flipped) component."""
        scale = np.sqrt(1.0 - self.rho ** 2) if self.t >= 2 else 1.0
        u = component + scale * eps
        self.history = np.vstack([u[None, :], self.history[:1]])
        self.t += 1
        return u


def regime_shift_index(n_days: int, regime_shift_at: float | None) -> int | None:
    """First trading day (0-based) of the shifted regime, or None without a shift."""
    if regime_shift_at is None:
        return None
    f = float(regime_shift_at)
    if not 0.0 < f < 1.0:
        raise ValueError(f"regime_shift_at must be a fraction in (0, 1), got {regime_shift_at}")
    return min(max(int(f * n_days), 1), n_days - 1)


def regime_shift_day(n_days: int, regime_shift_at: float | None,
                     start: str = "2015-01-05") -> str | None:
    """The shift's first trading day as YYYY-MM-DD (None without a shift)."""
    idx = regime_shift_index(n_days, regime_shift_at)
    return None if idx is None else trading_days(n_days, start)[idx].strftime("%Y-%m-%d")


def synthetic_market(n_stocks: int = 50, n_days: int = 500, seed: int = 0,
                     start: str = "2015-01-05",
                     regime_shift_at: float | None = None,
                     signal_ic: float | None = None) -> pd.DataFrame:
    """Yahoo-format frame: Date, High, Low, Open, Close, Volume, Adj Close, Name.

    ``regime_shift_at=F``: from day ``int(F * n_days)`` on, volatility doubles (market,
    sector and idiosyncratic) and the learnable signal flips sign.
    ``signal_ic=X``: the planted signal of theoretical daily RankIC X replaces the
    weekly reversal (see the module docstring)."""
    if n_stocks < 1 or n_days < 1:
        raise ValueError("n_stocks and n_days must be positive")
    planted = PlantedSignal(signal_ic, n_stocks) if signal_ic is not None else None
    shift_at = regime_shift_index(n_days, regime_shift_at)
    days = trading_days(n_days, start)
    p = _stock_params(n_stocks, seed)
    n = n_stocks
    raw_close = np.empty((n_days, n))
    raw_open = np.empty((n_days, n))
    high = np.empty((n_days, n))
    low = np.empty((n_days, n))
    volume = np.empty((n_days, n))
    split = np.ones((n_days, n))
    recent = np.zeros((5, n))  # last five returns, for the weekly reversal
    prev_close = p["price0"].copy()
    shares_mult = np.ones(n)  # raw volume scales with the splits so far
    turbulent = False
    noise = _stock_noise(n, n_days, seed)
    for t in range(n_days):
        rng = np.random.default_rng([seed, t])
        u, market_z = rng.random(), rng.standard_normal()
        turbulent = (u < 0.02) if not turbulent else (u >= 0.08)
        vol_mult = 2.2 if turbulent else 1.0
        shifted = shift_at is not None and t >= shift_at
        if shifted:
            vol_mult *= 2.0
        market = 0.0003 + 0.008 * vol_mult * market_z
        sectors = 0.005 * vol_mult * rng.standard_normal(N_SECTORS)
        eps, gap_z, wick_hi, wick_lo, vol_noise, split_u, split_pick = noise[:, t, :].T
        wick = np.abs(np.vstack([wick_hi, wick_lo]))
        split_ratio = np.array([2.0, 3.0, 1.5])[np.minimum((split_pick * 3).astype(int), 2)]

        if planted is None:
            signal = reversal_signal(recent)
            if shifted:
                signal = -signal
            ret = (p["beta"] * market + p["sector_beta"] * sectors[p["sector"]]
                   + signal + p["idio"] * vol_mult * eps)
        else:
            signal = planted.component()
            if shifted:
                signal = -signal
            ret = market + PLANTED_SIGMA * vol_mult * planted.shock(signal, eps)
        ret = np.clip(ret, -0.5, 0.5)
        recent = np.roll(recent, 1, axis=0)
        recent[0] = ret
        # Splits happen before the open: the raw price series drops by the ratio.
        splits_today = split_u < 1.0 / 1500
        ratio = np.where(splits_today, split_ratio, 1.0)
        split[t] = ratio
        shares_mult *= ratio
        base = prev_close / ratio
        sigma = p["idio"] * vol_mult
        o = base * np.exp(0.3 * sigma * gap_z) if planted is None else base
        c = base * np.exp(ret)
        h = np.maximum(o, c) * np.exp(0.5 * sigma * wick[0])
        lo = np.minimum(o, c) * np.exp(-0.5 * sigma * wick[1])
        raw_open[t], raw_close[t], high[t], low[t] = o, c, h, lo
        volume[t] = np.round(p["volume0"] * shares_mult * np.exp(0.35 * vol_noise) * (1 + 25 * np.abs(ret))
                             * (1.4 if turbulent else 1.0))
        prev_close = c
    # Yahoo's Adj Close divides by every split that happens after the day.
    later = np.cumprod(split[::-1], axis=0)[::-1]
    later = np.vstack([later[1:], np.ones((1, n))])
    rounded = {k: np.round(v, 2) for k, v in
               {"Open": raw_open, "High": high, "Low": low, "Close": raw_close}.items()}
    names = np.array([f"S{i:04d}" for i in range(n)])
    frame = pd.DataFrame({
        "Date": np.repeat(days.strftime("%Y-%m-%d").to_numpy(), n),
        "High": rounded["High"].ravel(),
        "Low": rounded["Low"].ravel(),
        "Open": rounded["Open"].ravel(),
        "Close": rounded["Close"].ravel(),
        "Volume": volume.ravel(),
        "Adj Close": (rounded["Close"] / later).ravel(),
        "Name": np.tile(names, n_days),
    })
    return frame.sort_values(["Name", "Date"], kind="stable").reset_index(drop=True)


def _stock_noise(n: int, n_days: int, seed: int) -> np.ndarray:
    """(stock, day, 7) draws; stock i's stream depends on neither n nor later days."""
    out = np.empty((n, n_days, 7))
    for i in range(n):
        rng = np.random.default_rng([seed, 2_000_003, i])
        draws = rng.random((n_days, 7))
        out[i, :, :5] = _normal_from_uniform(draws[:, :5])
        out[i, :, 5:] = draws[:, 5:]
    return out


def _normal_from_uniform(u: np.ndarray) -> np.ndarray:
    from scipy.special import ndtri
    return ndtri(np.clip(u, 1e-12, 1 - 1e-12))


def _stock_params(n: int, seed: int) -> dict[str, np.ndarray]:
    # One generator per stock keeps stock i's parameters independent of n.
    rows = [np.random.default_rng([seed, 1_000_003, i]).random(6) for i in range(n)]
    r = np.array(rows)
    return {
        "sector": (r[:, 0] * N_SECTORS).astype(int),
        "beta": 0.6 + 0.8 * r[:, 1],
        "sector_beta": 0.3 + 0.5 * r[:, 2],
        "idio": 0.010 + 0.015 * r[:, 3],
        "price0": np.exp(np.log(50) + 0.8 * (r[:, 4] - 0.5) * 3),
        "volume0": np.exp(np.log(2e6) + (r[:, 5] - 0.5) * 3),
    }

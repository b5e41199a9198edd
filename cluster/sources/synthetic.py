"""A seeded synthetic market in Yahoo's columns (raw prices plus ``Adj Close``).

- returns load on a market factor and a sector factor (correlated stocks);
- a two-state volatility regime (calm / turbulent, Markov switching);
- one explicit *learnable signal* component of returns, predictable from past
  bars only: by default a weak weekly reversal (:func:`reversal_signal`), so
  there is something for a model to learn;
- optionally a regime shift (``regime_shift_at=F``): from trading day
  ``int(F * n_days)`` on, every volatility doubles and the learnable signal
  flips sign, so a model trained before it decays and its inputs drift;
- volume that rises with |return| and with the regime;
- occasional splits: raw prices drop by the ratio, and ``Adj Close`` is the
  raw close divided by the product of later split ratios, as Yahoo publishes
  it, so ``factor = Adj Close / Close`` is not always 1.

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
                     regime_shift_at: float | None = None) -> pd.DataFrame:
    """Yahoo-format frame: Date, High, Low, Open, Close, Volume, Adj Close, Name.

    ``regime_shift_at=F``: from day ``int(F * n_days)`` on, volatility doubles (market,
    sector and idiosyncratic) and the learnable signal flips sign."""
    if n_stocks < 1 or n_days < 1:
        raise ValueError("n_stocks and n_days must be positive")
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

        signal = reversal_signal(recent)
        if shifted:
            signal = -signal
        ret = (p["beta"] * market + p["sector_beta"] * sectors[p["sector"]]
               + signal + p["idio"] * vol_mult * eps)
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
        o = base * np.exp(0.3 * sigma * gap_z)
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

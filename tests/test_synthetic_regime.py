"""The synthetic regime shift: the default market is unchanged; after the shift
volatility doubles and the learnable signal flips sign."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest

from cluster.sources.synthetic import regime_shift_day, synthetic_market

# sha256 of synthetic_market(8, 120, 1) as CSV, taken before the regime shift existed:
# the default market (no flags) must stay bit-identical.
DEFAULT_SHA = "7ea30602e3e58eb83fe12381a5811ff997af6bbbeff97bda075183c7e6b3e525"


def test_default_market_is_bit_identical():
    frame = synthetic_market(8, 120, 1)
    assert hashlib.sha256(frame.to_csv(index=False).encode()).hexdigest() == DEFAULT_SHA


def _returns(frame):
    wide = frame.pivot(index="Date", columns="Name", values="Adj Close")
    return np.log(wide).diff().iloc[1:]


def test_regime_shift_doubles_volatility_and_flips_the_signal():
    n_days, f = 600, 0.5
    base = synthetic_market(40, n_days, 2)
    shifted = synthetic_market(40, n_days, 2, regime_shift_at=f)
    day = regime_shift_day(n_days, f)
    before = shifted["Date"] < day
    assert shifted[before].reset_index(drop=True).equals(base[base["Date"] < day]
                                                          .reset_index(drop=True))
    ret = _returns(shifted)
    pre, post = ret[ret.index < day], ret[ret.index >= day]
    ratio = post.std().median() / pre.std().median()
    assert 1.6 < ratio < 3.0   # 2x, give or take the turbulent spells drawn
    # the weekly reversal: corr(mean of the last 5 returns, next return), per regime
    def reversal(r):
        past = r.rolling(5).mean().shift(1)
        x, y = past.to_numpy().ravel(), r.to_numpy().ravel()
        ok = np.isfinite(x) & np.isfinite(y)
        return np.corrcoef(x[ok], y[ok])[0, 1]
    assert reversal(pre) < 0 < reversal(post.iloc[5:])


def test_regime_shift_fraction_is_checked():
    with pytest.raises(ValueError, match="regime_shift_at"):
        synthetic_market(2, 20, 0, regime_shift_at=1.5)
    assert regime_shift_day(100, None) is None

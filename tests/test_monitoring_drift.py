"""Drift: PSI/KS against the training reference, calibrated both ways (real data:
random halves of 2017 raise nothing; the synthetic regime shift is caught)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from cluster.config import load_settings
from cluster.features.alpha158 import ALPHA158_NAMES, compute_alpha158, reindex_to_calendar
from cluster.monitoring.drift import DriftReference, daily_drift
from cluster.monitoring.reference import reference_sample
from cluster.sources.adjust import yahoo_to_canonical
from cluster.sources.synthetic import regime_shift_day, synthetic_market
from tests.conftest import shared_file

FEATURES = list(ALPHA158_NAMES)
THRESHOLD = load_settings().monitoring.alert_thresholds.drift_score


def _alpha(yahoo: pd.DataFrame) -> pd.DataFrame:
    bars = yahoo_to_canonical(yahoo.assign(Date=pd.to_datetime(yahoo["Date"])))
    grid = reindex_to_calendar(bars, sorted(bars["date"].unique()))
    return compute_alpha158(grid).reset_index(drop=True)


def test_ks_statistic_and_p_value_match_scipy():
    rng = np.random.default_rng(3)
    ref = pd.DataFrame({"a": rng.standard_normal(3000), "b": np.round(rng.standard_normal(3000)),
                        "c": rng.standard_normal(3000)})
    cur = np.column_stack([rng.standard_normal(800) + 0.1, np.round(rng.standard_normal(800) * 1.3),
                           np.r_[rng.standard_normal(790), [np.nan] * 10]])
    res = DriftReference(ref, ["a", "b", "c"]).check(cur)
    for j, col in enumerate("abc"):
        x = cur[:, j][np.isfinite(cur[:, j])]
        want = stats.ks_2samp(ref[col], x, method="asymp")
        assert res.ks[j] == pytest.approx(want.statistic, abs=1e-12)
        assert res.ks_p[j] == pytest.approx(want.pvalue, rel=0.1, abs=1e-6)
    assert res.n.tolist() == [800, 800, 790]


def test_random_halves_of_2017_raise_nothing():
    """Real shared data: a reference sample from one random half of 2017's days and the
    other half (whole, and as 20-day windows of its days) do not drift."""
    raw = pd.read_parquet(shared_file("sp500_5yr_dev.parquet"))
    names = sorted(raw["Name"].unique())[::6][:40]
    raw = raw[raw["Name"].isin(names) & (raw["Date"] >= "2016-09-01")
              & (raw["Date"] <= "2017-12-31")]
    feats = _alpha(raw)
    feats = feats[(feats["date"] >= "2017-01-01")].dropna(subset=["KMID"])
    days = np.array(sorted(feats["date"].unique()))
    for seed in (0, 1, 2):
        rng = np.random.default_rng(seed)
        half = set(rng.choice(days, len(days) // 2, replace=False))
        in_ref = feats["date"].isin(half)
        ref = DriftReference(reference_sample(feats[in_ref], (days[0], days[-1]), FEATURES),
                             FEATURES)
        other = feats[~in_ref].reset_index(drop=True)
        whole = ref.check(other)
        assert ref.score(whole) <= THRESHOLD and whole.drifting.sum() == 0
        # consecutive-looking windows: 20 of the other half's days at a time
        other_days = np.array(sorted(other["date"].unique()))
        day_scores, _ = daily_drift(ref, other, other_days[19::20], window_days=20)
        assert (day_scores["drift_score"] <= THRESHOLD).all(), day_scores


@pytest.fixture(scope="module")
def shifted_market():
    n_days, f = 520, 0.7
    yahoo = synthetic_market(40, n_days, seed=5, regime_shift_at=f)
    return _alpha(yahoo), pd.Timestamp(regime_shift_day(n_days, f)), n_days


def test_synthetic_regime_shift_is_caught_and_nothing_before(shifted_market):
    feats, shift, n_days = shifted_market
    days = np.array(sorted(feats["date"].unique()))
    train_end = days[int(len(days) * 0.5) - 1]
    ref = DriftReference(reference_sample(feats, (days[60], train_end), FEATURES), FEATURES)
    scored = days[int(len(days) * 0.6):]
    per_day, per_feature = daily_drift(ref, feats, scored, window_days=20)
    per_day = per_day.set_index("date")["drift_score"]
    before, after = per_day[per_day.index < shift], per_day[per_day.index >= shift]
    assert len(before) >= 20 and (before <= THRESHOLD).all(), before.max()
    assert (after > THRESHOLD).any(), after.max()
    assert after.iloc[-40:].mean() > before.mean() + 0.1
    assert set(per_feature.columns) >= {"date", "feature", "psi", "ks", "ks_p", "drifting"}

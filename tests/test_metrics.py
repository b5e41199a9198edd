"""Evaluation metrics against straightforward pandas references."""
import numpy as np
import pandas as pd
from hypothesis import given, strategies as st

from cluster.training.metrics import (DailyIC, daily_ic, evaluate, long_short_backtest,
                                      long_short_days)


@st.composite
def panels(draw):
    n_days = draw(st.integers(1, 8))
    n_inst = draw(st.integers(2, 12))
    seed = draw(st.integers(0, 10**6))
    rng = np.random.default_rng(seed)
    idx = pd.MultiIndex.from_product([pd.bdate_range("2021-01-04", periods=n_days),
                                      [f"I{i}" for i in range(n_inst)]],
                                     names=["datetime", "instrument"])
    pred = pd.Series(rng.standard_normal(len(idx)), index=idx)
    label = pd.Series(0.5 * pred.to_numpy() * draw(st.floats(-1, 1))
                      + rng.standard_normal(len(idx)), index=idx)
    if draw(st.booleans()):
        label.iloc[rng.integers(0, len(idx), size=2)] = np.nan
    perm = rng.permutation(len(idx))  # rows in any order
    return pred.iloc[perm], label.iloc[perm]


@given(panel=panels())
def test_daily_ic_matches_pandas_corr(panel):
    pred, label = panel
    frame = pd.DataFrame({"p": pred, "y": label}).dropna()
    if frame.empty:
        assert daily_ic(pred, label).empty
        return
    ref = frame.groupby(level="datetime").apply(lambda d: d["p"].corr(d["y"]))
    got = daily_ic(pred, label)
    ref = ref.reindex(got.index)
    np.testing.assert_allclose(got.to_numpy(), ref.to_numpy(), rtol=1e-9, atol=1e-12)
    rank_ref = frame.groupby(level="datetime").apply(
        lambda d: d["p"].corr(d["y"], method="spearman")).reindex(got.index)
    np.testing.assert_allclose(daily_ic(pred, label, "spearman").to_numpy(),
                               rank_ref.to_numpy(), rtol=1e-9, atol=1e-12)
    fast = DailyIC(label.index.get_level_values("datetime"), label.to_numpy())
    expected = np.nanmean(ref.to_numpy()) if np.isfinite(ref.to_numpy()).any() else np.nan
    assert np.isclose(fast(pred.to_numpy()), expected, equal_nan=True)


def test_backtest_perfect_foresight_and_turnover():
    idx = pd.MultiIndex.from_product([pd.bdate_range("2021-01-04", periods=30),
                                      [f"I{i}" for i in range(10)]],
                                     names=["datetime", "instrument"])
    rng = np.random.default_rng(0)
    ret = pd.Series(rng.normal(0, 0.01, len(idx)), index=idx)
    perfect = long_short_backtest(ret, ret, topk=2)
    inverse = long_short_backtest(-ret, ret, topk=2)
    assert perfect["annual_return"] > 0 > inverse["annual_return"]
    assert perfect["sharpe"] > 5 and perfect["max_drawdown"] == 0.0
    const = pd.Series(np.tile(np.arange(10.0), 30), index=idx)
    assert long_short_backtest(const, ret, topk=2)["turnover"] == 0.0
    m = evaluate(ret, ret, ret, topk=2)
    assert np.isclose(m["ic"], 1.0) and np.isclose(m["rank_ic"], 1.0) and m["mse"] == 0.0


def test_backtest_days_are_what_the_summary_summarises():
    """The days the training report keeps (the console's equity curves) compound to the
    summary's figures."""
    idx = pd.MultiIndex.from_product([pd.bdate_range("2021-01-04", periods=40),
                                      [f"I{i}" for i in range(8)]],
                                     names=["datetime", "instrument"])
    rng = np.random.default_rng(1)
    ret = pd.Series(rng.normal(0, 0.01, len(idx)), index=idx)
    pred = ret + pd.Series(rng.normal(0, 0.02, len(idx)), index=idx)
    days, topk, _ = long_short_days(pred, ret, None, 10.0)
    summary = long_short_backtest(pred, ret, None, 10.0)
    assert topk == summary["topk"] and len(days) == summary["days"] == 40
    wealth = (1 + days["net"]).cumprod()
    assert np.isclose((wealth / wealth.cummax() - 1).min(), summary["max_drawdown"])
    assert (days["gross"] >= days["net"]).all()

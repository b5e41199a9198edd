"""Sources: every reader ends in the canonical schema, adjusted as Qlib adjusts."""
import numpy as np
import pandas as pd
import pytest
from hypothesis import given

from cluster.schema import BAR_COLUMNS
from cluster.sources import detect_format, read_source
from cluster.sources.qlib_provider import write_qlib_provider
from cluster.sources.synthetic import synthetic_market
from cluster.validation import validate
from tests.conftest import shared_file
from tests.strategies import to_yahoo, valid_bars


def canonical(source, fmt="auto", **kw):
    checked = validate(read_source(str(source), fmt, **kw))
    assert checked.bad_rows.empty and not checked.file_errors, checked.bad_rows
    return checked.bars


def assert_same_bars(a: pd.DataFrame, b: pd.DataFrame, rtol=1e-6):
    a = a.sort_values(["instrument", "date"]).reset_index(drop=True)
    b = b.sort_values(["instrument", "date"]).reset_index(drop=True)
    assert list(a["instrument"]) == list(b["instrument"])
    assert (a["date"].to_numpy() == b["date"].to_numpy()).all()
    for c in BAR_COLUMNS[2:]:
        np.testing.assert_allclose(a[c].to_numpy(), b[c].to_numpy(), rtol=rtol, err_msg=c)


@given(bars=valid_bars())
def test_property4_parquet_to_qlib_provider_roundtrip(tmp_path_factory, bars):
    """Feature: mlops-optimization, Property 4: any valid bars frame written as parquet,
    converted to a Qlib provider directory and read back gives the same values
    (float32 tolerance)."""
    d = tmp_path_factory.mktemp("p4")
    bars.to_parquet(d / "bars.parquet", index=False)
    from_parquet = canonical(d / "bars.parquet")
    assert_same_bars(from_parquet, bars, rtol=1e-12)
    write_qlib_provider(from_parquet, d / "qlib")
    assert detect_format(str(d / "qlib")) == "qlib"
    back = canonical(d / "qlib")
    assert_same_bars(back, bars, rtol=2e-7 * 4)


@given(bars=valid_bars())
def test_yahoo_csv_is_adjusted_like_qlib(tmp_path_factory, bars):
    """CSV in Yahoo columns -> factor = Adj Close / Close, prices * factor, volume / factor."""
    d = tmp_path_factory.mktemp("csv")
    yahoo = to_yahoo(bars)
    for name, grp in yahoo.groupby("Name"):
        grp.drop(columns="Name").to_csv(d / f"{name}_data.csv", index=False, float_format="%.17g")
    got = canonical(d)
    assert_same_bars(got, bars, rtol=1e-9)


def test_qlib_provider_read_by_qlib_itself(tmp_path):
    """The provider directory we write is one Qlib's own D.features reads."""
    import qlib
    from qlib.data import D
    raw = synthetic_market(3, 30, seed=4)
    bars = canonical_from_yahoo(raw)
    write_qlib_provider(bars, tmp_path / "qlib")
    qlib.init(provider_uri=str(tmp_path / "qlib"), region="us", kernels=1,
              exp_manager={"class": "MLflowExpManager", "module_path": "qlib.workflow.expm",
                           "kwargs": {"uri": f"sqlite:///{tmp_path}/qlib_mlruns.db",
                                      "default_exp_name": "t"}})
    got = D.features(["S0000", "S0002"], ["$close", "$factor", "$volume"], freq="day")
    mine = bars.set_index(["instrument", "date"]).loc[["S0000", "S0002"]]
    np.testing.assert_allclose(got["$close"].to_numpy(), mine["close"].to_numpy(), rtol=1e-6)
    np.testing.assert_allclose(got["$factor"].to_numpy(), mine["factor"].to_numpy(), rtol=1e-6)


def canonical_from_yahoo(raw):
    from cluster.sources.base import RawBars
    raw = raw.assign(_file="mem", _row=np.arange(len(raw)))
    return validate(RawBars(raw, "yahoo", "mem")).bars


def test_synthetic_market_is_deterministic_and_realistic():
    a = synthetic_market(40, 300, seed=11)
    b = synthetic_market(40, 300, seed=11)
    pd.testing.assert_frame_equal(a, b)
    assert not a.equals(synthetic_market(40, 300, seed=12))
    # one more day leaves earlier raw prices unchanged
    c = synthetic_market(40, 301, seed=11)
    np.testing.assert_array_equal(c[c["Date"] <= a["Date"].max()]["Close"].to_numpy(),
                                  a["Close"].to_numpy())
    bars = canonical_from_yahoo(a)
    assert len(bars) == 40 * 300
    assert (bars["factor"] < 1).any(), "some stocks split, so factor is not always 1"
    assert (bars["high"] >= bars[["open", "close"]].max(axis=1) - 1e-9).all()
    assert (bars["low"] <= bars[["open", "close"]].min(axis=1) + 1e-9).all()
    rets = bars.pivot(index="date", columns="instrument", values="close").pct_change().iloc[1:]
    corr = rets.corr().to_numpy()[np.triu_indices(40, 1)]
    assert corr.mean() > 0.1, "a market factor correlates the stocks"
    market = rets.mean(axis=1)
    vol = market.rolling(20).std().dropna()
    assert vol.max() > 1.8 * vol.min(), "volatility regimes"
    assert (bars["volume"] > 0).all()


def test_synthetic_has_learnable_signal():
    """The weekly reversal shows in the next-day label, so models have something to learn."""
    bars = canonical_from_yahoo(synthetic_market(60, 400, seed=3))
    close = bars.pivot(index="date", columns="instrument", values="close")
    past = close / close.shift(5) - 1
    label = close.shift(-2) / close.shift(-1) - 1
    ic = past.iloc[10:-5].corrwith(label.iloc[10:-5], axis=1).mean()
    assert ic < -0.02


def test_shared_csv_sample_reads(tmp_path):
    folder = shared_file("sp500_csv_sample")
    bars = canonical(folder)
    assert bars["instrument"].nunique() == 12
    assert (bars["date"].dt.year.between(2015, 2020)).all()
    aal = bars[bars["instrument"] == "AAL"].iloc[0]
    # first AAL row: Adj Close 47.15082550048828 / Close 49.58000183105469
    assert aal["close"] == pytest.approx(47.15082550048828)
    assert aal["factor"] == pytest.approx(47.15082550048828 / 49.58000183105469)
    assert aal["open"] == pytest.approx(51.060001373291016 * aal["factor"])
    assert aal["volume"] == pytest.approx(18261300.0 / aal["factor"])
    assert aal["vwap"] == pytest.approx((51.45000076293945 + 49.20000076293945
                                         + 49.58000183105469) / 3 * aal["factor"])

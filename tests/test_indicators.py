"""Indicators: TA-Lib parity, own indicators against pandas, incremental == full.

``compute_indicators`` takes its values from TA-Lib; ``update_indicators`` from a
streaming re-implementation of TA-Lib's arithmetic (the module's ``_kernel``). So
``update_indicators({}, bars)``, which runs that kernel over the whole history, is
checked against TA-Lib on real bars and on random ones, and split/incremental runs
against full runs. Tolerance: relative 1e-9 with an equal NaN pattern (``same``).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import talib
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cluster.config import IndicatorParams
from cluster.features import indicators as ind
from cluster.sources.adjust import yahoo_to_canonical

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DEV = DATA / "sp500_5yr_dev.parquet"
COLS = ind.indicator_columns()
OWN = ["vwap_20", "hv_20", "bb_width", "bb_pctb"]
# Parameter sets the property tests draw from: the defaults, the smallest windows
# TA-Lib accepts (with acceleration > maximum, which TA-Lib caps), and long ones.
PARAMS = [
    IndicatorParams(),
    IndicatorParams(sma_windows=[1, 2, 7], ema_windows=[1, 3], bollinger_window=2,
                    bollinger_std=1.0, sar_acceleration=0.3, sar_maximum=0.2, rsi_window=2,
                    stoch_k=1, stoch_slowk=1, stoch_d=1, williams_window=2, cci_window=2,
                    vwap_window=1, atr_window=1, hv_window=2, hv_annualization=52),
    IndicatorParams(sma_windows=[3, 100], ema_windows=[50], bollinger_window=40,
                    bollinger_std=2.5, rsi_window=30, stoch_k=25, stoch_slowk=5, stoch_d=4,
                    williams_window=33, cci_window=45, vwap_window=7, atr_window=21,
                    hv_window=63),
]


def same(actual, expected, rtol: float = 1e-9) -> None:
    """Equal NaN pattern and ``|a - e| <= rtol * max(|a|, |e|)`` elsewhere."""
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    assert a.shape == e.shape
    nan_a, nan_e = np.isnan(a), np.isnan(e)
    assert np.array_equal(nan_a, nan_e), (
        f"NaN pattern differs at {np.argwhere(nan_a != nan_e)[:5].tolist()}")
    with np.errstate(invalid="ignore"):
        ok = nan_a | (np.abs(a - e) <= rtol * np.maximum(np.abs(a), np.abs(e)))
    assert ok.all(), (f"values differ at {np.argwhere(~ok)[:5].tolist()}: "
                      f"{a[~ok][:5]} vs {e[~ok][:5]}")


def frame_same(actual: pd.DataFrame, expected: pd.DataFrame, cols, rtol=1e-9) -> None:
    assert list(actual["instrument"]) == list(expected["instrument"])
    assert np.array_equal(actual["date"].to_numpy(), expected["date"].to_numpy())
    same(actual[cols].to_numpy(), expected[cols].to_numpy(), rtol)


def make_bars(n: int, seed: int, *, name: str = "X", tick: float | None = None,
              flat: float = 0.0, zero_volume: float = 0.0, scale: float = 100.0,
              start: str = "2010-01-04") -> pd.DataFrame:
    """Valid random bars: positive prices, low <= open, close <= high, volume >= 0."""
    rng = np.random.default_rng(seed)
    steps = rng.normal(0, 0.02, n) * (rng.random(n) >= flat)
    close = scale * np.exp(np.cumsum(steps))
    openp = np.r_[close[0], close[:-1]] * np.exp(rng.normal(0, 0.005, n) * (rng.random(n) >= flat))
    high = np.maximum(openp, close) * (1 + np.abs(rng.normal(0, 0.01, n)) * (rng.random(n) < 0.8))
    low = np.minimum(openp, close) * (1 - np.abs(rng.normal(0, 0.01, n)) * (rng.random(n) < 0.8))
    if tick:  # a price grid: ties everywhere (SAR flips, flat windows, equal closes)
        close = np.maximum(np.round(close / tick), 1) * tick
        openp = np.maximum(np.round(openp / tick), 1) * tick
        high = np.maximum(np.ceil(np.maximum(high, np.maximum(openp, close)) / tick) * tick,
                          np.maximum(openp, close))
        low = np.minimum(np.maximum(np.floor(low / tick), 1) * tick, np.minimum(openp, close))
    volume = np.round(rng.lognormal(12, 1, n)) * (rng.random(n) >= zero_volume)
    vwap = np.where(rng.random(n) < 0.5, (high + low + close) / 3,
                    low + rng.random(n) * (high - low))
    return pd.DataFrame({
        "instrument": name, "date": pd.bdate_range(start, periods=n), "open": openp,
        "high": high, "low": low, "close": close, "volume": volume,
        "factor": 1.0, "vwap": vwap})


# ------------------------------------------------------------------ real bars
@pytest.fixture(scope="module")
def real_bars() -> pd.DataFrame:
    if not DEV.exists():
        pytest.skip(f"shared market data absent: {DEV} (the project expects ../shared/data)")
    bars = yahoo_to_canonical(pd.read_parquet(DEV))
    # The download keeps a duplicated date (see the data README); one row per day.
    bars = bars.drop_duplicates(["instrument", "date"], keep="first")
    return bars.sort_values(["instrument", "date"], kind="stable").reset_index(drop=True)


@pytest.fixture(scope="module")
def real_full(real_bars) -> pd.DataFrame:
    return ind.compute_indicators(real_bars)


def test_real_bars_wiring_is_talib(real_bars, real_full):
    """The full run's TA-Lib columns are exactly what TA-Lib returns per instrument."""
    for name in ["AAL", "CSRA", real_bars["instrument"].iloc[-1]]:
        sel = (real_bars["instrument"] == name).to_numpy()
        b, f = real_bars[sel], real_full[sel]
        h, l, c, v = (b[k].to_numpy() for k in ("high", "low", "close", "volume"))
        up, mid, low = talib.BBANDS(c, 20, 2.0, 2.0, 0)
        slowk, slowd = talib.STOCH(h, l, c, 14, 3, 0, 3, 0)
        expected = {"sma_5": talib.SMA(c, 5), "sma_60": talib.SMA(c, 60),
                    "ema_26": talib.EMA(c, 26), "bb_mid": mid, "bb_upper": up,
                    "bb_lower": low, "sar": talib.SAR(h, l, 0.02, 0.2),
                    "rsi_14": talib.RSI(c, 14), "stoch_k": slowk, "stoch_d": slowd,
                    "willr_14": talib.WILLR(h, l, c, 14), "cci_20": talib.CCI(h, l, c, 20),
                    "obv": talib.OBV(c, v), "ad": talib.AD(h, l, c, v),
                    "atr_14": talib.ATR(h, l, c, 14)}
        for col, values in expected.items():
            np.testing.assert_array_equal(f[col].to_numpy(), values, err_msg=f"{name} {col}")


def test_real_bars_streaming_kernel_equals_talib(real_bars, real_full):
    """The incremental kernel run over every instrument's whole history (an update
    from no state) reproduces TA-Lib."""
    frame, states = ind.update_indicators({}, real_bars)
    frame_same(frame, real_full, COLS)
    assert set(states) == set(real_bars["instrument"])


def test_real_bars_vwap_against_pandas(real_bars, real_full):
    g = real_bars.groupby("instrument", sort=False)
    pv = (real_bars["vwap"] * real_bars["volume"]).groupby(real_bars["instrument"], sort=False)
    num = pv.transform(lambda x: x.rolling(20).sum())
    den = g["volume"].transform(lambda x: x.rolling(20).sum())
    expected = (num / den).where(den != 0)
    assert (den == 0).any(), "the data should hold zero-volume windows"
    same(real_full["vwap_20"], expected, rtol=1e-6)
    assert real_full.loc[den == 0, "vwap_20"].isna().all()


def test_real_bars_hv_against_pandas(real_bars, real_full):
    logret = np.log(real_bars["close"]).groupby(real_bars["instrument"], sort=False).diff()
    std = logret.groupby(real_bars["instrument"], sort=False).transform(
        lambda x: x.rolling(20).std(ddof=1))
    expected = std * np.sqrt(252)
    same(real_full["hv_20"], expected, rtol=1e-6)


def test_real_bars_band_ratios(real_bars, real_full):
    up, low, mid = real_full["bb_upper"], real_full["bb_lower"], real_full["bb_mid"]
    same(real_full["bb_width"], (up - low) / mid, rtol=1e-12)
    same(real_full["bb_pctb"], ((real_bars["close"] - low) / (up - low)).where(up != low),
         rtol=1e-12)


def test_real_bars_warmup(real_bars, real_full):
    warm = ind.indicator_warmup()
    for name, rows in real_full.groupby("instrument", sort=False):
        for col in COLS:
            values = rows[col].to_numpy()
            k = warm[col]
            assert np.isnan(values[:k]).all(), (name, col)
            # VWAP is NaN in zero-volume windows too, %b where the band is flat.
            if col not in ("vwap_20", "bb_pctb") and len(values) > k:
                assert not np.isnan(values[k:]).any(), (name, col)


def test_real_bars_split_and_daily_updates(real_bars, real_full):
    """History to mid-2017 in one go, then the rest; then the last 5 days one by one,
    the states passed back in process and through JSON."""
    cut = pd.Timestamp("2017-06-30")
    head = (real_bars["date"] <= cut).to_numpy()
    _, states = ind.compute_indicators_with_state(real_bars[head])
    frame, _ = ind.update_indicators(states, real_bars[~head])
    frame_same(frame, real_full[~head], COLS)

    days = np.sort(real_bars["date"].unique())[-5:]
    early = (real_bars["date"] < days[0]).to_numpy()
    _, warm = ind.compute_indicators_with_state(real_bars[early])
    cold = json.loads(json.dumps(warm, allow_nan=False))
    for day in days:
        sel = (real_bars["date"] == day).to_numpy()
        frame_w, warm = ind.update_indicators(warm, real_bars[sel])
        frame_c, cold = ind.update_indicators(cold, real_bars[sel])
        frame_same(frame_w, real_full[sel], COLS)
        frame_same(frame_c, real_full[sel], COLS)
        cold = json.loads(json.dumps(cold, allow_nan=False))
    _, final = ind.compute_indicators_with_state(real_bars)
    assert json.loads(json.dumps(warm)) == json.loads(json.dumps(final))


# ------------------------------------------------------------------ properties
@st.composite
def bar_series(draw, min_size=1, max_size=160):
    n = draw(st.integers(min_size, max_size))
    return make_bars(
        n, draw(st.integers(0, 2**32 - 1)),
        tick=draw(st.sampled_from([None, None, 0.01, 0.5])),
        flat=draw(st.sampled_from([0.0, 0.0, 0.3, 0.9])),
        zero_volume=draw(st.sampled_from([0.0, 0.1, 0.8, 1.0])),
        scale=draw(st.sampled_from([0.05, 1.0, 100.0, 5e4])))


@st.composite
def native_bars(draw, max_size=40):
    """Short series drawn value by value, so Hypothesis can shrink them and hit
    equal and nearly equal prices by itself."""
    n = draw(st.integers(2, max_size))
    price = st.floats(0.01, 1e4, allow_nan=False, allow_infinity=False)
    closes = draw(st.lists(price, min_size=n, max_size=n))
    opens = draw(st.lists(price, min_size=n, max_size=n))
    ups = draw(st.lists(st.sampled_from([0.0, 0.0, 0.01, 0.5, 3.0]), min_size=n, max_size=n))
    downs = draw(st.lists(st.sampled_from([0.0, 0.0, 0.01, 0.5, 0.99]), min_size=n,
                          max_size=n))
    volume = draw(st.lists(st.one_of(st.just(0.0), st.floats(0, 1e9)), min_size=n,
                           max_size=n))
    o, c = np.array(opens), np.array(closes)
    high = np.maximum(o, c) * (1 + np.array(ups))
    low = np.minimum(o, c) * (1 - np.array(downs))
    return pd.DataFrame({
        "instrument": "X", "date": pd.bdate_range("2015-01-01", periods=n), "open": o,
        "high": high, "low": low, "close": c, "volume": volume, "factor": 1.0,
        "vwap": (high + low + c) / 3})


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bars=st.one_of(bar_series(min_size=2), native_bars()), data=st.data())
def test_incremental_equals_full(bars, data):
    params = data.draw(st.sampled_from(PARAMS), label="params")
    cols = ind.indicator_columns(params)
    full = ind.compute_indicators(bars, params)
    n = len(bars)

    # The streaming kernel from scratch equals TA-Lib.
    frame, _ = ind.update_indicators({}, bars, params)
    frame_same(frame, full, cols)

    # State after a random head, then the whole tail at once.
    split = data.draw(st.integers(1, n - 1), label="split")
    head_frame, states = ind.compute_indicators_with_state(bars.iloc[:split], params)
    frame_same(head_frame, full.iloc[:split], cols, rtol=0.0)
    frame, _ = ind.update_indicators(states, bars.iloc[split:], params)
    frame_same(frame, full.iloc[split:], cols)

    # Several consecutive one-row updates, the state once through JSON.
    for i in range(split, min(n, split + 4)):
        if i == split + 1:
            states = json.loads(json.dumps(states, allow_nan=False))
        frame, states = ind.update_indicators(states, bars.iloc[i:i + 1], params)
        frame_same(frame, full.iloc[i:i + 1], cols)
        assert states["X"]["n"] == i + 1


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seeds=st.lists(st.integers(0, 2**32 - 1), min_size=4, max_size=4),
       sizes=st.lists(st.integers(1, 90), min_size=4, max_size=4), data=st.data())
def test_many_instruments_do_not_leak(seeds, sizes, data):
    """Instruments in one frame give what each gives alone; in an update, one is new
    (no state), one has no new rows (its state passes through untouched)."""
    parts = [make_bars(n, seed, name=f"I{j}", tick=0.5 if j % 2 else None)
             for j, (n, seed) in enumerate(zip(sizes, seeds))]
    bars = pd.concat(parts, ignore_index=True)
    full = ind.compute_indicators(bars)
    for part in parts:
        alone = ind.compute_indicators(part)
        mine = full[(full["instrument"] == part["instrument"].iloc[0]).to_numpy()]
        frame_same(mine.reset_index(drop=True), alone, COLS, rtol=0.0)

    cuts = [data.draw(st.integers(0, len(p)), label=f"cut{j}") for j, p in enumerate(parts)]
    cuts[0] = 0                 # I0: new instrument, no state
    cuts[1] = len(parts[1])     # I1: no new rows
    head = pd.concat([p.iloc[:c] for p, c in zip(parts, cuts)], ignore_index=True)
    tail = pd.concat([p.iloc[c:] for p, c in zip(parts, cuts)], ignore_index=True)
    _, states = ind.compute_indicators_with_state(head)
    before = json.dumps(states, sort_keys=True)
    frame, new_states = ind.update_indicators(states, tail)
    assert json.dumps(states, sort_keys=True) == before  # input untouched
    assert new_states["I1"] is states["I1"]
    assert set(new_states) == {p["instrument"].iloc[0] for p in parts}
    expected = pd.concat(
        [full[(full["instrument"] == p["instrument"].iloc[0]).to_numpy()].iloc[c:]
         for p, c in zip(parts, cuts)], ignore_index=True)
    frame_same(frame.reset_index(drop=True), expected, COLS)


# ------------------------------------------------------------------ edge cases
def test_instrument_shorter_than_longest_window():
    bars = make_bars(12, 7)
    full = ind.compute_indicators(bars)
    assert full["sma_60"].isna().all() and full["hv_20"].isna().all()
    assert full["sma_5"].notna().sum() == 8 and full["rsi_14"].isna().all()
    assert full["sar"].notna().sum() == 11 and full["obv"].notna().all()
    _, states = ind.compute_indicators_with_state(bars.iloc[:3])
    frame, states = ind.update_indicators(states, bars.iloc[3:])
    frame_same(frame, full.iloc[3:], COLS)
    one = make_bars(1, 3)  # a single row: only OBV and A/D exist
    f1 = ind.compute_indicators(one)
    assert f1[COLS].notna().sum().to_dict() == {c: int(c in ("obv", "ad")) for c in COLS}


def test_zero_volume_windows_give_nan_vwap():
    bars = make_bars(60, 11)
    bars.loc[10:39, "volume"] = 0.0   # rows 29..39 have all-zero 20-row windows
    full = ind.compute_indicators(bars)
    vwap = full["vwap_20"]
    assert vwap.iloc[29:40].isna().all()
    assert vwap.iloc[19:29].notna().all() and vwap.iloc[40:].notna().all()
    pv = (bars["vwap"] * bars["volume"]).rolling(20).sum()
    same(vwap.iloc[40:], (pv / bars["volume"].rolling(20).sum()).iloc[40:], rtol=1e-9)
    _, states = ind.compute_indicators_with_state(bars.iloc[:25])
    frame, _ = ind.update_indicators(states, bars.iloc[25:])
    frame_same(frame, full.iloc[25:], COLS)


def test_constant_prices_follow_talib():
    n = 80
    bars = make_bars(n, 5)
    for c in ("open", "high", "low", "close", "vwap"):
        bars[c] = 42.5
    full = ind.compute_indicators(bars)
    after = full.iloc[60:]
    # Zero range: TA-Lib's WILLR and STOCH answer 0, so do we; CCI and RSI too.
    for col in ("willr_14", "stoch_k", "stoch_d", "cci_20", "rsi_14", "atr_14", "hv_20",
                "bb_width"):
        assert (after[col] == 0.0).all(), col
    assert after["bb_pctb"].isna().all()          # flat band: %b undefined
    assert (after["vwap_20"] == 42.5).all() and (after["sma_60"] == 42.5).all()
    h, l, c = (bars[k].to_numpy() for k in ("high", "low", "close"))
    np.testing.assert_array_equal(full["willr_14"], talib.WILLR(h, l, c, 14))
    np.testing.assert_array_equal(full["stoch_k"], talib.STOCH(h, l, c, 14, 3, 0, 3, 0)[0])
    frame, _ = ind.update_indicators({}, bars)
    frame_same(frame, full, COLS, rtol=0.0)
    _, states = ind.compute_indicators_with_state(bars.iloc[:50])
    frame, _ = ind.update_indicators(states, bars.iloc[50:])
    frame_same(frame, full.iloc[50:], COLS, rtol=0.0)


def test_update_skips_known_rows_and_empty_input():
    bars = make_bars(40, 9)
    full = ind.compute_indicators(bars)
    _, states = ind.compute_indicators_with_state(bars.iloc[:30])
    frame, new = ind.update_indicators(states, bars.iloc[25:])   # rows 25..29 are known
    assert frame.index.tolist() == list(range(30, 40))
    frame_same(frame, full.iloc[30:], COLS)
    assert new["X"]["n"] == 40 and new["X"]["last_date"] == str(bars["date"].iloc[-1].date())
    frame, same_states = ind.update_indicators(states, bars.iloc[:30])
    assert len(frame) == 0 and same_states == states
    frame, same_states = ind.update_indicators(states, bars.iloc[:0])
    assert list(frame.columns) == ["instrument", "date", *COLS] and same_states == states


def test_invalid_input_is_refused():
    bars = make_bars(30, 1)
    two = pd.concat([bars.assign(instrument="A"), bars.assign(instrument="B")],
                    ignore_index=True)
    with pytest.raises(ValueError, match="contiguous"):
        ind.compute_indicators(two.iloc[[0, 1, 30, 2, 31]])
    with pytest.raises(ValueError, match="strictly increase"):
        ind.compute_indicators(bars.iloc[[0, 2, 1]])
    with pytest.raises(ValueError, match="strictly increase"):
        ind.compute_indicators(bars.iloc[[0, 1, 1, 2]])
    with pytest.raises(ValueError, match="lack column"):
        ind.compute_indicators(bars.drop(columns="vwap"))
    _, states = ind.compute_indicators_with_state(bars.iloc[:20])
    with pytest.raises(ValueError, match="other indicator params"):
        ind.update_indicators(states, bars.iloc[20:], IndicatorParams(rsi_window=10))
    with pytest.raises(ValueError, match="rsi_window"):
        ind.indicator_columns(IndicatorParams(rsi_window=1))


def test_output_shape_and_order():
    bars = pd.concat([make_bars(30, 2, name="B"), make_bars(20, 3, name="A")],
                     ignore_index=True)
    bars.index = pd.RangeIndex(100, 150)
    full = ind.compute_indicators(bars)
    assert full.index.equals(bars.index)
    assert list(full.columns) == ["instrument", "date", *COLS]
    assert full["instrument"].tolist() == bars["instrument"].tolist()
    assert (full[COLS].dtypes == np.float64).all()


def test_columns_definitions_and_state_format():
    assert COLS == ["sma_5", "sma_10", "sma_20", "sma_60", "ema_12", "ema_26", "bb_mid",
                    "bb_upper", "bb_lower", "bb_width", "bb_pctb", "sar", "rsi_14",
                    "stoch_k", "stoch_d", "willr_14", "cci_20", "vwap_20", "obv", "ad",
                    "atr_14", "hv_20"]
    d1, d2 = ind.indicator_definitions(), ind.indicator_definitions(IndicatorParams())
    assert json.dumps(d1, sort_keys=True) == json.dumps(d2, sort_keys=True)
    assert [c["name"] for c in d1["columns"]] == COLS
    other = ind.indicator_definitions(IndicatorParams(sma_windows=[5, 10, 20, 120]))
    assert json.dumps(other, sort_keys=True) != json.dumps(d1, sort_keys=True)
    assert ind.indicator_columns(IndicatorParams(ema_windows=[9]))[4] == "ema_9"

    _, states = ind.compute_indicators_with_state(make_bars(70, 4))
    state = states["X"]
    json.dumps(states, allow_nan=False)
    assert set(state) == {"version", "spec", "n", "last_date", "values"}
    layout = ind.tail_layout()
    assert len(state["values"]) == sum(layout.values()) + len(ind.state_fields())
    assert max(layout.values()) == ind.indicator_lookback() == 59
    named = ind.describe_state(state)
    assert list(named["tail"]) == list(ind.TAIL_COLUMNS)
    assert named["tail"]["close"][-1] == make_bars(70, 4)["close"].iloc[-1]
    assert set(named["carry"]) == set(ind.state_fields())


def test_replica_check_refuses_another_talib(monkeypatch):
    """Were the installed TA-Lib to compute otherwise than the kernel replicates,
    stateful calls refuse rather than drift from full runs."""
    params = IndicatorParams(rsi_window=17)
    real_rsi = talib.RSI
    monkeypatch.setattr(ind.talib, "RSI", lambda c, n: real_rsi(c, n) * (1 + 1e-6))
    ind._check_replica.cache_clear()
    try:
        with pytest.raises(RuntimeError, match="rsi_17"):
            ind.update_indicators({}, make_bars(30, 1), params)
    finally:
        ind._check_replica.cache_clear()


def test_rebuilt_or_copied_states_are_read_from_their_lists():
    bars = make_bars(90, 21, tick=0.01)
    full = ind.compute_indicators(bars)
    _, states = ind.compute_indicators_with_state(bars.iloc[:70])
    copied = {k: dict(v, values=list(v["values"])) for k, v in states.items()}
    rebuilt = {k: {**v, "n": v["n"]} for k, v in states.items()}
    for variant in (states, copied, rebuilt, json.loads(json.dumps(states))):
        frame, _ = ind.update_indicators(variant, bars.iloc[70:])
        frame_same(frame, full.iloc[70:], COLS)
    ind.clear_state_memo()
    frame, _ = ind.update_indicators(states, bars.iloc[70:])
    frame_same(frame, full.iloc[70:], COLS)

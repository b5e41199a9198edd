"""Indicators: TA-Lib parity, own indicators against pandas, incremental == full.

One kernel computes the indicators in production, full runs and updates alike;
TA-Lib is its oracle here: bit-equal on every instrument of the shared bars,
relative 1e-9 with an equal NaN pattern (``same``) on random ones and on a probe
series of hard cases. Split/incremental runs are checked against full runs.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import talib
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cluster.config import IndicatorParams
from cluster.features import indicators as ind
from cluster.features.indicators import IndicatorStates
from cluster.features.indicators.spec import spec as spec_of
from cluster.sources.adjust import yahoo_to_canonical

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DEV = DATA / "sp500_5yr_dev.parquet"
COLS = ind.indicator_columns()
ROOT = Path(__file__).resolve().parents[1]
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
        ok = nan_a | (a == e) | (np.abs(a - e) <= rtol * np.maximum(np.abs(a), np.abs(e)))
    assert ok.all(), (f"values differ at {np.argwhere(~ok)[:5].tolist()}: "
                      f"{a[~ok][:5]} vs {e[~ok][:5]}")


def frame_same(actual: pd.DataFrame, expected: pd.DataFrame, cols, rtol=1e-9) -> None:
    assert list(actual["instrument"]) == list(expected["instrument"])
    assert np.array_equal(actual["date"].to_numpy(), expected["date"].to_numpy())
    same(actual[cols].to_numpy(), expected[cols].to_numpy(), rtol)


def talib_reference(bars: pd.DataFrame, params: IndicatorParams | None = None
                    ) -> tuple[np.ndarray, list[str]]:
    """TA-Lib's values, instrument by instrument (plus the band ratios derived from
    its bands), for every column TA-Lib has: (rows x columns, column names)."""
    s = spec_of(params)
    cols = [c for c in s.columns if not c.startswith(("vwap_", "hv_"))]
    out = np.full((len(bars), len(cols)), np.nan)
    inst = bars["instrument"].to_numpy()
    starts = np.flatnonzero(np.r_[True, inst[1:] != inst[:-1]]).tolist() + [len(bars)]
    for a, b in zip(starts[:-1], starts[1:]):
        h, l, c, v = (bars[k].to_numpy(dtype=np.float64)[a:b]
                      for k in ("high", "low", "close", "volume"))
        up, mid, low = talib.BBANDS(c, s.bb_n, s.bb_dev, s.bb_dev, 0)
        slowk, slowd = talib.STOCH(h, l, c, s.st_k, s.st_sk, 0, s.st_d, 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            width, pctb = (up - low) / mid, np.where(up != low, (c - low) / (up - low), np.nan)
        values = ([talib.SMA(c, w) for w in s.sma] + [talib.EMA(c, w) for w in s.ema] + [
            mid, up, low, width, pctb, talib.SAR(h, l, s.sar_acc, s.sar_max),
            talib.RSI(c, s.rsi_n), slowk, slowd, talib.WILLR(h, l, c, s.wr_n),
            talib.CCI(h, l, c, s.cci_n), talib.OBV(c, v), talib.AD(h, l, c, v),
            talib.ATR(h, l, c, s.atr_n)])
        out[a:b] = np.column_stack(values)
    return out, cols


def roundtrip(states: IndicatorStates) -> IndicatorStates:
    """Through the table form a cache stores (Arrow IPC bytes and back)."""
    import pyarrow as pa
    sink = pa.BufferOutputStream()
    table = states.to_arrow()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    return IndicatorStates.from_arrow(pa.ipc.open_stream(sink.getvalue()).read_all())


def probe_bars() -> pd.DataFrame:
    """A fixed two-instrument series with the hard cases: ties on a price grid,
    flat stretches, zero volume, a close outside its bar, long enough to re-anchor
    BBANDS."""
    rng = np.random.default_rng(20240229)
    frames = []
    for name, n in (("P1", 700), ("P2", 90)):
        close = np.round(100 * np.exp(np.cumsum(rng.normal(0, 0.02, n))), 1)
        close[30:60] = close[30]
        high = close + np.round(rng.uniform(0, 1.5, n), 1) * (rng.random(n) < 0.7)
        low = close - np.round(rng.uniform(0, 1.5, n), 1) * (rng.random(n) < 0.7)
        close[75] = high[75] + 0.1
        volume = np.round(rng.uniform(0, 1e6, n)) * (rng.random(n) < 0.9)
        volume[40:70] = 0.0
        frames.append(pd.DataFrame({
            "instrument": name, "date": pd.bdate_range("2001-01-01", periods=n),
            "high": high, "low": np.maximum(low, 0.1), "close": close,
            "volume": volume, "vwap": (high + low + close) / 3}))
    return pd.concat(frames, ignore_index=True)


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


def test_real_bars_equal_talib_bit_for_bit(real_bars, real_full):
    """On every instrument of the shared bars the kernel's TA-Lib columns are exactly
    TA-Lib's (and the band ratios exactly the ones derived from its bands)."""
    want, cols = talib_reference(real_bars)
    got = real_full[cols].to_numpy()
    assert np.array_equal(np.isnan(got), np.isnan(want))
    bad = ~np.isnan(want) & (got.view(np.int64) != want.view(np.int64))
    assert not bad.any(), f"not bit-equal in {sorted({cols[j] for j in np.nonzero(bad)[1]})}"


def test_installed_talib_is_the_one_the_kernel_replicates():
    """The definitions (and so the feature-set id) name the TA-Lib whose arithmetic
    the kernel reproduces; the oracle here must be that one."""
    installed = talib.__ta_version__
    installed = installed.decode() if isinstance(installed, bytes) else str(installed)
    assert installed.split()[0] == ind.TALIB_VERSION
    assert ind.indicator_definitions()["library"].startswith(f"TA-Lib {ind.TALIB_VERSION} ")


def test_probe_series_equals_talib_for_every_params():
    """Hard cases (ties, flat stretches, zero volume, a close outside its bar, a
    BBANDS re-anchor) for each parameter set the properties draw from."""
    bars = probe_bars()
    for params in PARAMS:
        want, cols = talib_reference(bars, params)
        same(ind.compute_indicators(bars, params)[cols], want)


def test_production_code_does_not_import_talib():
    """TA-Lib is the tests' oracle only (a test extra), never imported by the package."""
    imports = re.compile(r"^\s*(import|from)\s+talib\b", re.MULTILINE)
    for package in ("cluster", "jobs", "serving", "tuning"):
        for path in (ROOT / package).rglob("*.py"):
            assert not imports.search(path.read_text()), path


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
    frame_same(frame, real_full[~head], COLS, rtol=0.0)

    days = np.sort(real_bars["date"].unique())[-5:]
    early = (real_bars["date"] < days[0]).to_numpy()
    _, warm = ind.compute_indicators_with_state(real_bars[early])
    cold = roundtrip(warm)
    for day in days:
        sel = (real_bars["date"] == day).to_numpy()
        frame_w, warm = ind.update_indicators(warm, real_bars[sel])
        frame_c, cold = ind.update_indicators(cold, real_bars[sel])
        frame_same(frame_w, real_full[sel], COLS, rtol=0.0)
        frame_same(frame_c, real_full[sel], COLS, rtol=0.0)
        cold = roundtrip(cold)
    _, final = ind.compute_indicators_with_state(real_bars)
    assert warm.equals(final) and cold.equals(final)


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

    # The kernel over the whole history equals TA-Lib (its oracle).
    want, talib_cols = talib_reference(bars, params)
    same(full[talib_cols].to_numpy(), want)

    # State after a random head, then the whole tail at once.
    split = data.draw(st.integers(1, n - 1), label="split")
    head_frame, states = ind.compute_indicators_with_state(bars.iloc[:split], params)
    frame_same(head_frame, full.iloc[:split], cols, rtol=0.0)
    frame, _ = ind.update_indicators(states, bars.iloc[split:], params)
    frame_same(frame, full.iloc[split:], cols, rtol=0.0)

    # Several consecutive one-row updates, the state once through its table form.
    for i in range(split, min(n, split + 4)):
        if i == split + 1:
            states = roundtrip(states)
        frame, states = ind.update_indicators(states, bars.iloc[i:i + 1], params)
        frame_same(frame, full.iloc[i:i + 1], cols, rtol=0.0)
        assert states.take(["X"]).n.tolist() == [i + 1]


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
    before = roundtrip(states)
    frame, new_states = ind.update_indicators(states, tail)
    assert states.equals(before)  # input untouched
    assert new_states.take(["I1"]).equals(states.take(["I1"]))
    assert new_states.names.tolist() == sorted(p["instrument"].iloc[0] for p in parts)
    expected = pd.concat(
        [full[(full["instrument"] == p["instrument"].iloc[0]).to_numpy()].iloc[c:]
         for p, c in zip(parts, cuts)], ignore_index=True)
    frame_same(frame.reset_index(drop=True), expected, COLS, rtol=0.0)


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
    named = ind.describe_state(new, "X")
    assert named["n"] == 40 and named["last_date"] == str(bars["date"].iloc[-1].date())
    frame, same_states = ind.update_indicators(states, bars.iloc[:30])
    assert len(frame) == 0 and same_states.equals(states)
    frame, same_states = ind.update_indicators(states, bars.iloc[:0])
    assert list(frame.columns) == ["instrument", "date", *COLS] and same_states.equals(states)


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
    layout = ind.tail_layout()
    assert states.tail.shape == (1, sum(layout.values())) and states.tail.dtype == np.float64
    assert states.carry.shape == (1, len(ind.state_fields()))
    assert np.isfinite(states.tail).all() and np.isfinite(states.carry).all()
    assert max(layout.values()) == ind.indicator_lookback() == 59
    named = ind.describe_state(states, "X")
    assert list(named["tail"]) == list(ind.TAIL_COLUMNS)
    assert named["tail"]["close"][-1] == make_bars(70, 4)["close"].iloc[-1]
    assert set(named["carry"]) == set(ind.state_fields())
    table = states.to_arrow()
    assert table.column_names == ["instrument", "n", "last_date", "tail", "carry"]
    assert IndicatorStates.from_arrow(table).equals(states)


def test_states_take_drop_merge():
    bars = pd.concat([make_bars(40, 1, name="B"), make_bars(30, 2, name="A"),
                      make_bars(35, 3, name="C")], ignore_index=True)
    _, states = ind.compute_indicators_with_state(bars)
    assert states.names.tolist() == ["A", "B", "C"] and "B" in states and "Z" not in states
    assert states.rows(["C", "Z", "A"]).tolist() == [2, -1, 0]
    with pytest.raises(KeyError, match="Z"):
        states.take(["A", "Z"])
    assert states.drop(["B", "Z"]).names.tolist() == ["A", "C"]
    _, newer = ind.compute_indicators_with_state(make_bars(12, 9, name="B"))
    merged = states.merge(newer)
    assert merged.names.tolist() == ["A", "B", "C"]
    assert merged.take(["B"]).equals(newer) and merged.take(["A", "C"]).equals(
        states.take(["A", "C"]))
    assert states.merge(IndicatorStates.empty(IndicatorParams(rsi_window=9))).equals(states)
    with pytest.raises(ValueError, match="other params"):
        states.merge(ind.compute_indicators_with_state(make_bars(12, 9), PARAMS[1])[1])
    with pytest.raises(ValueError, match="twice"):
        IndicatorStates(states.spec, ["A", "A"], [1, 1], [0, 0], np.zeros((2, 3)),
                        np.zeros((2, 2)))
    table = states.to_arrow().replace_schema_metadata({b"indicator_state": b'{"version": 1}'})
    with pytest.raises(ValueError, match="state version 1"):
        IndicatorStates.from_arrow(table)

"""Alpha158 parity with Qlib 0.9.7's own ``Alpha158`` handler, the label, and the
incremental path (LOOKBACK rows of history + new rows == full recompute).

Uses the shared market data (``../shared/data`` beside the repository); every
test skips with the reason when it is absent.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cluster.features import alpha158 as A
from cluster.sources.adjust import yahoo_to_canonical

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
BARS_FILE = DATA / "sp500_5yr_dev.parquet"
REF_FILE = DATA / "qlib_alpha158_reference_dev24.parquet"
MIN_AGREEMENT = 0.995
RTOL, ATOL = 1e-4, 1e-6


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"shared data file {path} is absent (it lives in ../shared/data beside the repo)")
    return path


@pytest.fixture(scope="module")
def grid() -> pd.DataFrame:
    """All dev tickers, converted as the Qlib reference was, on the dev calendar."""
    raw = pd.read_parquet(_need(BARS_FILE))
    raw = raw.drop_duplicates(["Name", "Date"], keep="first")  # as the reference did (STI)
    bars = yahoo_to_canonical(raw)
    calendar = pd.DatetimeIndex(np.sort(bars["date"].unique()))
    return A.reindex_to_calendar(bars, calendar)


@pytest.fixture(scope="module")
def reference() -> pd.DataFrame:
    return pd.read_parquet(_need(REF_FILE))


@pytest.fixture(scope="module")
def ours(grid, reference) -> pd.DataFrame:
    tickers = sorted(reference.index.get_level_values("instrument").unique())
    sub = grid[grid["instrument"].isin(tickers)]
    return A.compute_alpha158(sub)


def _agree(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.astype(np.float32).astype(np.float64)
    b = b.astype(np.float32).astype(np.float64)
    both_nan = np.isnan(a) & np.isnan(b)
    same_inf = np.isinf(a) & np.isinf(b) & (np.sign(a) == np.sign(b))
    with np.errstate(invalid="ignore"):
        close = np.abs(a - b) <= ATOL + RTOL * np.abs(b)
    return both_nan | same_inf | close


def test_names_and_definitions():
    defs = A.alpha158_definitions()
    assert list(defs)[:-1] == list(A.ALPHA158_NAMES) and len(A.ALPHA158_NAMES) == 158
    assert A.ALPHA158_NAMES[0] == "KMID" and A.ALPHA158_NAMES[-1] == "VSUMD60"
    assert defs["KMID"] == "($close-$open)/$open"
    assert defs[A.LABEL_NAME] == "Ref($close, -2)/Ref($close, -1) - 1"
    assert defs == A.alpha158_definitions()  # deterministic (hashed into the feature-set id)


def test_definitions_match_qlib():
    pytest.importorskip("qlib")
    from qlib.contrib.data.handler import Alpha158
    from qlib.contrib.data.loader import Alpha158DL

    conf = {"kbar": {}, "price": {"windows": [0], "feature": ["OPEN", "HIGH", "LOW", "VWAP"]},
            "rolling": {}}
    fields, names = Alpha158DL.get_feature_config(conf)
    defs = A.alpha158_definitions()
    assert list(A.ALPHA158_NAMES) == names
    assert [defs[n] for n in names] == fields
    label_fields, label_names = Alpha158.get_label_config(None)
    assert {A.LABEL_NAME: defs[A.LABEL_NAME]} == dict(zip(label_names, label_fields))


def test_reference_rows_match_our_calendar(ours, reference):
    """The reference used the 482-ticker calendar; ours is the 241-ticker one. For
    the reference instruments both give the same rows (same dates, same gaps)."""
    got = pd.MultiIndex.from_arrays([pd.DatetimeIndex(ours["date"]).as_unit("ns"),
                                     ours["instrument"].astype(object)])
    want = pd.MultiIndex.from_arrays([
        pd.DatetimeIndex(reference.index.get_level_values("datetime")).as_unit("ns"),
        reference.index.get_level_values("instrument").astype(object)])
    assert len(got) == len(want)
    assert got.sort_values().equals(want.sort_values())


def test_parity_with_qlib_reference(ours, reference):
    mine = ours.assign(datetime=pd.DatetimeIndex(ours["date"]).as_unit("ns"),
                       instrument=ours["instrument"].astype(object))
    mine = mine.set_index(["datetime", "instrument"])
    ref_index = pd.MultiIndex.from_arrays([
        pd.DatetimeIndex(reference.index.get_level_values("datetime")).as_unit("ns"),
        reference.index.get_level_values("instrument").astype(object)])
    mine = mine.reindex(ref_index)
    rows = []
    for name in A.ALPHA158_NAMES:
        a = mine[name].to_numpy(dtype=np.float64)
        b = reference[name].to_numpy(dtype=np.float64)
        ok = _agree(a, b)
        exact = (a.astype(np.float32) == b.astype(np.float32)) | (np.isnan(a) & np.isnan(b))
        rows.append((name, ok.mean(), int((~ok).sum()), int((~exact).sum())))
    table = pd.DataFrame(rows, columns=["feature", "agreement", "disagree", "not_bit_equal"])
    table = table.sort_values(["agreement", "not_bit_equal"], ascending=[True, False])
    print(f"\nAlpha158 vs Qlib reference: {len(reference)} rows x 158 features; worst 10:")
    print(table.head(10).to_string(index=False, formatters={"agreement": "{:.4%}".format}))
    bad = table[table["agreement"] < MIN_AGREEMENT]
    assert bad.empty, f"features under {MIN_AGREEMENT:.1%} agreement:\n{bad.to_string()}"


def test_label_by_hand(grid):
    # AET has NaN rows (days it lacks inside its span) and ends early.
    for inst in ["AAL", "AET"]:
        g = grid[grid["instrument"] == inst].reset_index(drop=True)
        out = A.compute_alpha158(g)
        c = g["close"].to_numpy(dtype=np.float32)  # Qlib stores float32
        for i in [0, 1, 17, len(g) // 2, len(g) - 3]:
            want = np.float32(c[i + 2] / c[i + 1] - np.float32(1))
            got = out["LABEL0"].iloc[i]
            if np.isnan(want):
                assert np.isnan(got)
            else:
                assert got == want, (inst, i)
        assert out["LABEL0"].iloc[-2:].isna().all()  # no closes after the last row
        assert out["LABEL0"].dtype == np.float32
    # a label that reaches a missing day is NaN
    g = grid[grid["instrument"] == "AET"].reset_index(drop=True)
    out = A.compute_alpha158(g)
    gap = np.flatnonzero(g["close"].isna().to_numpy())
    assert len(gap)
    assert out["LABEL0"].iloc[gap[0] - 2:gap[0]].isna().all()


def test_output_layout(grid):
    sub = grid[grid["instrument"].isin(["AAL", "CSRA", "AET"])]
    out = A.compute_alpha158(sub)
    assert list(out.columns) == ["instrument", "date", *A.ALPHA158_NAMES, A.LABEL_NAME]
    assert out.index.equals(sub.index)
    assert (out["instrument"].to_numpy() == sub["instrument"].to_numpy()).all()
    assert (out[list(A.ALPHA158_NAMES)].dtypes == np.float32).all()
    # no cross-instrument leakage: one instrument alone gives the same values
    alone = A.compute_alpha158(sub[sub["instrument"] == "CSRA"])
    together = out[out["instrument"] == "CSRA"]
    np.testing.assert_array_equal(alone.iloc[:, 2:].to_numpy(), together.iloc[:, 2:].to_numpy())
    shuffled = pd.concat([sub[sub["instrument"] == "CSRA"], sub[sub["instrument"] != "CSRA"]])
    with pytest.raises(ValueError):
        A.compute_alpha158(shuffled.sample(frac=1.0, random_state=0))


@pytest.mark.parametrize("splits", [
    {"AAL": 1, "AET": 30, "CSRA": 10, "AAP": 61},
    {"AAL": 60, "AET": 100, "CSRA": 16, "AAP": 700},
    {"AAL": 1257, "AET": 228, "CSRA": 0, "AAP": 1000},
])
def test_tail_equals_full(grid, splits):
    """LOOKBACK rows of history + the new rows give the full computation's values."""
    full_parts, hist_parts, n_new = [], [], {}
    for inst, split in splits.items():
        g = grid[grid["instrument"] == inst]
        full_parts.append(A.compute_alpha158(g).iloc[split:])
        hist_parts.append(g.iloc[max(0, split - A.LOOKBACK):])
        n_new[inst] = len(g) - split
    hist = pd.concat(hist_parts)
    tail = A.compute_alpha158_tail(hist, n_new)
    full = pd.concat(full_parts)
    assert tail.index.equals(full.index)
    np.testing.assert_array_equal(tail.iloc[:, 2:].to_numpy(), full.iloc[:, 2:].to_numpy())
    # the plain computation on the short history agrees on those rows too
    again = A.compute_alpha158(hist).loc[full.index]
    np.testing.assert_array_equal(again.iloc[:, 2:].to_numpy(), full.iloc[:, 2:].to_numpy())


def test_lookback_is_tight(grid):
    """One row less of history changes the new rows (ROC60 needs Ref($close, 60))."""
    g = grid[grid["instrument"] == "AAL"]
    split = 600
    full = A.compute_alpha158(g).iloc[split:split + 5]
    short = A.compute_alpha158_tail(g.iloc[split - A.LOOKBACK + 1:split + 5], 5)
    assert not np.array_equal(short["ROC60"].to_numpy(), full["ROC60"].to_numpy(), equal_nan=True)

"""Qlib's Alpha158 factor set, computed without Qlib and with Qlib's values.

The 158 expressions are those of Qlib 0.9.7's ``Alpha158`` handler
(``qlib.contrib.data.loader.Alpha158DL`` with ``kbar``, ``price`` windows ``[0]``
of OPEN/HIGH/LOW/VWAP and every ``rolling`` operator over 5/10/20/30/60 days);
the label is ``Ref($close, -2)/Ref($close, -1) - 1``.

Values follow Qlib's operator semantics, not only its formulas:

* Qlib stores every field as float32, so element-wise operators (``+ - * /``,
  ``Greater``/``Less``, ``Abs``, ``Log``, comparisons, ``Ref``) run in float32;
  rolling operators run in float64 on those float32 inputs, and an expression
  that mixes both is float64 from there on.  Columns come back as float32.
* rolling windows use ``min_periods=1`` and count NaN rows as window rows;
  ``Std`` has ``ddof=1`` (NaN on one value); pandas' rolling aggregations read
  ``inf`` as NaN (this matters for ``CORD``: ``Log(v/Ref(v,1)+1)`` is ``inf``
  after a zero-volume day).
* a comparison with NaN is False, not NaN: ``CNTP``/``CNTN`` count NaN rows
  (and the first row) as "not up"/"not down" days of the window.
* ``IdxMax``/``IdxMin`` are ``np.argmax``/``np.argmin`` + 1 over the window as
  it stands (shorter at an instrument's start): a NaN in the window wins (its
  first position is returned), and ties go to the earliest day.
* ``Rank`` is the percentile rank of the last value among the window's
  non-NaN values (ties averaged); NaN when the last value is NaN.
* ``Quantile`` interpolates linearly among the window's non-NaN values.
* ``Slope``/``Rsquare``/``Resi`` are least squares of the window's non-NaN
  values on their slot positions ``1..N`` (Qlib's Cython ops), computed even
  when the current value is NaN (so ``RSQR`` is defined on a NaN row);
  ``Rsquare`` is NaN where the window's std is within 2e-5 of 0.
* ``Corr`` uses pairwise-complete observations, and is NaN where the std of
  either side's window (each on its own non-NaN values) is within 2e-5 of 0.

Every window is evaluated from its own rows (no running sums carried over the
history).  Against Qlib's own handler on all 241 dev tickers this matches
every feature on >= 99.99% of cells (bit-equal in float32 on all but a few
dozen); the only disagreements are windows in which the volume is 0 on every
day (ARNC late 2016, COL 2019): the true std there is 0, while pandas' running
Welford variance (what Qlib calls) keeps a round-off residual from earlier
days, so Qlib's ``VSTD``/``WVMA`` show e.g. 5.9e10 (residual / 1e-12) where we
give 0.  Because nothing is carried over, a row's values depend only on the
``LOOKBACK`` rows before it:
``compute_alpha158_tail`` on (``LOOKBACK`` rows of history + new rows) gives
exactly the values ``compute_alpha158`` gives for those rows on the full
history.  Instruments are processed as contiguous row blocks of one flat
array: no cross-instrument leakage, any number per call.  The rolling kernels
are in ``alpha158_kernels``.
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from cluster.features import alpha158_kernels as kernels
from cluster.features.label import LABEL_HORIZON, LABEL_NAME, label_expression

WINDOWS = kernels.WINDOWS
# The label's horizon is the setting qlib.label_horizon (see label.py).
LABEL_EXPRESSION = label_expression()
# Rows of earlier history a row needs: Ref($close, 60), and the 60-day windows of
# Std/Mean/Sum/Corr over expressions that already use Ref(..., 1) (59 + 1).
LOOKBACK = 60
# Future rows the default label needs: Ref($close, -2) (a feature set's own is
# ``FeatureSet.label_horizon``).
LOOKAHEAD = LABEL_HORIZON

_KEY = ["instrument", "date"]


# --------------------------------------------------------------------------- #
# Names and expressions (Alpha158DL.get_feature_config, Alpha158's config)
# --------------------------------------------------------------------------- #

def _feature_config() -> tuple[list[str], list[str]]:
    """(expressions, names) exactly as Qlib 0.9.7's Alpha158 handler builds them."""
    fields = [
        "($close-$open)/$open",
        "($high-$low)/$open",
        "($close-$open)/($high-$low+1e-12)",
        "($high-Greater($open, $close))/$open",
        "($high-Greater($open, $close))/($high-$low+1e-12)",
        "(Less($open, $close)-$low)/$open",
        "(Less($open, $close)-$low)/($high-$low+1e-12)",
        "(2*$close-$high-$low)/$open",
        "(2*$close-$high-$low)/($high-$low+1e-12)",
    ]
    names = ["KMID", "KLEN", "KMID2", "KUP", "KUP2", "KLOW", "KLOW2", "KSFT", "KSFT2"]
    for field in ["open", "high", "low", "vwap"]:
        fields.append("$%s/$close" % field)
        names.append(field.upper() + "0")
    w = WINDOWS
    rolling: list[tuple[str, list[str]]] = [
        ("ROC", ["Ref($close, %d)/$close" % d for d in w]),
        ("MA", ["Mean($close, %d)/$close" % d for d in w]),
        ("STD", ["Std($close, %d)/$close" % d for d in w]),
        ("BETA", ["Slope($close, %d)/$close" % d for d in w]),
        ("RSQR", ["Rsquare($close, %d)" % d for d in w]),
        ("RESI", ["Resi($close, %d)/$close" % d for d in w]),
        ("MAX", ["Max($high, %d)/$close" % d for d in w]),
        ("MIN", ["Min($low, %d)/$close" % d for d in w]),
        ("QTLU", ["Quantile($close, %d, 0.8)/$close" % d for d in w]),
        ("QTLD", ["Quantile($close, %d, 0.2)/$close" % d for d in w]),
        ("RANK", ["Rank($close, %d)" % d for d in w]),
        ("RSV", ["($close-Min($low, %d))/(Max($high, %d)-Min($low, %d)+1e-12)" % (d, d, d)
                 for d in w]),
        ("IMAX", ["IdxMax($high, %d)/%d" % (d, d) for d in w]),
        ("IMIN", ["IdxMin($low, %d)/%d" % (d, d) for d in w]),
        ("IMXD", ["(IdxMax($high, %d)-IdxMin($low, %d))/%d" % (d, d, d) for d in w]),
        ("CORR", ["Corr($close, Log($volume+1), %d)" % d for d in w]),
        ("CORD", ["Corr($close/Ref($close,1), Log($volume/Ref($volume, 1)+1), %d)" % d
                  for d in w]),
        ("CNTP", ["Mean($close>Ref($close, 1), %d)" % d for d in w]),
        ("CNTN", ["Mean($close<Ref($close, 1), %d)" % d for d in w]),
        ("CNTD", ["Mean($close>Ref($close, 1), %d)-Mean($close<Ref($close, 1), %d)" % (d, d)
                  for d in w]),
        ("SUMP", ["Sum(Greater($close-Ref($close, 1), 0), %d)/(Sum(Abs($close-Ref($close, 1)), %d)"
                  "+1e-12)" % (d, d) for d in w]),
        ("SUMN", ["Sum(Greater(Ref($close, 1)-$close, 0), %d)/(Sum(Abs($close-Ref($close, 1)), %d)"
                  "+1e-12)" % (d, d) for d in w]),
        ("SUMD", ["(Sum(Greater($close-Ref($close, 1), 0), %d)-Sum(Greater(Ref($close, 1)-$close, 0)"
                  ", %d))/(Sum(Abs($close-Ref($close, 1)), %d)+1e-12)" % (d, d, d) for d in w]),
        ("VMA", ["Mean($volume, %d)/($volume+1e-12)" % d for d in w]),
        ("VSTD", ["Std($volume, %d)/($volume+1e-12)" % d for d in w]),
        ("WVMA", ["Std(Abs($close/Ref($close, 1)-1)*$volume, %d)/(Mean(Abs($close/Ref($close, 1)-1)"
                  "*$volume, %d)+1e-12)" % (d, d) for d in w]),
        ("VSUMP", ["Sum(Greater($volume-Ref($volume, 1), 0), %d)/(Sum(Abs($volume-Ref($volume, 1))"
                   ", %d)+1e-12)" % (d, d) for d in w]),
        ("VSUMN", ["Sum(Greater(Ref($volume, 1)-$volume, 0), %d)/(Sum(Abs($volume-Ref($volume, 1))"
                   ", %d)+1e-12)" % (d, d) for d in w]),
        ("VSUMD", ["(Sum(Greater($volume-Ref($volume, 1), 0), %d)-Sum(Greater(Ref($volume, 1)"
                   "-$volume, 0), %d))/(Sum(Abs($volume-Ref($volume, 1)), %d)+1e-12)" % (d, d, d)
                   for d in w]),
    ]
    for prefix, exprs in rolling:
        fields += exprs
        names += ["%s%d" % (prefix, d) for d in w]
    return fields, names


_FIELDS, _NAMES = _feature_config()
ALPHA158_NAMES: tuple[str, ...] = tuple(_NAMES)
_OUT_NAMES = list(ALPHA158_NAMES) + [LABEL_NAME]
_N_OUT = len(_OUT_NAMES)          # 159
_ROLL0 = kernels.ROLL0            # first rolling column (ROC5)
_LABEL_COL = _N_OUT - 1
assert len(ALPHA158_NAMES) == 158 and ALPHA158_NAMES[0] == "KMID" \
    and ALPHA158_NAMES[-1] == "VSUMD60"


def alpha158_definitions(horizon: int = LABEL_HORIZON) -> dict[str, str]:
    """Name -> Qlib expression for the 158 features (Qlib's order), then LABEL0."""
    out = dict(zip(_NAMES, _FIELDS))
    out[LABEL_NAME] = label_expression(horizon)
    return out


# --------------------------------------------------------------------------- #
# Calendar
# --------------------------------------------------------------------------- #

def reindex_to_calendar(bars: pd.DataFrame, calendar) -> pd.DataFrame:
    """Each instrument onto the calendar days between its own first and last date.

    Days it lacks become rows whose value columns are NaN (Qlib's ``.bin``
    layout). Output sorted by (instrument, date) with a fresh RangeIndex; every
    column of ``bars`` is kept. A bar dated off the calendar, or two bars of one
    instrument on one date, raise ``ValueError``.
    """
    return reindex_with_rows(bars, calendar)[0]


def reindex_with_rows(bars: pd.DataFrame, calendar) -> tuple[pd.DataFrame, np.ndarray]:
    """``reindex_to_calendar`` and, for each row of ``bars``, its row in the output."""
    cal = pd.DatetimeIndex(pd.to_datetime(calendar)).unique().sort_values()
    cal_ns = cal.as_unit("ns").asi8
    date_col = pd.to_datetime(bars["date"])
    out_dtype = date_col.dtype
    if len(bars) == 0:
        return bars.iloc[0:0].reset_index(drop=True), np.zeros(0, dtype=np.int64)
    codes, uniques = pd.factorize(bars["instrument"], sort=True)
    d_ns = pd.DatetimeIndex(date_col).as_unit("ns").asi8
    pos = np.searchsorted(cal_ns, d_ns)
    pos_c = np.minimum(pos, len(cal_ns) - 1)
    off = (pos >= len(cal_ns)) | (cal_ns[pos_c] != d_ns)
    if off.any():
        bad = bars.iloc[int(np.flatnonzero(off)[0])]
        raise ValueError(f"bar of {bad['instrument']} on {bad['date']} is not a calendar day")
    n_inst = len(uniques)
    first = np.full(n_inst, np.iinfo(np.int64).max, dtype=np.int64)
    last = np.full(n_inst, -1, dtype=np.int64)
    np.minimum.at(first, codes, pos)
    np.maximum.at(last, codes, pos)
    lengths = last - first + 1
    offsets = np.zeros(n_inst + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    total = int(offsets[-1])
    target = offsets[codes] + (pos - first[codes])
    hits = np.bincount(target, minlength=total)
    if hits.max(initial=0) > 1:
        bad = bars.iloc[int(np.flatnonzero(hits[target] > 1)[0])]
        raise ValueError(f"two bars of {bad['instrument']} on {bad['date']}")
    inst_out = np.repeat(np.arange(n_inst), lengths)
    cal_pos = np.arange(total) - np.repeat(offsets[:-1], lengths) + np.repeat(first, lengths)
    dates = cal_ns[cal_pos].astype("datetime64[ns]")
    if str(out_dtype).startswith("datetime64"):
        dates = dates.astype(out_dtype)
    first_row = np.empty(n_inst, dtype=np.int64)  # a row of each instrument in ``bars``
    first_row[codes[::-1]] = np.arange(len(codes) - 1, -1, -1)
    data = {"instrument": bars["instrument"].array.take(first_row[inst_out]), "date": dates}
    for col in bars.columns:
        if col in _KEY:
            continue
        src = bars[col].to_numpy()
        if src.dtype.kind in "fiub":
            dst = np.full(total, np.nan, dtype=np.float64 if src.dtype.kind != "f" else src.dtype)
        else:
            dst = np.full(total, None, dtype=object)
        dst[target] = src
        data[col] = dst
    return pd.DataFrame(data, columns=list(bars.columns)), target


# --------------------------------------------------------------------------- #
# Driver
# --------------------------------------------------------------------------- #

def _blocks(bars: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(starts, ends) of the instruments' contiguous row blocks; checks the layout."""
    n = len(bars)
    codes, uniques = pd.factorize(bars["instrument"])
    change = np.flatnonzero(codes[1:] != codes[:-1]) + 1
    starts = np.concatenate(([0], change)).astype(np.int64)
    ends = np.concatenate((change, [n])).astype(np.int64)
    if len(starts) != len(uniques):
        raise ValueError("rows of each instrument must be contiguous (sort by instrument, date)")
    if (codes < 0).any():
        raise ValueError("instrument must not be missing")
    dates = pd.to_datetime(bars["date"]).to_numpy().view(np.int64)
    inside = np.ones(n - 1, dtype=bool) if n > 1 else np.zeros(0, dtype=bool)
    inside[change - 1] = False
    if n > 1 and not (dates[1:] > dates[:-1])[inside].all():
        raise ValueError("each instrument's rows must be sorted by strictly increasing date")
    return starts, ends


def _f32(bars: pd.DataFrame, col: str) -> np.ndarray:
    # Qlib's dump_bin stores every field as little-endian float32. Writeable and
    # contiguous, so that the kernels compile for one array type.
    return np.require(bars[col].to_numpy(dtype=np.float32, na_value=np.nan),
                      requirements=["C", "W"])


def _shift1(a: np.ndarray, starts: np.ndarray) -> np.ndarray:
    out = np.empty_like(a)
    out[1:] = a[:-1]
    out[starts] = np.nan
    return out


def _compute(bars: pd.DataFrame, n_new, horizon: int = LABEL_HORIZON) -> pd.DataFrame:
    out, sel = _values(bars, n_new, horizon)
    frame = pd.DataFrame(out.T, columns=_OUT_NAMES, index=bars.index[sel], copy=False)
    frame.insert(0, "date", bars["date"].to_numpy()[sel])
    frame.insert(0, "instrument", bars["instrument"].array.take(sel))
    return frame


def _values(bars: pd.DataFrame, n_new, horizon: int = LABEL_HORIZON
            ) -> tuple[np.ndarray, np.ndarray]:
    """(values: one float32 row per output column, positions of the output rows)."""
    starts, ends = _blocks(bars) if len(bars) else (np.zeros(0, np.int64), np.zeros(0, np.int64))
    if n_new is None:
        firsts = starts.copy()
    else:
        if isinstance(n_new, Mapping):
            names = bars["instrument"].to_numpy()[starts] if len(starts) else []
            nn = np.array([int(n_new.get(nm, 0)) for nm in names], dtype=np.int64)
        else:
            nn = np.broadcast_to(np.asarray(n_new, dtype=np.int64), starts.shape)
        if (nn < 0).any():
            raise ValueError("n_new must be >= 0")
        firsts = np.maximum(starts, ends - nn)
    out_len = ends - firsts
    n_out = int(out_len.sum())
    # the output rows, in input order
    if n_new is None:
        sel = np.arange(len(bars), dtype=np.int64)
    else:
        out_off = np.concatenate(([0], np.cumsum(out_len)[:-1])).astype(np.int64)
        sel = np.arange(n_out, dtype=np.int64) + np.repeat(firsts - out_off, out_len)
    sel_start = np.repeat(starts, out_len)
    sel_end = np.repeat(ends, out_len)

    o, h, l, c = (_f32(bars, k) for k in ("open", "high", "low", "close"))
    v = _f32(bars, "volume")
    if "vwap" in bars.columns:
        vw = _f32(bars, "vwap")
    else:  # canonical bars without a vwap: (high + low + close) / 3 (adjust.default_vwap)
        vw = ((bars["high"] + bars["low"] + bars["close"]) / 3.0).to_numpy(
            dtype=np.float32, na_value=np.nan)
    out = np.empty((_N_OUT, n_out), dtype=np.float32)
    with np.errstate(all="ignore"):
        # ---- element-wise features, float32 as Qlib evaluates them ----
        so, sh, sl, sc, svw = o[sel], h[sel], l[sel], c[sel], vw[sel]
        rng = sh - sl + np.float32(1e-12)
        hi_oc = np.maximum(so, sc)
        lo_oc = np.minimum(so, sc)
        sft = np.float32(2) * sc - sh - sl
        out[0] = (sc - so) / so
        out[1] = (sh - sl) / so
        out[2] = (sc - so) / rng
        out[3] = (sh - hi_oc) / so
        out[4] = (sh - hi_oc) / rng
        out[5] = (lo_oc - sl) / so
        out[6] = (lo_oc - sl) / rng
        out[7] = sft / so
        out[8] = sft / rng
        out[9] = so / sc
        out[10] = sh / sc
        out[11] = sl / sc
        out[12] = svw / sc
        for w, d in enumerate(WINDOWS):   # ROC: Ref($close, d)/$close
            idx = sel - d
            ok = idx >= sel_start
            out[_ROLL0 + w] = np.where(ok, c[np.where(ok, idx, 0)], np.float32(np.nan)) / sc
        i1, i2 = sel + 1, sel + horizon     # LABEL0: Ref($close, -h)/Ref($close, -1) - 1
        c1 = np.where(i1 < sel_end, c[np.minimum(i1, len(c) - 1)], np.float32(np.nan))
        c2 = np.where(i2 < sel_end, c[np.minimum(i2, len(c) - 1)], np.float32(np.nan))
        out[_LABEL_COL] = c2 / c1 - np.float32(1)

        # ---- inputs of the rolling operators (float32, whole blocks) ----
        if n_out:
            cp = _shift1(c, starts)
            vp = _shift1(v, starts)
            dc = c - cp
            posc = np.maximum(dc, np.float32(0))
            negc = np.maximum(cp - c, np.float32(0))
            absc = np.abs(dc)
            gt = (c > cp).astype(np.float32)
            lt = (c < cp).astype(np.float32)
            lv = np.log(v + np.float32(1))
            r1 = c / cp
            lr = np.log(v / vp + np.float32(1))
            lr[np.isinf(lr)] = np.nan        # pandas rolling reads inf as NaN
            wv = np.abs(r1 - np.float32(1)) * v
            wv[np.isinf(wv)] = np.nan
            dv = v - vp
            posv = np.maximum(dv, np.float32(0))
            negv = np.maximum(vp - v, np.float32(0))
            absv = np.abs(dv)
            vden = v + np.float32(1e-12)
            kernels.rolling(c, h, l, vden, v, posc, negc, absc, gt, lt, lv, r1, lr, wv,
                            posv, negv, absv, starts, ends, firsts.astype(np.int64), out)

    return out, sel


def compute_alpha158(bars: pd.DataFrame, horizon: int = LABEL_HORIZON) -> pd.DataFrame:
    """Alpha158 + LABEL0 for every row of ``bars``.

    ``bars``: canonical bars (instrument, date, open, high, low, close, volume,
    vwap, ...) for one or many instruments, already on the calendar
    (``reindex_to_calendar``): each instrument's rows contiguous and sorted by
    date, NaN rows allowed. Returns the same rows and index with columns
    ``instrument``, ``date``, the 158 features and ``LABEL0`` (float32).
    """
    return _compute(bars, None, horizon)


def alpha158_values(bars: pd.DataFrame, horizon: int = LABEL_HORIZON) -> np.ndarray:
    """``compute_alpha158``'s values alone: one float32 row per column (the 158
    features, then LABEL0), one column per row of ``bars``."""
    return _values(bars, None, horizon)[0]


def alpha158_tail_values(bars_with_history: pd.DataFrame, n_new,
                         horizon: int = LABEL_HORIZON) -> tuple[np.ndarray, np.ndarray]:
    """``compute_alpha158_tail``'s values alone, and the positions of its rows in
    ``bars_with_history``."""
    return _values(bars_with_history, n_new, horizon)


def compute_alpha158_tail(bars_with_history: pd.DataFrame, n_new,
                          horizon: int = LABEL_HORIZON) -> pd.DataFrame:
    """Alpha158 + LABEL0 for only the last ``n_new`` rows of each instrument.

    ``n_new``: an int for every instrument, a sequence of ints (one per
    instrument block, in row order), or a mapping instrument -> int (missing
    instruments: 0). With at least ``LOOKBACK`` rows of history before
    those rows, the values equal ``compute_alpha158`` on the full history
    (LABEL0 needs ``horizon`` later rows, so it is NaN on the last ``horizon`` rows
    of an instrument either way). Output rows keep the input order and index.
    """
    return _compute(bars_with_history, n_new, horizon)

"""Classic technical indicators per instrument, with exact incremental updates.

Input is canonical bars (``cluster.schema.BAR_COLUMNS``; this module reads
``instrument, date, high, low, close, volume, vwap``): real trading days, no NaN
rows, one or many instruments, each instrument's rows contiguous and sorted by
date. Output keeps the input's rows and index: ``instrument, date`` and one
float64 column per indicator (``indicator_columns(params)``), NaN during each
indicator's warm-up (``indicator_warmup(params)``).

Where the values come from
--------------------------
* TA-Lib (``talib``; C library 0.8.x) in a full run: SMA, EMA, BBANDS (SMA mid;
  ``bb_mid/upper/lower``), SAR, RSI, STOCH (SMA smoothing; slow %K and %D), WILLR,
  CCI, OBV, AD, ATR.
* Own code, because TA-Lib has no such function: rolling VWAP
  (``sum(vwap*volume) / sum(volume)`` over ``vwap_window`` rows, NaN where the
  window's volume is all zero) and historical volatility (sample std, ddof=1, of
  ``log(close_t / close_{t-1})`` over ``hv_window`` returns, times
  ``sqrt(hv_annualization)``). Both keep compensated (Neumaier) running window
  sums, so that a full run and an incremental run do the very same floating-point
  operations. ``bb_width = (upper - lower) / mid`` and
  ``bb_pctb = (close - lower) / (upper - lower)`` (NaN where the band is flat) are
  derived from the TA-Lib bands.

Incremental updates
-------------------
TA-Lib cannot be seeded with an outside state, and its recursive indicators (EMA,
Wilder RSI/ATR, SAR, OBV, A/D) and running sums (SMA, BBANDS, STOCH smoothing)
depend on the whole history. ``_kernel`` is a streaming re-implementation of the
exact TA-Lib 0.8 arithmetic, read off the shipped library's machine code: explicit
``fma()`` in EMA, ATR (``atr*(n-1)/n + tr*(1-(n-1)/n)``) and SAR; RSI multiplying
by ``1/n``; BBANDS' variance from running sums shifted by a reference value that
is re-anchored on cancellation or every ``32*n`` bars; the scale-relative zero
guards of STOCH, WILLR (clamped to [-100, 0]) and CCI; OBV seeded with the first
volume. On the shipped TA-Lib it is bit-identical (the tests require relative 1e-9);
before the first stateful call per params it is checked against the installed
TA-Lib on a fixed probe series, and a ``RuntimeError`` names the columns if that
TA-Lib computes differently (use ``compute_indicators`` then).
``compute_indicators_with_state`` runs it over the history to capture each
instrument's state; ``update_indicators`` continues from there for the new rows
only, and its values equal a full run over the whole history.

Speed: an update costs a few microseconds per instrument, nearly all of it Python
object handling of the JSON-shaped states. States an update gets straight back
from this module in the same process (the usual daily loop) skip the unboxing: a
small memo (``clear_state_memo``) keeps the numbers of the last few batches of
returned states, keyed by the state objects' identity and re-validated on use.

State (one JSON-serialisable dict per instrument)
-------------------------------------------------
``{"version": 1, "spec": <16 hex>, "n": <rows seen>, "last_date": <ISO date>,
"values": [float, ...]}``

* ``spec``: fingerprint of ``indicator_definitions(params)``; an update with other
  params is refused.
* ``values``: the tail, then the carry, all finite plain floats.
  The tail holds the last rows each column needs, oldest first, one segment per
  column of ``TAIL_COLUMNS`` (raw high, low, close, vwap, volume; derived typical
  price, log return, fast %K, slow %K); ``tail_layout(params)`` gives the segment
  lengths (the longest is ``indicator_lookback(params)``: SMA 60 needs 59 closes,
  the other columns 1-19 rows). An instrument with fewer rows is zero-padded at
  the front; padding is never read.
  The carry is the recursive state, named by ``state_fields(params)``: SMA and
  BBANDS running sums, EMA values, RSI average gain/loss, ATR, SAR trend/SAR/EP/AF,
  STOCH smoothing sums, OBV, A/D, the VWAP and HV compensated sums.

One flat list per instrument keeps an update over a whole universe cheap (a few
C-level list operations per instrument); ``describe_state`` shows a state with
named fields.
"""
from __future__ import annotations

import gc
import hashlib
import json
import math
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from collections import deque
from itertools import chain, repeat
from operator import is_, itemgetter
from typing import Any, Mapping

import numpy as np
import pandas as pd
import talib
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from cluster.config import IndicatorParams

try:  # pandas >= 3: cheap frame assembly from ready blocks
    from pandas.api.internals import create_dataframe_from_blocks as _from_blocks
except ImportError:  # pragma: no cover - older pandas
    _from_blocks = None

__all__ = [
    "STATE_VERSION",
    "TAIL_COLUMNS",
    "compute_indicators",
    "compute_indicators_with_state",
    "describe_state",
    "indicator_columns",
    "indicator_definitions",
    "indicator_lookback",
    "indicator_warmup",
    "clear_state_memo",
    "state_fields",
    "tail_layout",
    "update_indicators",
]

STATE_VERSION = 1
# Bump whenever a formula here changes, so that feature-set ids change with it.
DEFINITIONS_VERSION = 1

BAR_INPUTS = ("instrument", "date", "high", "low", "close", "volume", "vwap")
TAIL_COLUMNS = ("high", "low", "close", "vwap", "volume", "typical", "log_return",
                "fastk", "slowk")
_NCOL = len(TAIL_COLUMNS)
_H, _L, _C, _VW, _VO, _TP, _RET, _FK, _SK = range(_NCOL)

# Fixed part of ``carry``, after one running sum per SMA window and one value per
# EMA window. The kernel addresses these by position (offset ``cb + i``).
_FIXED_FIELDS = (
    "bb_sum", "bb_shift", "bb_dev_sum", "bb_dev_sumsq", "bb_countdown",    # 0-4
    "rsi_avg_gain", "rsi_avg_loss",                                        # 5-6
    "atr",                                                                 # 7
    "sar_is_long", "sar", "sar_ep", "sar_af",                              # 8-11
    "stoch_k_sum", "stoch_d_sum",                                          # 12-13
    "obv", "ad",                                                           # 14-15
    "vwap_pv_sum", "vwap_pv_comp", "vwap_v_sum", "vwap_v_comp",            # 16-19
    "vwap_nonzero",                                                        # 20
    "hv_sum", "hv_sum_comp", "hv_sumsq", "hv_sumsq_comp",                  # 21-24
)
# Fixed output columns, after the SMA and EMA columns (offset ``ob + i``).
_FIXED_OUT = ("bb_mid", "bb_upper", "bb_lower", "bb_width", "bb_pctb", "sar", "rsi",
              "stoch_k", "stoch_d", "willr", "cci", "vwap", "obv", "ad", "atr", "hv")
(_O_BB_MID, _O_BB_UP, _O_BB_LO, _O_BB_W, _O_BB_PB, _O_SAR, _O_RSI, _O_STK, _O_STD,
 _O_WR, _O_CCI, _O_VWAP, _O_OBV, _O_AD, _O_ATR, _O_HV) = range(len(_FIXED_OUT))

_EPS = 1e-14  # TA_EPSILON of TA-Lib 0.8 (TA_IS_ZERO_SCALED)
_TA_VERSION = (talib.__ta_version__.decode() if isinstance(talib.__ta_version__, bytes)
               else str(talib.__ta_version__)).split()[0]  # the C library's, e.g. "0.8.1"


# --------------------------------------------------------------------- params
@dataclass(frozen=True)
class _Spec:
    sma: tuple[int, ...]
    ema: tuple[int, ...]
    bb_n: int
    bb_dev: float
    sar_acc: float
    sar_max: float
    rsi_n: int
    st_k: int
    st_sk: int
    st_d: int
    wr_n: int
    cci_n: int
    vw_n: int
    atr_n: int
    hv_n: int
    hv_ann: int
    columns: tuple[str, ...]
    column_index: pd.Index
    fields: tuple[str, ...]
    seg_len: tuple[int, ...]
    seg_off: tuple[int, ...]
    width: int
    sma_arr: np.ndarray
    ema_arr: np.ndarray
    ipar: np.ndarray
    ipar_own: np.ndarray
    fpar: np.ndarray
    lookback: int
    definitions: dict
    fingerprint: str


def _key(p: IndicatorParams) -> tuple:
    return (tuple(p.sma_windows), tuple(p.ema_windows), p.bollinger_window,
            float(p.bollinger_std), float(p.sar_acceleration), float(p.sar_maximum),
            p.rsi_window, p.stoch_k, p.stoch_slowk, p.stoch_d, p.williams_window,
            p.cci_window, p.vwap_window, p.atr_window, p.hv_window, p.hv_annualization)


def _spec(params: IndicatorParams | None) -> _Spec:
    if params is None:
        return _default_spec()
    return _spec_for(_key(params))


@lru_cache(maxsize=1)
def _default_spec() -> _Spec:
    return _spec_for(_DEFAULT_KEY)


_DEFAULT_KEY = _key(IndicatorParams())


@lru_cache(maxsize=32)
def _spec_for(key: tuple) -> _Spec:
    (sma, ema, bb_n, bb_dev, sar_acc, sar_max, rsi_n, st_k, st_sk, st_d, wr_n, cci_n,
     vw_n, atr_n, hv_n, hv_ann) = key
    # TA-Lib's own bounds (it raises on periods outside them).
    checks = [(w, 1, f"sma window {w!r}") for w in sma] + [
        (w, 1, f"ema window {w!r}") for w in ema] + [
        (bb_n, 2, "bollinger_window"), (rsi_n, 2, "rsi_window"), (st_k, 1, "stoch_k"),
        (st_sk, 1, "stoch_slowk"), (st_d, 1, "stoch_d"), (wr_n, 2, "williams_window"),
        (cci_n, 2, "cci_window"), (vw_n, 1, "vwap_window"), (atr_n, 1, "atr_window"),
        (hv_n, 2, "hv_window"), (hv_ann, 1, "hv_annualization")]
    for value, low, what in checks:
        if isinstance(value, bool) or int(value) != value or not low <= value <= 100_000:
            raise ValueError(f"indicator params: {what} must be an integer in "
                             f"[{low}, 100000], got {value!r}")
    if not (0 <= sar_acc < math.inf and 0 <= sar_max < math.inf):
        raise ValueError("indicator params: sar_acceleration and sar_maximum must be "
                         "finite and >= 0")
    if not math.isfinite(bb_dev):
        raise ValueError("indicator params: bollinger_std must be finite")
    sma = tuple(dict.fromkeys(int(w) for w in sma))
    ema = tuple(dict.fromkeys(int(w) for w in ema))
    spec = dict(sma=sma, ema=ema, bb_n=int(bb_n), bb_dev=float(bb_dev),
                sar_acc=float(sar_acc), sar_max=float(sar_max), rsi_n=int(rsi_n),
                st_k=int(st_k), st_sk=int(st_sk), st_d=int(st_d), wr_n=int(wr_n),
                cci_n=int(cci_n), vw_n=int(vw_n), atr_n=int(atr_n), hv_n=int(hv_n),
                hv_ann=int(hv_ann))
    columns = tuple([f"sma_{w}" for w in sma] + [f"ema_{w}" for w in ema] + [
        "bb_mid", "bb_upper", "bb_lower", "bb_width", "bb_pctb", "sar", f"rsi_{rsi_n}",
        "stoch_k", "stoch_d", f"willr_{wr_n}", f"cci_{cci_n}", f"vwap_{vw_n}", "obv", "ad",
        f"atr_{atr_n}", f"hv_{hv_n}"])
    if len(set(columns)) != len(columns):  # pragma: no cover - names are distinct
        raise ValueError(f"indicator params give duplicate columns: {columns}")
    fields = tuple([f"sma_{w}_sum" for w in sma] + [f"ema_{w}" for w in ema]
                   + list(_FIXED_FIELDS))
    # Lags (rows back from the row being computed) each tail column is read at.
    window_hl = max(st_k, wr_n)
    reads = [set() for _ in range(_NCOL)]
    reads[_H].update({1, *range(1, window_hl)})            # SAR; STOCH/WILLR window
    reads[_L].update({1, *range(1, window_hl)})
    reads[_C].update({1, *range(1, bb_n), *(w - 1 for w in sma)})  # prev close; BB; SMA
    reads[_VW].add(vw_n - 1)                                # VWAP: value leaving window
    reads[_VO].add(vw_n - 1)
    reads[_TP].update(range(1, cci_n))                      # CCI window
    reads[_RET].add(hv_n - 1)                               # HV: return leaving window
    reads[_FK].add(st_sk - 1)                               # STOCH smoothing sums
    reads[_SK].add(st_d - 1)
    reads = tuple(tuple(sorted(x for x in r if x >= 1)) for r in reads)
    seg_len = tuple(max([1, *r]) for r in reads)
    seg_off = tuple(int(x) for x in np.concatenate(([0], np.cumsum(seg_len)[:-1])))
    definitions = _definitions(spec, columns)
    blob = json.dumps({"definitions": definitions, "state": STATE_VERSION,
                       "tail": seg_len}, sort_keys=True)
    ipar = np.array([max(seg_len), bb_n, rsi_n, st_k, st_sk, st_d, wr_n, cci_n, vw_n, atr_n,
                     hv_n, 0, *seg_off, *seg_len], dtype=np.int64)
    ipar_own = ipar.copy()
    ipar_own[11] = 1
    fpar = np.array([bb_dev, min(sar_acc, sar_max), sar_max, math.sqrt(hv_ann)])
    for arr in (ipar, ipar_own, fpar):
        arr.flags.writeable = False
    return _Spec(**spec, columns=columns,
                 column_index=pd.Index(["instrument", "date", *columns]),
                 fields=fields, seg_len=seg_len, seg_off=seg_off, width=sum(seg_len),
                 sma_arr=np.asarray(sma, dtype=np.int64), ema_arr=np.asarray(ema, dtype=np.int64),
                 ipar=ipar, ipar_own=ipar_own, fpar=fpar,
                 lookback=max(seg_len), definitions=definitions,
                 fingerprint=hashlib.sha256(blob.encode()).hexdigest()[:16])


def _warmups(s: dict) -> dict[str, int]:
    w = {f"sma_{n}": n - 1 for n in s["sma"]}
    w.update({f"ema_{n}": n - 1 for n in s["ema"]})
    w.update(dict.fromkeys(("bb_mid", "bb_upper", "bb_lower", "bb_width", "bb_pctb"),
                           s["bb_n"] - 1))
    stoch = s["st_k"] - 1 + s["st_sk"] - 1 + s["st_d"] - 1
    w.update({"sar": 1, f"rsi_{s['rsi_n']}": s["rsi_n"], "stoch_k": stoch, "stoch_d": stoch,
              f"willr_{s['wr_n']}": s["wr_n"] - 1, f"cci_{s['cci_n']}": s["cci_n"] - 1,
              f"vwap_{s['vw_n']}": s["vw_n"] - 1, "obv": 0, "ad": 0,
              f"atr_{s['atr_n']}": s["atr_n"], f"hv_{s['hv_n']}": s["hv_n"]})
    return w


def _definitions(s: dict, columns: tuple[str, ...]) -> dict:
    warm = _warmups(s)
    hlc = ["high", "low", "close"]
    bb = {"timeperiod": s["bb_n"], "nbdevup": s["bb_dev"], "nbdevdn": s["bb_dev"],
          "matype": "SMA"}
    stoch = {"fastk_period": s["st_k"], "slowk_period": s["st_sk"], "slowk_matype": "SMA",
             "slowd_period": s["st_d"], "slowd_matype": "SMA"}

    def talib_def(function, inputs, params, output=None):
        d = {"source": "talib", "function": function, "inputs": inputs, "params": params}
        if output:
            d["output"] = output
        return d

    d: dict[str, dict] = {}
    for n in s["sma"]:
        d[f"sma_{n}"] = talib_def("SMA", ["close"], {"timeperiod": n})
    for n in s["ema"]:
        d[f"ema_{n}"] = talib_def("EMA", ["close"], {"timeperiod": n})
    d["bb_mid"] = talib_def("BBANDS", ["close"], bb, "middleband")
    d["bb_upper"] = talib_def("BBANDS", ["close"], bb, "upperband")
    d["bb_lower"] = talib_def("BBANDS", ["close"], bb, "lowerband")
    d["bb_width"] = {"source": "own", "inputs": ["close"], "params": bb,
                     "formula": "(bb_upper - bb_lower) / bb_mid"}
    d["bb_pctb"] = {"source": "own", "inputs": ["close"], "params": bb,
                    "formula": "(close - bb_lower) / (bb_upper - bb_lower); "
                               "NaN where bb_upper == bb_lower"}
    d["sar"] = talib_def("SAR", ["high", "low"],
                         {"acceleration": s["sar_acc"], "maximum": s["sar_max"]})
    d[f"rsi_{s['rsi_n']}"] = talib_def("RSI", ["close"], {"timeperiod": s["rsi_n"]})
    d["stoch_k"] = talib_def("STOCH", hlc, stoch, "slowk")
    d["stoch_d"] = talib_def("STOCH", hlc, stoch, "slowd")
    d[f"willr_{s['wr_n']}"] = talib_def("WILLR", hlc, {"timeperiod": s["wr_n"]})
    d[f"cci_{s['cci_n']}"] = talib_def("CCI", hlc, {"timeperiod": s["cci_n"]})
    d[f"vwap_{s['vw_n']}"] = {
        "source": "own", "inputs": ["vwap", "volume"], "params": {"window": s["vw_n"]},
        "formula": "sum(vwap * volume) / sum(volume) over the window's rows; "
                   "NaN where the window's volume is all zero"}
    d["obv"] = talib_def("OBV", ["close", "volume"], {})
    d["ad"] = talib_def("AD", ["high", "low", "close", "volume"], {})
    d[f"atr_{s['atr_n']}"] = talib_def("ATR", hlc, {"timeperiod": s["atr_n"]})
    d[f"hv_{s['hv_n']}"] = {
        "source": "own", "inputs": ["close"],
        "params": {"window": s["hv_n"], "annualization": s["hv_ann"], "ddof": 1},
        "formula": "std(log(close / previous close) over window returns, ddof=1) "
                   "* sqrt(annualization)"}
    for col in columns:
        d[col]["warmup"] = warm[col]
    return {"version": DEFINITIONS_VERSION,
            "library": f"TA-Lib {_TA_VERSION} (compatibility default, no unstable period)",
            "inputs": list(BAR_INPUTS[2:]),
            "columns": [dict(name=c, **d[c]) for c in columns]}


def indicator_columns(params: IndicatorParams | None = None) -> list[str]:
    """Indicator column names in output order (window numbers from ``params``)."""
    return list(_spec(params).columns)


def indicator_definitions(params: IndicatorParams | None = None) -> dict:
    """What every column is: function, inputs, parameters, warm-up. Plain JSON data,
    the same for equal params; meant to be hashed into a feature-set id."""
    return json.loads(json.dumps(_spec(params).definitions))


def indicator_lookback(params: IndicatorParams | None = None) -> int:
    """Most rows of history an incremental update reads back (longest tail segment)."""
    return _spec(params).lookback


def indicator_warmup(params: IndicatorParams | None = None) -> dict[str, int]:
    """Per column, how many leading rows of an instrument are NaN (warm-up)."""
    return {c["name"]: c["warmup"] for c in _spec(params).definitions["columns"]}


def state_fields(params: IndicatorParams | None = None) -> list[str]:
    """Names of the values of a state's ``carry`` list, in order."""
    return list(_spec(params).fields)


def tail_layout(params: IndicatorParams | None = None) -> dict[str, int]:
    """Per ``TAIL_COLUMNS`` entry, how many rows of it a state's ``tail`` keeps (the
    tail is these segments concatenated, in this order, each oldest first)."""
    return dict(zip(TAIL_COLUMNS, _spec(params).seg_len))


def describe_state(state: Mapping[str, Any], params: IndicatorParams | None = None) -> dict:
    """A state with its ``values`` split into named carry fields and per-column
    tail lists."""
    s = _spec(params)
    values = list(state["values"])
    out = {k: v for k, v in state.items() if k != "values"}
    out["tail"] = {c: values[o:o + n] for c, o, n in zip(TAIL_COLUMNS, s.seg_off, s.seg_len)}
    out["carry"] = dict(zip(s.fields, values[s.width:]))
    return out


# ---------------------------------------------------------------- numba kernel
@intrinsic
def _fma(typingctx, a, b, c):
    """Fused multiply-add, correctly rounded, as TA-Lib's explicit ``fma()``."""
    sig = types.float64(types.float64, types.float64, types.float64)

    def codegen(context, builder, signature, args):
        d = ir.DoubleType()
        fn = builder.module.declare_intrinsic("llvm.fma", [d], ir.FunctionType(d, [d, d, d]))
        return builder.call(fn, args)

    return sig, codegen


@njit(inline="always")
def _nadd(s, c, x):
    """Neumaier compensated addition: (sum, compensation) + x."""
    t = s + x
    if abs(s) >= abs(x):
        c += (s - t) + x
    else:
        c += (x - t) + s
    return t, c


@njit(cache=True, error_model="numpy", nogil=True)
def _kernel(hi, lo, cl, vw, vo, starts, n0, carry, tail, new_tail, derived, out, sma_w, ema_w,
            ipar, fpar):
    """Advance every instrument's state over its new rows.

    Instrument ``k`` owns rows ``starts[k]:starts[k+1]`` of the flat inputs and had
    ``n0[k]`` rows before them; ``carry[k]`` (updated in place) and ``tail[k]`` are
    its state; column ``c``'s tail segment (``ipar[12 + c]``: offset, ``ipar[21 + c]``:
    length) goes just before slot ``P`` of the column's line. Writes the tail
    after the new rows to ``new_tail``, the new rows' tail columns to ``derived``
    and the indicators to ``out`` (one row per column; left untouched during
    warm-up). ``ipar``/``fpar``
    carry the parameters (see ``_run_kernel``); with ``own_only`` only VWAP and HV
    are computed.
    """
    P, bb_n, rsi_n, st_k, st_sk, st_d = ipar[0], ipar[1], ipar[2], ipar[3], ipar[4], ipar[5]
    wr_n, cci_n, vw_n, atr_n, hv_n = ipar[6], ipar[7], ipar[8], ipar[9], ipar[10]
    own_only = ipar[11] != 0
    bb_dev, sar_acc, sar_max, hv_scale = fpar[0], fpar[1], fpar[2], fpar[3]
    ninst = starts.shape[0] - 1
    nsma = sma_w.shape[0]
    nema = ema_w.shape[0]
    cb = nsma + nema  # first fixed carry field
    ob = nsma + nema  # first fixed output column
    maxk = 0
    for k in range(ninst):
        maxk = max(maxk, starts[k + 1] - starts[k])
    # Per instrument: the tail, then the new rows, one contiguous line per column.
    buf = np.zeros((9, P + maxk))
    bh = buf[0]
    bl = buf[1]
    bc = buf[2]
    bw = buf[3]
    bv = buf[4]
    btp = buf[5]
    bret = buf[6]
    bfk = buf[7]
    bsk = buf[8]
    bb_inv = 1.0 / bb_n
    bb_nf = float(bb_n)
    rsi_inv = 1.0 / rsi_n
    rsi_m = float(rsi_n - 1)
    atr_a = float(atr_n - 1) / float(atr_n)
    atr_b = 1.0 - atr_a
    hv_nf = float(hv_n)
    hl_n = max(st_k, wr_n)
    for k in range(ninst):
        s0 = starts[k]
        nk = starts[k + 1] - s0
        for c in range(9):  # the tail segments, ending at slot P
            off = ipar[12 + c]
            ln = ipar[21 + c]
            for j in range(ln):
                buf[c, P - ln + j] = tail[k, off + j]
        cr = carry[k]
        for i in range(nk):
            r = s0 + i
            q = P + i
            t = n0[k] + i
            h = hi[r]
            l = lo[r]
            c = cl[r]
            pw = vw[r]
            v = vo[r]
            tp = (h + l + c) / 3.0
            cprev = 0.0
            ret = 0.0
            if t >= 1:
                cprev = bc[q - 1]
                ret = math.log(c / cprev)
            bh[q] = h
            bl[q] = l
            bc[q] = c
            bw[q] = pw
            bv[q] = v
            btp[q] = tp
            bret[q] = ret
            bfk[q] = 0.0
            bsk[q] = 0.0

            # ---- rolling VWAP (own): compensated running sums, count of volume > 0
            spv, cpv = _nadd(cr[cb + 16], cr[cb + 17], pw * v)
            sv, cv = _nadd(cr[cb + 18], cr[cb + 19], v)
            nz = cr[cb + 20]
            if v != 0.0:
                nz += 1.0
            if t >= vw_n - 1:
                if nz > 0.0:
                    out[ob + 11, r] = (spv + cpv) / (sv + cv)
                ov = bv[q - (vw_n - 1)]
                spv, cpv = _nadd(spv, cpv, -(bw[q - (vw_n - 1)] * ov))
                sv, cv = _nadd(sv, cv, -ov)
                if ov != 0.0:
                    nz -= 1.0
            cr[cb + 16] = spv
            cr[cb + 17] = cpv
            cr[cb + 18] = sv
            cr[cb + 19] = cv
            cr[cb + 20] = nz

            # ---- historical volatility (own): compensated sums of r and r*r
            if t >= 1:
                s1, c1 = _nadd(cr[cb + 21], cr[cb + 22], ret)
                s2, c2 = _nadd(cr[cb + 23], cr[cb + 24], ret * ret)
                if t >= hv_n:
                    sm = s1 + c1
                    var = ((s2 + c2) - sm * sm / hv_nf) / (hv_nf - 1.0)
                    if var < 0.0:
                        var = 0.0
                    out[ob + 15, r] = math.sqrt(var) * hv_scale
                    oret = bret[q - (hv_n - 1)]
                    s1, c1 = _nadd(s1, c1, -oret)
                    s2, c2 = _nadd(s2, c2, -(oret * oret))
                cr[cb + 21] = s1
                cr[cb + 22] = c1
                cr[cb + 23] = s2
                cr[cb + 24] = c2

            if own_only:
                continue

            # ---- SMA (TA_SMA: running periodTotal)
            for j in range(nsma):
                w = sma_w[j]
                s = cr[j] + c
                if t >= w - 1:
                    out[j, r] = s / w
                    s -= bc[q - (w - 1)]
                cr[j] = s

            # ---- EMA (seed: mean of the first n; then fma(x - ema, 2/(n+1), ema))
            for j in range(nema):
                w = ema_w[j]
                e = cr[nsma + j]
                if t < w:
                    e += c
                    if t == w - 1:
                        e = e / w
                        out[nsma + j, r] = e
                else:
                    e = _fma(c - e, 2.0 / float(w + 1), e)
                    out[nsma + j, r] = e
                cr[nsma + j] = e

            # ---- BBANDS (SMA mid; variance of values shifted by a reference value)
            bs = cr[cb + 0]
            bk = cr[cb + 1]
            b1 = cr[cb + 2]
            b2 = cr[cb + 3]
            cnt = cr[cb + 4]
            if t == 0:
                bk = c
            if t < bb_n - 1:
                bs = bs + c
                d = c - bk
                b1 = b1 + d
                b2 = b2 + d * d
            else:
                if t == bb_n - 1:
                    cnt = 32.0 * bb_n
                bs = c + bs
                d = c - bk
                b1 = d + b1
                m1 = bb_inv * b1
                b2 = d * d + b2
                var = bb_inv * b2 - m1 * m1
                mid = bs / bb_nf
                xo = bc[q - (bb_n - 1)]
                bs = bs - xo
                do = xo - bk
                do2 = do * do
                b2 = b2 - do2
                anchor = False
                if (bb_inv * b2) * 1e-6 > var:
                    anchor = True
                elif do2 > b2 * 1e6:
                    anchor = True
                else:
                    cnt -= 1.0
                    if cnt == 0.0:
                        anchor = True
                if not anchor:
                    b1 = b1 - do
                    sd = 0.0 if var == 0.0 else math.sqrt(var)
                else:  # re-anchor on the window mean and re-sum the window
                    sw = 0.0
                    for p in range(q - (bb_n - 1), q + 1):
                        sw += bc[p]
                    bk = bb_inv * sw
                    b1 = 0.0
                    b2 = 0.0
                    for p in range(q - (bb_n - 1), q + 1):
                        d = bc[p] - bk
                        b1 += d
                        b2 += d * d
                    m1 = bb_inv * b1
                    m2 = bb_inv * b2
                    var = m2 - m1 * m1
                    flat = m2 * 1e-12 > var
                    d = xo - bk
                    b1 -= d
                    b2 -= d * d
                    cnt = 32.0 * bb_n
                    sd = 0.0 if (flat or var == 0.0) else math.sqrt(var)
                dev = sd * bb_dev
                up = mid + dev
                lw = mid - dev
                out[ob + 0, r] = mid
                out[ob + 1, r] = up
                out[ob + 2, r] = lw
                out[ob + 3, r] = (up - lw) / mid
                if up != lw:
                    out[ob + 4, r] = (c - lw) / (up - lw)
            cr[cb + 0] = bs
            cr[cb + 1] = bk
            cr[cb + 2] = b1
            cr[cb + 3] = b2
            cr[cb + 4] = cnt

            if t >= 1:
                # ---- RSI (Wilder averages; TA-Lib 0.8 multiplies by 1/n)
                d = c - cprev
                pos = d if 0.0 < d else 0.0
                g = cr[cb + 5]
                ls = cr[cb + 6]
                if t <= rsi_n:
                    g += pos
                    ls += pos - d
                    if t == rsi_n:
                        ls *= rsi_inv
                        g *= rsi_inv
                else:
                    g = (g * rsi_m + pos) * rsi_inv
                    ls = ((pos - d) + ls * rsi_m) * rsi_inv
                if t >= rsi_n:
                    tot = ls + g
                    out[ob + 6, r] = (g / tot) * 100.0 if tot > 0.0 else 0.0
                cr[cb + 5] = g
                cr[cb + 6] = ls

                # ---- ATR (seed: mean of the first n true ranges)
                tr = h - l
                x = abs(cprev - h)
                if x > tr:
                    tr = x
                x = abs(cprev - l)
                if x > tr:
                    tr = x
                a = cr[cb + 7]
                if t <= atr_n:
                    a += tr
                    if t == atr_n:
                        a = a / atr_n
                        out[ob + 14, r] = a
                else:
                    a = _fma(a, atr_a, tr * atr_b)
                    out[ob + 14, r] = a
                cr[cb + 7] = a

                # ---- Parabolic SAR (TA-Lib start rule: -DM of the first two bars)
                if t == 1:
                    h0 = bh[q - 1]
                    l0 = bl[q - 1]
                    diff_m = l0 - l
                    is_long = not (diff_m > 0.0 and (h - h0) < diff_m)
                    if is_long:
                        ep = h
                        sar = l0
                    else:
                        ep = l
                        sar = h0
                    af = sar_acc
                    p_h = h
                    p_l = l
                else:
                    is_long = cr[cb + 8] != 0.0
                    sar = cr[cb + 9]
                    ep = cr[cb + 10]
                    af = cr[cb + 11]
                    p_h = bh[q - 1]
                    p_l = bl[q - 1]
                if is_long:
                    if l <= sar:
                        is_long = False
                        sar = max(ep, p_h, h)
                        out[ob + 5, r] = sar
                        af = sar_acc
                        ep = l
                        sar = _fma(ep - sar, af, sar)
                        sar = max(sar, p_h, h)
                    else:
                        out[ob + 5, r] = sar
                        if h > ep:
                            ep = h
                            af = min(af + sar_acc, sar_max)
                        sar = _fma(ep - sar, af, sar)
                        sar = min(sar, p_l, l)
                elif h >= sar:
                    is_long = True
                    sar = min(ep, p_l, l)
                    out[ob + 5, r] = sar
                    af = sar_acc
                    ep = h
                    sar = _fma(ep - sar, af, sar)
                    sar = min(sar, p_l, l)
                else:
                    out[ob + 5, r] = sar
                    if l < ep:
                        ep = l
                        af = min(af + sar_acc, sar_max)
                    sar = _fma(ep - sar, af, sar)
                    sar = max(sar, p_h, h)
                cr[cb + 8] = 1.0 if is_long else 0.0
                cr[cb + 9] = sar
                cr[cb + 10] = ep
                cr[cb + 11] = af

            # ---- STOCH and Williams %R: window extremes of high and low
            if t >= min(st_k, wr_n) - 1:
                hh_s = h
                ll_s = l
                hh_w = h
                ll_w = l
                for lag in range(1, min(t, hl_n - 1) + 1):
                    xh = bh[q - lag]
                    xl = bl[q - lag]
                    if lag < st_k:
                        if xh > hh_s:
                            hh_s = xh
                        if xl < ll_s:
                            ll_s = xl
                    if lag < wr_n:
                        if xh > hh_w:
                            hh_w = xh
                        if xl < ll_w:
                            ll_w = xl
                if t >= st_k - 1:
                    rng = hh_s - ll_s
                    if abs(rng) <= _EPS * (abs(hh_s) + abs(ll_s)):
                        fk = 0.0
                    else:
                        fk = ((c - ll_s) / rng) * 100.0
                    bfk[q] = fk
                    jk = t - (st_k - 1)
                    ksum = cr[cb + 12] + fk
                    if jk >= st_sk - 1:
                        slowk = ksum / st_sk
                        ksum -= bfk[q - (st_sk - 1)]
                        bsk[q] = slowk
                        dsum = cr[cb + 13] + slowk
                        if jk - (st_sk - 1) >= st_d - 1:
                            out[ob + 7, r] = slowk
                            out[ob + 8, r] = dsum / st_d
                            dsum -= bsk[q - (st_d - 1)]
                        cr[cb + 13] = dsum
                    cr[cb + 12] = ksum
                if t >= wr_n - 1:
                    rng = hh_w - ll_w
                    if abs(rng) <= _EPS * (abs(hh_w) + abs(ll_w)):
                        out[ob + 9, r] = 0.0
                    else:
                        x = ((hh_w - c) / rng) * (-100.0)
                        if x > 0.0:
                            x = 0.0
                        elif x < -100.0:
                            x = -100.0
                        out[ob + 9, r] = x

            # ---- CCI: TA-Lib sums its circular buffer in slot order, i.e. the rows
            # t-p..t, then t-n+1..t-p-1 (p = t mod n), each run oldest first.
            if t >= cci_n - 1:
                p = t % cci_n
                avg = 0.0
                for u in range(q - p, q + 1):
                    avg += btp[u]
                for u in range(q - cci_n + 1, q - p):
                    avg += btp[u]
                avg = avg / cci_n
                dev = 0.0
                for u in range(q - p, q + 1):
                    dev += abs(btp[u] - avg)
                for u in range(q - cci_n + 1, q - p):
                    dev += abs(btp[u] - avg)
                dev = dev / cci_n
                num = tp - avg
                scale = abs(avg)
                if abs(num) <= _EPS * scale or abs(dev) <= _EPS * scale:
                    out[ob + 10, r] = 0.0
                else:
                    out[ob + 10, r] = num / (0.015 * dev)

            # ---- OBV (TA-Lib starts at the first volume) and A/D
            if t == 0:
                obv = v
            else:
                obv = cr[cb + 14]
                if c > cprev:
                    obv += v
                elif c < cprev:
                    obv -= v
            out[ob + 12, r] = obv
            cr[cb + 14] = obv
            adv = cr[cb + 15]
            rg = h - l
            if rg > 0.0:
                adv += (c - l - (h - c)) / rg * v
            out[ob + 13, r] = adv
            cr[cb + 15] = adv
        for i in range(nk):
            for c in range(9):
                derived[s0 + i, c] = buf[c, P + i]
        for c in range(9):
            off = ipar[12 + c]
            ln = ipar[21 + c]
            for j in range(ln):
                new_tail[k, off + j] = buf[c, P - ln + nk + j]


def _run_kernel(s: _Spec, cols, starts, n0, carry, tail, out, own_only: bool
                ) -> tuple[np.ndarray, np.ndarray]:
    """Run ``_kernel`` (``tail``: full tails). Returns the tails after the rows and
    the rows' tail columns."""
    hi, lo, cl, vw, vo = cols
    derived = np.empty((len(cl), _NCOL), dtype=np.float64)
    new_tail = np.empty_like(tail)
    _kernel(hi, lo, cl, vw, vo, starts, n0, carry, tail, new_tail, derived, out, s.sma_arr,
            s.ema_arr, s.ipar_own if own_only else s.ipar, s.fpar)
    return new_tail, derived


# --------------------------------------------------------------------- frames
@dataclass
class _Bars:
    """What the computations need from a bars frame, read once."""
    index: pd.Index
    inst: Any                   # instrument column as a frame block
    date: Any                   # date column as a frame block
    cols: tuple                 # high, low, close, vwap, volume (float64, contiguous)
    dates: np.ndarray           # int64 nanoseconds
    starts: np.ndarray          # row offsets of the instruments' runs (+ the end)
    names: list                 # instrument of each run


def _block(values):
    """A column's values as a frame block (2-D for NumPy dtypes)."""
    return values.reshape(1, -1) if isinstance(values, np.ndarray) else values


def _take(block, rows):
    if rows is None:
        return block
    return block[:, rows] if isinstance(block, np.ndarray) else block.take(rows)


def _floats(values) -> np.ndarray:
    """Contiguous, writeable float64 (so the kernel compiles for one layout only)."""
    arr = np.ascontiguousarray(np.asarray(values, dtype=np.float64))
    return arr if arr.flags.writeable else arr.copy()


def _column_values(bars: pd.DataFrame, names) -> list:
    """Each column's values (ndarray for NumPy dtypes, else the ExtensionArray)."""
    try:  # ~10x cheaper than bars[c] per column, which matters for daily updates
        get, loc = bars._get_column_array, bars.columns.get_loc
        values = [get(loc(c)) for c in names]
    except Exception:  # pragma: no cover - other pandas versions
        values = [bars[c].values for c in names]
    return [np.asarray(v) if isinstance(v, pd.arrays.DatetimeArray) and v.tz is None else v
            for v in values]


def _read_bars(bars: pd.DataFrame) -> _Bars:
    """Validate ``bars`` and split them into instrument runs.

    Refuses missing columns, an instrument split over several runs, and dates that
    do not strictly increase within an instrument.
    """
    missing = [c for c in BAR_INPUTS if c not in bars.columns]
    if missing:
        raise ValueError(f"bars lack column(s) {missing}; need {list(BAR_INPUTS)}")
    inst, date, *floats = _column_values(bars, BAR_INPUTS)
    cols = tuple(_floats(v) for v in (floats[0], floats[1], floats[2], floats[4], floats[3]))
    if isinstance(date, np.ndarray) and date.dtype.kind == "M":
        dates = date
    else:
        when = pd.to_datetime(bars["date"])
        if getattr(when.dtype, "tz", None) is not None:
            when = when.dt.tz_convert(None)
        dates = when.to_numpy(dtype="datetime64[ns]")
    if len(dates) and np.isnat(dates).any():
        raise ValueError("bars: date has missing values")
    dates = dates.astype("datetime64[ns]", copy=False).view("i8")
    n = len(bars)
    # Object compares beat Arrow's per-call overhead on small frames.
    keys = np.asarray(inst, dtype=object) if n < 4096 else inst
    change = np.flatnonzero(np.asarray(keys[1:] != keys[:-1], dtype=bool)) + 1
    starts = np.concatenate(([0], change, [n]) if n else ([0],)).astype(np.int64)
    firsts = keys[starts[:-1]] if isinstance(keys, np.ndarray) else keys.take(starts[:-1])
    names = np.asarray(firsts, dtype=object).tolist()
    if len(set(names)) != len(names):
        raise ValueError("bars: each instrument's rows must be contiguous")
    same = np.ones(max(n - 1, 0), dtype=bool)
    same[change - 1] = False
    if not np.all(dates[1:][same] > dates[:-1][same]):
        raise ValueError("bars: dates must strictly increase within each instrument "
                         "(sorted, no duplicate dates)")
    return _Bars(bars.index, _block(inst), _block(date), cols, dates, starts, names)


def _frame(b: _Bars, out: np.ndarray, s: _Spec, rows=None) -> pd.DataFrame:
    """``instrument, date`` (rows ``rows``) next to the indicators ``out`` (one row
    per column, taken over as the frame's float block without a copy)."""
    index = b.index if rows is None else b.index.take(rows)
    inst, date = _take(b.inst, rows), _take(b.date, rows)
    if _from_blocks is not None:
        try:
            return _from_blocks([(inst, np.array([0])), (date, np.array([1])),
                                 (out, np.arange(2, 2 + out.shape[0]))],
                                index=index, columns=s.column_index)
        except Exception:  # pragma: no cover - fall back to the public constructor
            pass
    frame = pd.DataFrame(out.T, index=index, columns=list(s.columns), copy=False)
    frame.insert(0, "date", date[0] if isinstance(date, np.ndarray) else date)
    frame.insert(0, "instrument", inst[0] if isinstance(inst, np.ndarray) else inst)
    return frame


def _talib_columns(s: _Spec, cols, starts, out: np.ndarray) -> None:
    """TA-Lib indicators per instrument into ``out`` (plus the derived band ratios)."""
    hi, lo, cl, vw, vo = cols
    nsma = len(s.sma)
    ob = nsma + len(s.ema)
    for a, b in zip(starts[:-1].tolist(), starts[1:].tolist()):
        h, l, c, v = hi[a:b], lo[a:b], cl[a:b], vo[a:b]
        for j, w in enumerate(s.sma):
            out[j, a:b] = talib.SMA(c, w)
        for j, w in enumerate(s.ema):
            out[nsma + j, a:b] = talib.EMA(c, w)
        up, mid, low = talib.BBANDS(c, s.bb_n, s.bb_dev, s.bb_dev, 0)
        out[ob + _O_BB_MID, a:b] = mid
        out[ob + _O_BB_UP, a:b] = up
        out[ob + _O_BB_LO, a:b] = low
        out[ob + _O_SAR, a:b] = talib.SAR(h, l, s.sar_acc, s.sar_max)
        out[ob + _O_RSI, a:b] = talib.RSI(c, s.rsi_n)
        slowk, slowd = talib.STOCH(h, l, c, s.st_k, s.st_sk, 0, s.st_d, 0)
        out[ob + _O_STK, a:b] = slowk
        out[ob + _O_STD, a:b] = slowd
        out[ob + _O_WR, a:b] = talib.WILLR(h, l, c, s.wr_n)
        out[ob + _O_CCI, a:b] = talib.CCI(h, l, c, s.cci_n)
        out[ob + _O_OBV, a:b] = talib.OBV(c, v)
        out[ob + _O_AD, a:b] = talib.AD(h, l, c, v)
        out[ob + _O_ATR, a:b] = talib.ATR(h, l, c, s.atr_n)
    up = out[ob + _O_BB_UP]
    low = out[ob + _O_BB_LO]
    band = up - low
    with np.errstate(divide="ignore", invalid="ignore"):
        out[ob + _O_BB_W] = band / out[ob + _O_BB_MID]
        out[ob + _O_BB_PB] = np.where(band != 0.0, (cl - low) / band, np.nan)


def _compute(b: _Bars, s: _Spec) -> pd.DataFrame:
    out = np.full((len(s.columns), len(b.dates)), np.nan)
    if len(b.dates):
        _talib_columns(s, b.cols, b.starts, out)
        ninst = len(b.starts) - 1
        _run_kernel(s, b.cols, b.starts, np.zeros(ninst, dtype=np.int64),
                    np.zeros((ninst, len(s.fields))), np.zeros((ninst, s.width)), out,
                    own_only=True)
    return _frame(b, out, s)


def compute_indicators(bars: pd.DataFrame, params: IndicatorParams | None = None
                       ) -> pd.DataFrame:
    """Indicators for every row of ``bars``: same rows, order and index; columns
    ``instrument, date`` then ``indicator_columns(params)`` (float64)."""
    return _compute(_read_bars(bars), _spec(params))


# --------------------------------------------------------------------- states
def _iso(dates_i8: np.ndarray) -> list[str]:
    """ISO strings: ``YYYY-MM-DD`` for midnight dates, else to the nanosecond."""
    if len(dates_i8) > 1 and (dates_i8 == dates_i8[0]).all():  # the daily case
        return _iso(dates_i8[:1]) * len(dates_i8)
    uniq, inv = np.unique(dates_i8, return_inverse=True)
    unit = "D" if np.all(uniq % 86_400_000_000_000 == 0) else "ns"
    text = np.datetime_as_string(uniq.view("datetime64[ns]"), unit=unit).tolist()
    if len(text) == 1:
        return text * len(dates_i8)
    return [text[i] for i in inv.tolist()]


@contextmanager
def _gc_paused():
    """Keep the cyclic GC from rescanning while thousands of small lists are built."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _probe_bars() -> pd.DataFrame:
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


@lru_cache(maxsize=32)
def _check_replica(key: tuple) -> None:
    """Make sure ``_kernel`` reproduces the installed TA-Lib for these params (once
    per process): updates are only exact against the arithmetic it mirrors."""
    s = _spec_for(key)
    b = _read_bars(_probe_bars())
    ref = _compute(b, s)[list(s.columns)].to_numpy()
    ninst = len(b.starts) - 1
    mine = np.full((ref.shape[1], ref.shape[0]), np.nan)
    _run_kernel(s, b.cols, b.starts, np.zeros(ninst, dtype=np.int64),
                np.zeros((ninst, len(s.fields))), np.zeros((ninst, s.width)), mine, False)
    mine = mine.T
    both = ~np.isnan(ref) & ~np.isnan(mine)
    off = (np.isnan(ref) != np.isnan(mine)) | (
        both & ~(np.abs(ref - mine) <= 1e-9 * np.maximum(np.abs(ref), np.abs(mine))))
    if off.any():
        bad = sorted({s.columns[j] for j in np.flatnonzero(off.any(axis=0))})
        raise RuntimeError(
            f"the installed TA-Lib ({_TA_VERSION}) does not compute {bad} the way "
            "this module's incremental kernel replicates (TA-Lib 0.8 arithmetic), so "
            "incremental updates would not match full runs; use compute_indicators")


class _Batch:
    """Numeric form of a batch of states made here (row ``j``: ``states[j]``)."""
    __slots__ = ("states", "values", "ns", "carry", "tail", "n", "last")

    def __init__(self, states, values, carry, tail, n, last):
        self.states, self.values = states, values      # the dicts and their lists
        self.carry, self.tail, self.n, self.last = carry, tail, n, last
        self.ns = n.tolist()


# In-process memo of the numeric form of the states this module returned:
# id(state) -> (batch, row), for the _MEMO_BATCHES batches used last. An update fed
# those very objects, still holding the same ``values`` list and ``n``, takes their
# numbers from the batch instead of unboxing the list; anything else (states loaded
# from JSON, unpickled elsewhere, rebuilt) is read from the list. States are values:
# edit a copy, never a state's list in place.
_MEMO_BATCHES = 4
_memo_lock = threading.Lock()  # guards the writers; readers re-validate what they find
_memo: dict[int, tuple[_Batch, int]] = {}
_memo_batches: dict[int, list] = {}  # id(batch) -> [batch, fingerprint, last use]
_memo_clock = [0]


def _touch(batch: _Batch) -> None:
    with _memo_lock:
        _memo_clock[0] += 1
        entry = _memo_batches.get(id(batch))
        if entry is not None:
            entry[2] = _memo_clock[0]


def _remember(fp: str, batch: _Batch) -> None:
    with _memo_lock:
        _memo_clock[0] += 1
        _memo_batches[id(batch)] = [batch, fp, _memo_clock[0]]
        _memo.update(zip(map(id, batch.states),
                         zip(repeat(batch), range(len(batch.states)))))
        if len(_memo_batches) > _MEMO_BATCHES:  # forget the least recently used
            ranked = sorted(_memo_batches.values(), key=lambda e: e[2])
            for old, _, _ in ranked[:len(ranked) - _MEMO_BATCHES]:
                del _memo_batches[id(old)]
                for key in map(id, old.states):
                    if _memo.get(key, (None,))[0] is old:
                        del _memo[key]


_GET_VALUES = itemgetter("values")
_GET_N = itemgetter("n")


def _whole_batch(fp: str, sts: list) -> tuple[_Batch, list] | None:
    """(batch, rows) when every state is an unchanged state of one remembered batch
    (checked with C-level maps), else None."""
    if len(sts) < 2 or sts.count(None):
        return None
    ents = list(map(_memo.get, map(id, sts)))
    if ents.count(None):
        return None
    batch = ents[0][0]
    if any(e[0] is not batch for e in ents) or _memo_batches.get(id(batch), (0, 0))[1] != fp:
        return None
    rows = [e[1] for e in ents]
    pick = itemgetter(*rows)
    if (all(map(is_, pick(batch.states), sts))
            and all(map(is_, pick(batch.values), map(_GET_VALUES, sts)))
            and list(pick(batch.ns)) == list(map(_GET_N, sts))):
        return batch, rows
    return None


def clear_state_memo() -> None:
    """Forget the in-process memo of returned states (it holds the last few batches
    of states and their numeric copies alive)."""
    with _memo_lock:
        _memo.clear()
        _memo_batches.clear()


def _new_states(s: _Spec, names, ns, days, values) -> list[dict]:
    fp = s.fingerprint
    return [{"version": STATE_VERSION, "spec": fp, "n": n, "last_date": day, "values": v}
            for n, day, v in zip(ns, days, values)]


def compute_indicators_with_state(bars: pd.DataFrame, params: IndicatorParams | None = None
                                  ) -> tuple[pd.DataFrame, dict[str, dict]]:
    """``compute_indicators(bars, params)`` and each instrument's state after its
    last row (see the module docstring for the state format)."""
    s = _spec(params)
    _check_replica(_key(params) if params is not None else _DEFAULT_KEY)
    b = _read_bars(bars)
    frame = _compute(b, s)
    if len(bars) == 0:
        return frame, {}
    starts = b.starts
    ninst = len(starts) - 1
    carry = np.zeros((ninst, len(s.fields)))
    scratch = np.full((len(s.columns), len(bars)), np.nan)
    tails, _ = _run_kernel(s, b.cols, starts, np.zeros(ninst, dtype=np.int64), carry,
                           np.zeros((ninst, s.width)), scratch, own_only=False)
    counts = np.diff(starts)
    last = b.dates[starts[1:] - 1]
    with _gc_paused():
        values = np.hstack((tails, carry)).tolist()
        new_list = _new_states(s, b.names, counts.tolist(), _iso(last), values)
        _remember(s.fingerprint, _Batch(new_list, values, carry, tails, counts, last))
        return frame, dict(zip(b.names, new_list))


def update_indicators(states: Mapping[str, Mapping[str, Any]], new_bars: pd.DataFrame,
                      params: IndicatorParams | None = None
                      ) -> tuple[pd.DataFrame, dict[str, dict]]:
    """Indicators for the rows of ``new_bars`` dated after their instrument's state.

    ``states`` comes from ``compute_indicators_with_state`` or an earlier update
    with the same params (in this process or loaded back from JSON); an instrument
    without a state starts from scratch. Rows at or before the state's
    ``last_date`` are skipped. Returns the frame of the computed rows (``new_bars``
    order and index, columns as ``compute_indicators``) and the states of all
    instruments (entries of ``states`` without new rows are passed through).
    Neither argument is modified.
    """
    s = _spec(params)
    _check_replica(_key(params) if params is not None else _DEFAULT_KEY)
    new_states = dict(states)
    b = _read_bars(new_bars)
    if len(new_bars) == 0:
        return _frame(b, np.empty((len(s.columns), 0)), s,
                      np.zeros(0, dtype=np.int64)), new_states
    with _gc_paused():
        return _update(s, states, b, new_states)


def _update(s: _Spec, states, b: _Bars, new_states):
    fp = s.fingerprint
    nf = len(s.fields)
    width = s.width
    names = b.names
    sts = [states.get(nm) for nm in names]
    m = len(sts)

    # Gather the states: from the memo where possible, else from their lists.
    whole = _whole_batch(fp, sts)
    if whole is not None:  # the usual case: all states from one earlier call
        batch, rows = whole
        _touch(batch)
        carry, tails = batch.carry[rows], batch.tail[rows]  # copies (fancy index)
        n0, last = batch.n[rows], batch.last[rows]
    else:
        n0 = np.zeros(m, dtype=np.int64)
        last = np.full(m, np.iinfo(np.int64).min, dtype=np.int64)
        carry = np.zeros((m, nf))
        tails = np.zeros((m, width))
        cold: list[int] = []
        for j, st in enumerate(sts):
            if st is None:
                continue
            e = _memo.get(id(st))
            if e is not None:
                batch, row = e
                if (batch.states[row] is st and st["values"] is batch.values[row]
                        and st["n"] == batch.ns[row]
                        and _memo_batches.get(id(batch), (0, 0))[1] == fp):
                    _touch(batch)
                    carry[j], tails[j] = batch.carry[row], batch.tail[row]
                    n0[j], last[j] = batch.n[row], batch.last[row]
                    continue
            cold.append(j)
        if cold:
            flat: list = []
            stamps = []
            for j in cold:
                st = sts[j]
                if st.get("spec") != fp or st.get("version") != STATE_VERSION:
                    raise ValueError(f"state of {names[j]!r} was made with other indicator "
                                     "params or another state version")
                flat += st["values"]
                stamps.append(st["last_date"])
            if len(flat) != len(cold) * (width + nf):
                raise ValueError("a state's values have the wrong length for these params")
            vals = np.fromiter(flat, np.float64, len(flat)).reshape(len(cold), width + nf)
            tails[cold] = vals[:, :width]
            carry[cold] = vals[:, width:]
            n0[cold] = [sts[j]["n"] for j in cold]
            last[cold] = np.array(stamps, dtype="datetime64[ns]").view("i8")

    # Keep only the rows after each state's last date.
    cols, dates, starts, rows = b.cols, b.dates, b.starts, None
    counts = np.diff(starts)
    keep = dates > np.repeat(last, counts)
    if not keep.all():
        rows = np.flatnonzero(keep)
        kept = np.add.reduceat(keep.astype(np.int64), starts[:-1])
        live = np.flatnonzero(kept > 0)
        if len(live) == 0:
            return _frame(b, np.empty((len(s.columns), 0)), s, rows), new_states
        cols = tuple(c[rows] for c in cols)
        dates = dates[rows]
        counts = kept[live]
        starts = np.concatenate(([0], np.cumsum(counts))).astype(np.int64)
        carry, tails, n0 = carry[live], tails[live], n0[live]
        live_l = live.tolist()
        sts = [sts[j] for j in live_l]
        names = [names[j] for j in live_l]
        m = len(sts)

    out = np.full((len(s.columns), int(starts[-1])), np.nan)
    new_tails, derived = _run_kernel(s, cols, starts, n0, carry, tails, out, own_only=False)
    frame = _frame(b, out, s, rows)
    n1 = n0 + counts
    last1 = dates[starts[1:] - 1]

    # The new ``values`` lists. With one new row per instrument and old lists (the
    # daily case) the new tail part is the old one shifted by one (pointer copies):
    # column c's new value replaces the first value of segment c+1, the last
    # column's is appended, then the new carry; all by C-level maps.
    if len(derived) == m and sts.count(None) == 0:
        values = list(map(itemgetter(slice(1, width)), map(_GET_VALUES, sts)))
        slots = [off - 1 for off in s.seg_off[1:]] * m
        deque(map(list.__setitem__, chain.from_iterable(map(repeat, values,
                                                            repeat(_NCOL - 1))),
                  slots, derived[:, :_NCOL - 1].ravel().tolist()), maxlen=0)
        deque(map(list.append, values, derived[:, _NCOL - 1].tolist()), maxlen=0)
        deque(map(list.extend, values, carry.tolist()), maxlen=0)
    else:
        values = np.hstack((new_tails, carry)).tolist()
    new_list = _new_states(s, names, n1.tolist(), _iso(last1), values)
    new_states.update(zip(names, new_list))
    _remember(fp, _Batch(new_list, values, carry, new_tails, n1, last1))
    return frame, new_states

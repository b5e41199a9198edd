"""What the indicators are: parameters, output columns, definitions, state layout.

``spec(params)`` turns ``IndicatorParams`` into everything the kernel and the
state need (validated windows, column names, the layout of a state row, the
kernel's parameter arrays) and the plain-JSON definitions that go into the
feature-set id. Cached per distinct params.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pandas as pd

from cluster.config import IndicatorParams

# Bump whenever a formula changes, so that feature-set ids change with it.
DEFINITIONS_VERSION = 1
# Bump whenever the layout of a state row changes (old states are then refused).
STATE_VERSION = 2
# The TA-Lib C library whose arithmetic the kernel reproduces (bit for bit; the
# tests check it against the installed TA-Lib). Named in the definitions, so the
# feature-set id does not depend on whether TA-Lib is installed at run time.
TALIB_VERSION = "0.8.1"

BAR_INPUTS = ("instrument", "date", "high", "low", "close", "volume", "vwap")
TAIL_COLUMNS = ("high", "low", "close", "vwap", "volume", "typical", "log_return",
                "fastk", "slowk")
NCOL = len(TAIL_COLUMNS)
_H, _L, _C, _VW, _VO, _TP, _RET, _FK, _SK = range(NCOL)

# Fixed part of a state's carry, after one running sum per SMA window and one value
# per EMA window. The kernel addresses these by position (offset ``cb + i``).
FIXED_FIELDS = (
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


@dataclass(frozen=True)
class Spec:
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
    column_index: pd.Index      # instrument, date, columns: the output frame's
    fields: tuple[str, ...]     # names of the carry values
    seg_len: tuple[int, ...]    # per TAIL_COLUMNS entry, rows of it a state keeps
    seg_off: tuple[int, ...]
    width: int                  # sum(seg_len): values of a state's tail
    sma_arr: np.ndarray
    ema_arr: np.ndarray
    ipar: np.ndarray            # the kernel's integer parameters (see kernel.run)
    fpar: np.ndarray            # and its float ones
    lookback: int
    definitions: dict
    fingerprint: str            # what a state records: made with these params


def _key(p: IndicatorParams) -> tuple:
    return (tuple(p.sma_windows), tuple(p.ema_windows), p.bollinger_window,
            float(p.bollinger_std), float(p.sar_acceleration), float(p.sar_maximum),
            p.rsi_window, p.stoch_k, p.stoch_slowk, p.stoch_d, p.williams_window,
            p.cci_window, p.vwap_window, p.atr_window, p.hv_window, p.hv_annualization)


_DEFAULT_KEY = _key(IndicatorParams())


def spec(params: IndicatorParams | None) -> Spec:
    return _spec_for(_DEFAULT_KEY if params is None else _key(params))


@lru_cache(maxsize=32)
def _spec_for(key: tuple) -> Spec:
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
    s = dict(sma=sma, ema=ema, bb_n=int(bb_n), bb_dev=float(bb_dev),
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
                   + list(FIXED_FIELDS))
    # Lags (rows back from the row being computed) each tail column is read at.
    window_hl = max(st_k, wr_n)
    reads = [set() for _ in range(NCOL)]
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
    definitions = _definitions(s, columns)
    blob = json.dumps({"definitions": definitions, "state": STATE_VERSION,
                       "tail": seg_len}, sort_keys=True)
    ipar = np.array([max(seg_len), bb_n, rsi_n, st_k, st_sk, st_d, wr_n, cci_n, vw_n, atr_n,
                     hv_n, *seg_off, *seg_len], dtype=np.int64)
    fpar = np.array([bb_dev, min(sar_acc, sar_max), sar_max, math.sqrt(hv_ann)])
    for arr in (ipar, fpar):
        arr.flags.writeable = False
    return Spec(**s, columns=columns,
                column_index=pd.Index(["instrument", "date", *columns]),
                fields=fields, seg_len=seg_len, seg_off=seg_off, width=sum(seg_len),
                sma_arr=np.asarray(sma, dtype=np.int64), ema_arr=np.asarray(ema, dtype=np.int64),
                ipar=ipar, fpar=fpar, lookback=max(seg_len), definitions=definitions,
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
    """Per column: the TA-Lib function (and parameters) whose values it has, or the
    formula of our own; the warm-up. Hashed into the feature-set id."""
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
            "library": f"TA-Lib {TALIB_VERSION} (compatibility default, no unstable period)",
            "inputs": list(BAR_INPUTS[2:]),
            "columns": [dict(name=c, **d[c]) for c in columns]}


def indicator_columns(params: IndicatorParams | None = None) -> list[str]:
    """Indicator column names in output order (window numbers from ``params``)."""
    return list(spec(params).columns)


def indicator_definitions(params: IndicatorParams | None = None) -> dict:
    """What every column is: function, inputs, parameters, warm-up. Plain JSON data,
    the same for equal params; meant to be hashed into a feature-set id."""
    return json.loads(json.dumps(spec(params).definitions))


def indicator_lookback(params: IndicatorParams | None = None) -> int:
    """Most rows of history an incremental update reads back (longest tail segment)."""
    return spec(params).lookback


def indicator_warmup(params: IndicatorParams | None = None) -> dict[str, int]:
    """Per column, how many leading rows of an instrument are NaN (warm-up)."""
    return {c["name"]: c["warmup"] for c in spec(params).definitions["columns"]}


def state_fields(params: IndicatorParams | None = None) -> list[str]:
    """Names of the columns of a state's ``carry``, in order."""
    return list(spec(params).fields)


def tail_layout(params: IndicatorParams | None = None) -> dict[str, int]:
    """Per ``TAIL_COLUMNS`` entry, how many rows of it a state's ``tail`` keeps (the
    tail is these segments side by side, in this order, each oldest first)."""
    return dict(zip(TAIL_COLUMNS, spec(params).seg_len))

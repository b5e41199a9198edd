"""The streaming kernel: every indicator of many instruments in one pass, from a state.

``_kernel`` is the one implementation of the indicators, for full runs (from an
empty state) and incremental ones alike, so both do the very same floating-point
operations. Its TA-Lib columns re-implement the exact TA-Lib 0.8 arithmetic,
read off the shipped library's machine code: explicit ``fma()`` in EMA, ATR
(``atr*(n-1)/n + tr*(1-(n-1)/n)``) and SAR; RSI multiplying by ``1/n``; BBANDS'
variance from running sums shifted by a reference value that is re-anchored on
cancellation or every ``32*n`` bars; the scale-relative zero guards of STOCH,
WILLR (clamped to [-100, 0]) and CCI; OBV seeded with the first volume. TA-Lib
itself is the tests' oracle (``tests/test_indicators.py``: bit-equal on the
shared bars, relative 1e-9 on random ones), not a run-time dependency.

Own indicators (TA-Lib has none): rolling VWAP and historical volatility keep
compensated (Neumaier) running window sums; the band ratios come from the bands.
"""
from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from cluster.features.indicators.spec import Spec

_EPS = 1e-14  # TA_EPSILON of TA-Lib 0.8 (TA_IS_ZERO_SCALED)


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
def _kernel(hi, lo, cl, vw, vo, starts, n0, carry, tail, new_tail, out, sma_w, ema_w, ipar,
            fpar):
    """Advance every instrument's state over its new rows.

    Instrument ``k`` owns rows ``starts[k]:starts[k+1]`` of the flat inputs and had
    ``n0[k]`` rows before them; ``carry[k]`` (updated in place) and ``tail[k]`` are
    its state; column ``c``'s tail segment (``ipar[11 + c]``: offset, ``ipar[20 + c]``:
    length) goes just before slot ``P`` of the column's line. Writes the tail
    after the new rows to ``new_tail`` and the indicators to ``out`` (one row per
    column; left untouched during warm-up). ``ipar``/``fpar`` carry the
    parameters (``spec.Spec``).
    """
    P, bb_n, rsi_n, st_k, st_sk, st_d = ipar[0], ipar[1], ipar[2], ipar[3], ipar[4], ipar[5]
    wr_n, cci_n, vw_n, atr_n, hv_n = ipar[6], ipar[7], ipar[8], ipar[9], ipar[10]
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
            off = ipar[11 + c]
            ln = ipar[20 + c]
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
        for c in range(9):
            off = ipar[11 + c]
            ln = ipar[20 + c]
            for j in range(ln):
                new_tail[k, off + j] = buf[c, P - ln + nk + j]


def run(s: Spec, cols, starts, n0, carry, tail, out) -> np.ndarray:
    """Advance the states (rows seen ``n0``, ``carry`` updated in place, ``tail``)
    over the rows ``cols`` (high, low, close, vwap, volume; instrument ``k`` owns rows
    ``starts[k]:starts[k+1]``), writing the indicators into ``out`` (one row per
    column, NaN where not written). Returns the tails after the rows."""
    hi, lo, cl, vw, vo = cols
    new_tail = np.empty_like(tail)
    _kernel(hi, lo, cl, vw, vo, starts, n0, carry, tail, new_tail, out, s.sma_arr,
            s.ema_arr, s.ipar, s.fpar)
    return new_tail

"""The numba kernels of Alpha158's rolling operators (``alpha158`` drives them).

Every window is evaluated from its own rows (no running sums carried over the
history), newest row first, in float64 on Qlib's float32 values; the nested
windows 5 <= 10 <= 20 <= 30 <= 60 of a row share one pass over its look-back.

Speed without changing a bit of the result:

* ``TILE`` consecutive rows are computed side by side, one SIMD lane each: at
  each lag every lane adds its own row's value, in the order a row-by-row loop
  adds it, so each lane's sums are exactly that loop's. A value that does not
  count (NaN, or before the instrument's first row) adds +0.0, which leaves a
  sum exactly as it is (these sums start at +0.0 and never become -0.0). The
  lane loops hold no branches, so LLVM vectorises them.
* Each instrument's columns are first copied into float64 lines behind ``PAD``
  rows of NaN (0 for the up/down flags), so a window that reaches before the
  instrument's first row reads values that count for nothing.
* The quantiles read each window's closes sorted: one sorted array per window,
  slid along the rows (the leaving value out, the new one in), not re-sorted.
"""
from __future__ import annotations

import numba as nb
import numpy as np

WINDOWS = (5, 10, 20, 30, 60)
_W = np.array(WINDOWS, dtype=np.int64)
TILE = 64       # rows computed side by side
PAD = 59        # WINDOWS[-1] - 1: rows of look-back a window reads before its row
ROLL0 = 13      # output row of the first rolling column (ROC5); column op of window
#                 w is at ROLL0 + w + 5 * op (ROC 0, MA 1, STD 2, ... VSUMD 28)
_NCOL = 16      # input lines per instrument


@nb.njit(inline="always")
def _lower(arr, n, x):  # pragma: no cover - numba
    """First index of the sorted ``arr[:n]`` holding a value >= ``x``."""
    lo = 0
    hi = n
    while lo < hi:
        mid = (lo + hi) >> 1
        if arr[mid] < x:
            lo = mid + 1
        else:
            hi = mid
    return lo


@nb.njit(inline="always")
def _upper(arr, lo, hi, x):  # pragma: no cover - numba
    """First index in ``lo..hi`` of the sorted ``arr`` holding a value > ``x``."""
    while lo < hi:
        mid = (lo + hi) >> 1
        if arr[mid] <= x:
            lo = mid + 1
        else:
            hi = mid
    return lo


@nb.njit(inline="always")
def _slide(srt, n, xo, x):  # pragma: no cover - numba
    """The sorted ``srt[:n]`` with one ``xo`` taken out (NaN: none) and ``x`` put
    in (NaN: none), moving only the values between the two places; returns the
    new count."""
    if xo == xo:
        p = _lower(srt, n, xo)      # srt[p] == xo
        if x == x:
            if x >= xo:             # x's place is after p: shift the rest left
                q = _upper(srt, p + 1, n, x)
                for j in range(p, q - 1):
                    srt[j] = srt[j + 1]
                srt[q - 1] = x
            else:                   # before p: shift right
                q = _upper(srt, 0, p, x)
                for j in range(p, q, -1):
                    srt[j] = srt[j - 1]
                srt[q] = x
            return n
        for j in range(p, n - 1):
            srt[j] = srt[j + 1]
        return n - 1
    if x == x:
        q = _upper(srt, 0, n, x)
        for j in range(n, q, -1):
            srt[j] = srt[j - 1]
        srt[q] = x
        return n + 1
    return n


@nb.njit(cache=True, nogil=True, error_model="numpy")
def _quantiles(c, starts, ends, firsts, out):  # pragma: no cover - numba
    """QTLU and QTLD (Qlib's linear interpolation among the window's non-NaN
    closes) of rows firsts[k]..ends[k]-1 of each block k."""
    srt = np.empty((5, 64), dtype=np.float64)
    cnt = np.zeros(5, dtype=np.int64)
    hist = np.empty(64, dtype=np.float64)   # the look-back before firsts[k], sorted
    hrow = np.empty(64, dtype=np.int64)     # and the row of each value
    nan = np.nan
    r = 0
    for k in range(starts.shape[0]):
        f = firsts[k]
        # the windows as of row f - 1, sorted once from its look-back (rows from lo)
        lo = max(starts[k], f - _W[4])
        nh = 0
        for j in range(lo, f):
            x = np.float64(c[j])
            if x == x:
                p = nh
                while p > 0 and hist[p - 1] > x:
                    hist[p] = hist[p - 1]
                    hrow[p] = hrow[p - 1]
                    p -= 1
                hist[p] = x
                hrow[p] = j
                nh += 1
        for w in range(5):
            n = 0
            for j in range(nh):
                if hrow[j] >= f - _W[w]:
                    srt[w, n] = hist[j]
                    n += 1
            cnt[w] = n
        for i in range(f, ends[k]):
            x = np.float64(c[i])
            for w in range(5):
                jo = i - _W[w]
                xo = np.float64(c[jo]) if jo >= lo else nan
                cnt[w] = _slide(srt[w], cnt[w], xo, x)
            for w in range(5):
                nc = cnt[w]
                buf = srt[w]
                for q, col in ((0.8, ROLL0 + w + 40), (0.2, ROLL0 + w + 45)):
                    if nc > 0:
                        fidx = q * (nc - 1)
                        lo_ = int(fidx)
                        if fidx == lo_:
                            qv = buf[lo_]
                        else:
                            qv = buf[lo_] + (buf[lo_ + 1] - buf[lo_]) * (fidx - lo_)
                        out[col, r] = qv / x
                    else:
                        out[col, r] = nan
            r += 1


@nb.njit(cache=True, nogil=True, error_model="numpy")
def rolling(c, h, l, vden, v, posc, negc, absc, gt, lt, lv, r1, lr, wv, posv, negv, absv,
            starts, ends, firsts, out):  # pragma: no cover - numba
    """Rolling columns (all but ROC) of rows firsts[k]..ends[k]-1 of each block k
    (rows starts[k]..ends[k]-1 of the float32 inputs) into ``out`` (one float32
    row per output column, one column per output row in block order)."""
    _quantiles(c, starts, ends, firsts, out)
    nan = np.nan
    maxlen = 0
    for k in range(starts.shape[0]):
        maxlen = max(maxlen, ends[k] - starts[k])
    src = (c, h, l, lv, r1, lr, posc, negc, absc, gt, lt, v, wv, posv, negv, absv)
    B = np.empty((_NCOL, PAD + maxlen), dtype=np.float64)   # an instrument's lines
    bc, bh, bl, blv, br1, blr, bposc, bnegc = B[0], B[1], B[2], B[3], B[4], B[5], B[6], B[7]
    babsc, bgt, blt, bv, bwv, bposv, bnegv, babsv = (B[8], B[9], B[10], B[11], B[12], B[13],
                                                     B[14], B[15])
    L = np.empty((4, TILE), dtype=np.float64)               # per lane, fixed over a tile
    ci, vd, row, inside = L[0], L[1], L[2], L[3]
    A = np.zeros((67, TILE), dtype=np.float64)              # per lane accumulators
    nc, kc, s1c, s2c, su, suu, suy, nless, nequal = (A[0], A[1], A[2], A[3], A[4], A[5],
                                                     A[6], A[7], A[8])
    nh, maxh, rowh, nanh, nl, minl, rowl, nanl = (A[9], A[10], A[11], A[12], A[13], A[14],
                                                  A[15], A[16])
    nlv, klv, s1lv, s2lv = A[17], A[18], A[19], A[20]
    n1, k1x, k1y, a1x, a1y, a1xx, a1yy, a1xy = (A[21], A[22], A[23], A[24], A[25], A[26],
                                                A[27], A[28])
    nr1, kr1, s1r1, s2r1, nlr, klr, s1lr, s2lr = (A[29], A[30], A[31], A[32], A[33], A[34],
                                                  A[35], A[36])
    n2, k2x, k2y, a2x, a2y, a2xx, a2yy, a2xy = (A[37], A[38], A[39], A[40], A[41], A[42],
                                                A[43], A[44])
    sgt, slt, npc, spc, nnc, snc, nac, sac = (A[45], A[46], A[47], A[48], A[49], A[50],
                                              A[51], A[52])
    nv, kv, s1v, s2v, nw, kw, s1w, s2w = (A[53], A[54], A[55], A[56], A[57], A[58], A[59],
                                          A[60])
    npv, spv, nnv, snv, nav, sav = A[61], A[62], A[63], A[64], A[65], A[66]
    Y = np.empty((26, TILE), dtype=np.float64)              # a window's outputs per lane
    r0 = 0
    for k in range(starts.shape[0]):
        s = starts[k]
        ln = ends[k] - s
        for q in range(_NCOL):
            line = B[q]
            col = src[q]
            pad = 0.0 if q == 9 or q == 10 else nan  # gt, lt: counts, not NaN-skipped
            for p in range(PAD):
                line[p] = pad
            for t in range(ln):
                line[PAD + t] = col[s + t]
        t_first = firsts[k] - s
        for t0 in range(t_first, ln, TILE):
            mt = min(TILE, ln - t0)
            A[:, :] = 0.0
            for a in range(mt):
                maxh[a] = -np.inf
                rowh[a] = -1.0
                nanh[a] = -1.0
                minl[a] = np.inf
                rowl[a] = -1.0
                nanl[a] = -1.0
                ci[a] = bc[PAD + t0 + a]
                vd[a] = np.float64(vden[s + t0 + a])
                row[a] = np.float64(t0 + a)     # the lane's row in its instrument
            uo = 0
            for w in range(5):
                d = _W[w]
                while uo < d:
                    u = np.float64(uo)
                    uu = u * u
                    # the lanes' rows at lag uo: views (lane a at index a) into the lines
                    off = PAD + t0 - uo
                    end = off + mt
                    xc, xh, xl, xlv = bc[off:end], bh[off:end], bl[off:end], blv[off:end]
                    xr1, xlr, xposc, xnegc = br1[off:end], blr[off:end], bposc[off:end], bnegc[off:end]
                    xabsc, xgt, xlt, xv = babsc[off:end], bgt[off:end], blt[off:end], bv[off:end]
                    xwv, xposv, xnegv, xabsv = bwv[off:end], bposv[off:end], bnegv[off:end], babsv[off:end]
                    for a in range(mt):
                        inside[a] = 1.0 if row[a] >= u else 0.0
                    # close: count, shifted sums, regression on the lag u, rank counts
                    for a in range(mt):
                        x = xc[a]
                        ok = x == x
                        k0 = x if (ok & (nc[a] == 0.0)) else kc[a]
                        kc[a] = k0
                        dx = x - k0 if ok else 0.0
                        nc[a] += 1.0 if ok else 0.0
                        s1c[a] += dx
                        s2c[a] += dx * dx
                        su[a] += u if ok else 0.0
                        suu[a] += uu if ok else 0.0
                        suy[a] += u * dx
                        nless[a] += 1.0 if x < ci[a] else 0.0
                        nequal[a] += 1.0 if x == ci[a] else 0.0
                    # high / low: max/min and their lag (first NaN wins, earliest tie)
                    for a in range(mt):
                        ins = inside[a] != 0.0
                        x = xh[a]
                        nanh[a] = u if (ins & (x != x)) else nanh[a]
                        nh[a] += 1.0 if x == x else 0.0
                        up = x >= maxh[a]
                        maxh[a] = x if up else maxh[a]
                        rowh[a] = u if up else rowh[a]
                        x = xl[a]
                        nanl[a] = u if (ins & (x != x)) else nanl[a]
                        nl[a] += 1.0 if x == x else 0.0
                        dn = x <= minl[a]
                        minl[a] = x if dn else minl[a]
                        rowl[a] = u if dn else rowl[a]
                    # CORR: (close, log(volume+1)) pairs and log-volume alone
                    for a in range(mt):
                        x = xc[a]
                        y = xlv[a]
                        oky = y == y
                        k0 = y if (oky & (nlv[a] == 0.0)) else klv[a]
                        klv[a] = k0
                        dy = y - k0 if oky else 0.0
                        nlv[a] += 1.0 if oky else 0.0
                        s1lv[a] += dy
                        s2lv[a] += dy * dy
                        ok = oky & (x == x)
                        first = ok & (n1[a] == 0.0)
                        kx = x if first else k1x[a]
                        ky = y if first else k1y[a]
                        k1x[a] = kx
                        k1y[a] = ky
                        dx = x - kx if ok else 0.0
                        dy = y - ky if ok else 0.0
                        n1[a] += 1.0 if ok else 0.0
                        a1x[a] += dx
                        a1y[a] += dy
                        a1xx[a] += dx * dx
                        a1yy[a] += dy * dy
                        a1xy[a] += dx * dy
                    # CORD: close ratio and log volume ratio, each alone, then pairs
                    for a in range(mt):
                        x = xr1[a]
                        okx = x == x
                        k0 = x if (okx & (nr1[a] == 0.0)) else kr1[a]
                        kr1[a] = k0
                        dx = x - k0 if okx else 0.0
                        nr1[a] += 1.0 if okx else 0.0
                        s1r1[a] += dx
                        s2r1[a] += dx * dx
                        y = xlr[a]
                        oky = y == y
                        k0 = y if (oky & (nlr[a] == 0.0)) else klr[a]
                        klr[a] = k0
                        dy = y - k0 if oky else 0.0
                        nlr[a] += 1.0 if oky else 0.0
                        s1lr[a] += dy
                        s2lr[a] += dy * dy
                    for a in range(mt):
                        x = xr1[a]
                        y = xlr[a]
                        ok = (x == x) & (y == y)
                        first = ok & (n2[a] == 0.0)
                        kx = x if first else k2x[a]
                        ky = y if first else k2y[a]
                        k2x[a] = kx
                        k2y[a] = ky
                        dx = x - kx if ok else 0.0
                        dy = y - ky if ok else 0.0
                        n2[a] += 1.0 if ok else 0.0
                        a2x[a] += dx
                        a2y[a] += dy
                        a2xx[a] += dx * dx
                        a2yy[a] += dy * dy
                        a2xy[a] += dx * dy
                    # up/down days and close change sums
                    for a in range(mt):
                        sgt[a] += xgt[a]
                        slt[a] += xlt[a]
                        x = xposc[a]
                        ok = x == x
                        npc[a] += 1.0 if ok else 0.0
                        spc[a] += x if ok else 0.0
                        x = xnegc[a]
                        ok = x == x
                        nnc[a] += 1.0 if ok else 0.0
                        snc[a] += x if ok else 0.0
                        x = xabsc[a]
                        ok = x == x
                        nac[a] += 1.0 if ok else 0.0
                        sac[a] += x if ok else 0.0
                    # volume and |return| x volume: shifted sums
                    for a in range(mt):
                        x = xv[a]
                        ok = x == x
                        k0 = x if (ok & (nv[a] == 0.0)) else kv[a]
                        kv[a] = k0
                        dx = x - k0 if ok else 0.0
                        nv[a] += 1.0 if ok else 0.0
                        s1v[a] += dx
                        s2v[a] += dx * dx
                        x = xwv[a]
                        ok = x == x
                        k0 = x if (ok & (nw[a] == 0.0)) else kw[a]
                        kw[a] = k0
                        dx = x - k0 if ok else 0.0
                        nw[a] += 1.0 if ok else 0.0
                        s1w[a] += dx
                        s2w[a] += dx * dx
                    # volume change sums
                    for a in range(mt):
                        x = xposv[a]
                        ok = x == x
                        npv[a] += 1.0 if ok else 0.0
                        spv[a] += x if ok else 0.0
                        x = xnegv[a]
                        ok = x == x
                        nnv[a] += 1.0 if ok else 0.0
                        snv[a] += x if ok else 0.0
                        x = xabsv[a]
                        ok = x == x
                        nav[a] += 1.0 if ok else 0.0
                        sav[a] += x if ok else 0.0
                    uo += 1
                _window(d, mt, ci, vd, row, A, Y)
                ro = r0 + t0 - t_first
                for j in range(26):
                    orow = out[ROLL0 + w + 5 * _OPS[j], ro:ro + mt]
                    yrow = Y[j]
                    for a in range(mt):
                        orow[a] = yrow[a]
        r0 += ln - t_first


# Output operators of ``_window``'s rows (op index: column ROLL0 + w + 5 * op).
_OPS = np.array([1, 2, 3, 4, 5, 6, 7, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22,
                 23, 24, 25, 26, 27, 28], dtype=np.int64)


@nb.njit(inline="always")
def _window(d, mt, ci, vd, row, A, Y):  # pragma: no cover - numba
    """Window ``d``'s outputs of each lane from its accumulators, branch-free
    (each value computed, then chosen) so that the lanes vectorise."""
    nan = np.nan
    fd = np.float64(d)
    nc, kc, s1c, s2c, su, suu, suy, nless, nequal = (A[0], A[1], A[2], A[3], A[4], A[5],
                                                     A[6], A[7], A[8])
    nh, maxh, rowh, nanh, nl, minl, rowl, nanl = (A[9], A[10], A[11], A[12], A[13], A[14],
                                                  A[15], A[16])
    nlv, s1lv, s2lv = A[17], A[19], A[20]
    n1, a1x, a1y, a1xx, a1yy, a1xy = A[21], A[24], A[25], A[26], A[27], A[28]
    nr1, s1r1, s2r1, nlr, s1lr, s2lr = A[29], A[31], A[32], A[33], A[35], A[36]
    n2, a2x, a2y, a2xx, a2yy, a2xy = A[37], A[40], A[41], A[42], A[43], A[44]
    sgt, slt, npc, spc, nnc, snc, nac, sac = (A[45], A[46], A[47], A[48], A[49], A[50],
                                              A[51], A[52])
    nv, kv, s1v, s2v, nw, kw, s1w, s2w = (A[53], A[54], A[55], A[56], A[57], A[58], A[59],
                                          A[60])
    npv, spv, nnv, snv, nav, sav = A[61], A[62], A[63], A[64], A[65], A[66]
    for a in range(mt):
        c0 = ci[a]
        n = nc[a]
        m = min(fd, row[a] + 1.0)      # rows of the window inside the instrument
        # MA, STD
        mean_c = kc[a] + s1c[a] / n if n > 0 else nan
        var = (s2c[a] - s1c[a] * s1c[a] / n) / (n - 1)
        sq = np.sqrt(var) if var > 0.0 else 0.0
        std_c = sq if n > 1 else nan
        Y[0, a] = mean_c / c0
        Y[1, a] = std_c / c0
        # BETA, RSQR, RESI (x = slot position = d - u; slope_x = -slope_u)
        num = n * suy[a] - su[a] * s1c[a]
        den_u = n * suu[a] - su[a] * su[a]
        slope_u = num / den_u
        Y[2, a] = -slope_u / c0
        rv = num / np.sqrt(den_u * (n * s2c[a] - s1c[a] * s1c[a]))
        Y[3, a] = nan if std_c <= 2e-5 else rv * rv
        resi = (c0 - kc[a]) - (s1c[a] / n - slope_u * (su[a] / n))
        Y[4, a] = (resi if n > 0 else nan) / c0
        # MAX, MIN
        mx = maxh[a] if nh[a] > 0 else nan
        mn = minl[a] if nl[a] > 0 else nan
        Y[5, a] = mx / c0
        Y[6, a] = mn / c0
        # RANK
        rank = (nless[a] + (nequal[a] + 1.0) / 2.0) / n
        Y[7, a] = nan if (c0 != c0) | (n == 0) else rank
        # RSV
        Y[8, a] = (c0 - mn) / (mx - mn + 1e-12)
        # IMAX, IMIN, IMXD: 1-based slot of the chosen lag in the window
        imax = m - (nanh[a] if nanh[a] >= 0 else rowh[a])
        imax = imax if nh[a] > 0 else nan
        imin = m - (nanl[a] if nanl[a] >= 0 else rowl[a])
        imin = imin if nl[a] > 0 else nan
        Y[9, a] = imax / fd
        Y[10, a] = imin / fd
        Y[11, a] = (imax - imin) / fd
        # CORR, CORD (NaN where either side's window std is within 2e-5 of 0)
        var = (s2lv[a] - s1lv[a] * s1lv[a] / nlv[a]) / (nlv[a] - 1)
        sd_y = (np.sqrt(var) if var > 0.0 else 0.0) if nlv[a] > 1 else nan
        cxy = a1xy[a] - a1x[a] * a1y[a] / n1[a]
        cxx = a1xx[a] - a1x[a] * a1x[a] / n1[a]
        cyy = a1yy[a] - a1y[a] * a1y[a] / n1[a]
        corr = cxy / np.sqrt(cxx * cyy)
        Y[12, a] = corr if (n1[a] > 1) & (not ((std_c <= 2e-5) | (sd_y <= 2e-5))) else nan
        var = (s2r1[a] - s1r1[a] * s1r1[a] / nr1[a]) / (nr1[a] - 1)
        sd_x = (np.sqrt(var) if var > 0.0 else 0.0) if nr1[a] > 1 else nan
        var = (s2lr[a] - s1lr[a] * s1lr[a] / nlr[a]) / (nlr[a] - 1)
        sd_y = (np.sqrt(var) if var > 0.0 else 0.0) if nlr[a] > 1 else nan
        cxy = a2xy[a] - a2x[a] * a2y[a] / n2[a]
        cxx = a2xx[a] - a2x[a] * a2x[a] / n2[a]
        cyy = a2yy[a] - a2y[a] * a2y[a] / n2[a]
        corr = cxy / np.sqrt(cxx * cyy)
        Y[13, a] = corr if (n2[a] > 1) & (not ((sd_x <= 2e-5) | (sd_y <= 2e-5))) else nan
        # CNTP, CNTN, CNTD
        Y[14, a] = sgt[a] / m
        Y[15, a] = slt[a] / m
        Y[16, a] = sgt[a] / m - slt[a] / m
        # SUMP, SUMN, SUMD
        sp = spc[a] if npc[a] > 0 else nan
        sn = snc[a] if nnc[a] > 0 else nan
        sa = sac[a] if nac[a] > 0 else nan
        Y[17, a] = sp / (sa + 1e-12)
        Y[18, a] = sn / (sa + 1e-12)
        Y[19, a] = (sp - sn) / (sa + 1e-12)
        # VMA, VSTD
        mean_v = kv[a] + s1v[a] / nv[a] if nv[a] > 0 else nan
        var = (s2v[a] - s1v[a] * s1v[a] / nv[a]) / (nv[a] - 1)
        std_v = (np.sqrt(var) if var > 0.0 else 0.0) if nv[a] > 1 else nan
        Y[20, a] = mean_v / vd[a]
        Y[21, a] = std_v / vd[a]
        # WVMA
        mean_w = kw[a] + s1w[a] / nw[a] if nw[a] > 0 else nan
        var = (s2w[a] - s1w[a] * s1w[a] / nw[a]) / (nw[a] - 1)
        std_w = (np.sqrt(var) if var > 0.0 else 0.0) if nw[a] > 1 else nan
        Y[22, a] = std_w / (mean_w + 1e-12)
        # VSUMP, VSUMN, VSUMD
        sp = spv[a] if npv[a] > 0 else nan
        sn = snv[a] if nnv[a] > 0 else nan
        sa = sav[a] if nav[a] > 0 else nan
        Y[23, a] = sp / (sa + 1e-12)
        Y[24, a] = sn / (sa + 1e-12)
        Y[25, a] = (sp - sn) / (sa + 1e-12)

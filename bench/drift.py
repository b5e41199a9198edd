"""Drift check speed and verdicts: ours (cluster.monitoring.drift) against Evidently's
``DataDriftPreset`` on the same frames, in the same run.

Frames: Alpha158 features (158 columns) of a synthetic market with a regime shift
(``--stocks`` x ``--days``, shift at 0.7); the reference is the model's training
reference sample (5,000 train-segment rows, as registered); for each checked day,
that day's cross-section and the 20-day window ending on it. Half the checked
days lie before the shift, half after.

Printed: per day (wall and process CPU time: on a shared machine the CPU time is
what the code costs, the wall time what it waited too) our time for the day + window check (target <= 50 ms), Evidently's
time for the same two reports, the ratio (target >= 20x), and how often the
per-feature verdicts on the window agree (ours: PSI/KS/tail rule; Evidently: its
default per-column test, Wasserstein distance (normed) > 0.1 above 1,000 rows,
else KS p < 0.05). Evidently is only in the ``bench`` extra:
``pip install -c constraints.txt -e .[bench]``.

    python bench/drift.py [--stocks 60] [--days 520] [--checks 4] [--repeat 5]
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings

import numpy as np
import pandas as pd

from _common import report  # noqa: E402  (puts the repo on sys.path)

from cluster.features.alpha158 import ALPHA158_NAMES, compute_alpha158, reindex_to_calendar
from cluster.monitoring.drift import DriftReference
from cluster.monitoring.reference import reference_sample
from cluster.sources.adjust import yahoo_to_canonical
from cluster.sources.synthetic import regime_shift_day, synthetic_market

FEATURES = list(ALPHA158_NAMES)


def _evidently():
    # Evidently 0.7 still imports a helper that pandas 3 removed; give it the pandas 2
    # behaviour (the dtype's scalar type) so it runs beside the project's pinned pandas.
    import pandas.core.dtypes.common as pdc
    if not hasattr(pdc, "infer_dtype_from_object"):
        def infer_dtype_from_object(dtype):
            try:
                return np.dtype(dtype).type
            except TypeError:
                return np.object_
        pdc.infer_dtype_from_object = infer_dtype_from_object
    warnings.filterwarnings("ignore")
    from evidently import Report
    from evidently.presets import DataDriftPreset
    return Report, DataDriftPreset


def evidently_verdicts(snapshot) -> dict[str, bool]:
    out = {}
    for m in snapshot.dict()["metrics"]:
        cfg = m.get("config", {})
        if not cfg.get("type", "").endswith("ValueDrift"):
            continue
        method, value, th = cfg.get("method", ""), m["value"], cfg.get("threshold")
        p_value = "p_value" in method or "K-S" in method or "test" in method.lower()
        out[cfg["column"]] = (value < th) if p_value else (value >= th)
    return out


def frames(stocks: int, days: int):
    yahoo = synthetic_market(stocks, days, seed=5, regime_shift_at=0.7)
    bars = yahoo_to_canonical(yahoo.assign(Date=pd.to_datetime(yahoo["Date"])))
    feats = compute_alpha158(reindex_to_calendar(bars, sorted(bars["date"].unique())))
    cal = np.array(sorted(feats["date"].unique()))
    ref = reference_sample(feats, (cal[60], cal[int(len(cal) * 0.5) - 1]), FEATURES)
    return feats, cal, ref, pd.Timestamp(regime_shift_day(days, 0.7))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--stocks", type=int, default=60)
    p.add_argument("--days", type=int, default=520)
    p.add_argument("--checks", type=int, default=4, help="days checked (half after the shift)")
    p.add_argument("--repeat", type=int, default=5, help="our timing: median of this many")
    args = p.parse_args()
    feats, cal, ref_rows, shift = frames(args.stocks, args.days)
    t0 = time.perf_counter()
    ref = DriftReference(ref_rows, FEATURES)
    prepare_ms = (time.perf_counter() - t0) * 1000
    scored = cal[int(len(cal) * 0.6):]
    pre, post = scored[scored < shift], scored[scored >= shift]
    half = args.checks // 2
    checks = list(pre[np.linspace(19, len(pre) - 1, half).astype(int)]) + \
        list(post[np.linspace(19, len(post) - 1, args.checks - half).astype(int)])
    Report, DataDriftPreset = _evidently()
    reference = ref_rows[FEATURES].astype("float64")
    rows = []
    for day in checks:
        i = int(np.searchsorted(cal, day))
        window = feats[(feats["date"] >= cal[i - 19]) & (feats["date"] <= day)][FEATURES]
        today = feats[feats["date"] == day][FEATURES]
        w, d = window.to_numpy(np.float64), today.to_numpy(np.float64)
        ours, ours_cpu = [], []
        for _ in range(args.repeat):
            t, c = time.perf_counter(), time.process_time()
            res = ref.check(w)
            ref.check(d)
            ours.append((time.perf_counter() - t) * 1000)
            ours_cpu.append((time.process_time() - c) * 1000)
        ours_ms, ours_cpu_ms = statistics.median(ours), statistics.median(ours_cpu)
        t, c = time.perf_counter(), time.process_time()
        snap = Report([DataDriftPreset()]).run(current_data=window.astype("float64"),
                                               reference_data=reference)
        Report([DataDriftPreset()]).run(current_data=today.astype("float64"),
                                        reference_data=reference)
        ev_ms = (time.perf_counter() - t) * 1000
        ev_cpu_ms = (time.process_time() - c) * 1000
        ev = evidently_verdicts(snap)
        mine = dict(zip(FEATURES, res.drifting.tolist()))
        common = [f for f in FEATURES if f in ev]
        agree = sum(mine[f] == ev[f] for f in common) / max(len(common), 1)
        rows.append({"day": str(pd.Timestamp(day).date()),
                     "regime": "after shift" if day >= shift else "before shift",
                     "window_rows": len(window), "day_rows": len(today),
                     "ours_ms": round(ours_ms, 2), "evidently_ms": round(ev_ms, 1),
                     "ratio": round(ev_ms / ours_ms, 1),
                     "ours_cpu_ms": round(ours_cpu_ms, 2), "evidently_cpu_ms": round(ev_cpu_ms, 1),
                     "cpu_ratio": round(ev_cpu_ms / max(ours_cpu_ms, 1e-3), 1),
                     "ours_drift_score": round(ref.score(res), 3),
                     "ours_drifting": int(res.drifting.sum()),
                     "evidently_drifting": int(sum(ev.values())),
                     "verdict_agreement": round(agree, 3)})
    ratios = [r["ratio"] for r in rows]
    rows.append({"summary": True, "reference_rows": len(ref_rows), "features": len(FEATURES),
                 "prepare_reference_ms": round(prepare_ms, 1),
                 "ours_ms_median": statistics.median(r["ours_ms"] for r in rows),
                 "evidently_ms_median": statistics.median(r["evidently_ms"] for r in rows),
                 "ratio_median": statistics.median(ratios), "ratio_min": min(ratios),
                 "ours_cpu_ms_median": statistics.median(r["ours_cpu_ms"] for r in rows),
                 "cpu_ratio_median": statistics.median(r["cpu_ratio"] for r in rows),
                 "load_average_1m": round(os.getloadavg()[0], 2),
                 "agreement_mean": round(statistics.mean(r["verdict_agreement"] for r in rows),
                                         3)})
    report("drift: ours vs Evidently DataDriftPreset (day + 20-day window, 158 features)", rows)


if __name__ == "__main__":
    main()

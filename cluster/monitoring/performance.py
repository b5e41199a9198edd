"""Realised performance of served and batch predictions, per version and trading day.

Predictions are joined to the label of their (instrument, date) from the features
table (``settings.qlib.label``, known once its ``label_horizon`` days have passed:
until then the label is missing and the day waits for a later run). Per version,
kind (``live`` = served + batch, ``shadow``) and day:

- ``ic`` / ``rank_ic``: the daily cross-sectional Pearson / Spearman IC, by the
  project's one scorer (``cluster.training.metrics.daily_ic``);
- ``hit_rate``: the share of instruments on the right side of the day's median:
  ``sign(pred - median(pred)) == sign(label - median(label))``;
- ``ls_return``: the day's top-k long-short return (mean label of the ``k``
  highest predictions minus that of the ``k`` lowest, ``k = topk_fraction`` of
  the cross-section, at least 1);
- rolling 20- and 60-day means (over evaluated days) of IC and RankIC, and the
  **IC decay**: the version's test-segment RankIC (registry) minus its rolling
  realised RankIC.

Several requests for the same (version, instrument, date) count once (their mean).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from cluster.training.metrics import daily_ic

MIN_CROSS_SECTION = 5


def dedupe(preds: pd.DataFrame) -> pd.DataFrame:
    """One prediction per (model_id, kind, instrument, date)."""
    keys = ["model_id", "kind", "date", "instrument"]
    return preds.groupby(keys, as_index=False, sort=True)["output"].mean()


def daily_performance(preds: pd.DataFrame, labels: pd.DataFrame,
                      topk_fraction: float = 0.1) -> pd.DataFrame:
    """``preds``: model_id, kind, instrument, date, output; ``labels``: instrument, date,
    label. Returns one row per (model_id, kind, date) with a known label."""
    cols = ["model_id", "kind", "date", "rows", "ic", "rank_ic", "hit_rate", "ls_return"]
    if preds.empty or labels.empty:
        return pd.DataFrame(columns=cols)
    joined = dedupe(preds).merge(labels, on=["instrument", "date"], how="inner")
    joined = joined[np.isfinite(joined["output"]) & np.isfinite(joined["label"])]
    out = []
    for (model_id, kind), g in joined.groupby(["model_id", "kind"], sort=True):
        counts = g.groupby("date").size()
        g = g[g["date"].isin(counts.index[counts >= MIN_CROSS_SECTION])]
        if g.empty:
            continue
        idx = pd.MultiIndex.from_arrays([pd.DatetimeIndex(g["date"]), g["instrument"]],
                                        names=["datetime", "instrument"])
        pred = pd.Series(g["output"].to_numpy(), idx)
        label = pd.Series(g["label"].to_numpy(), idx)
        ic = daily_ic(pred, label)
        ric = daily_ic(pred, label, "spearman")
        day = g.groupby("date", sort=True)
        med_p = day["output"].transform("median")
        med_l = day["label"].transform("median")
        hit = (np.sign(g["output"] - med_p) == np.sign(g["label"] - med_l)).groupby(
            g["date"]).mean()
        ls = day.apply(lambda d: _long_short(d["output"].to_numpy(), d["label"].to_numpy(),
                                             topk_fraction), include_groups=False)
        frame = pd.DataFrame({"rows": day.size(), "hit_rate": hit, "ls_return": ls})
        frame["ic"] = ic.reindex(frame.index).to_numpy()
        frame["rank_ic"] = ric.reindex(frame.index).to_numpy()
        frame = frame.reset_index().rename(columns={"index": "date"})
        frame.insert(0, "kind", kind)
        frame.insert(0, "model_id", model_id)
        out.append(frame)
    return pd.concat(out, ignore_index=True)[cols] if out else pd.DataFrame(columns=cols)


def _long_short(pred: np.ndarray, label: np.ndarray, fraction: float) -> float:
    k = max(1, int(round(len(pred) * fraction)))
    if len(pred) < 2 * k:
        return float("nan")
    order = np.argsort(pred, kind="stable")
    return float(label[order[-k:]].mean() - label[order[:k]].mean())


def with_rolling(history: pd.DataFrame, new: pd.DataFrame,
                 test_rank_ic: dict[str, float]) -> pd.DataFrame:
    """``new`` days with rolling 20/60 means computed over ``history`` + ``new`` (both
    per model_id and kind, by date), the test RankIC and the IC decay."""
    if new.empty:
        return new.assign(**{c: pd.Series(dtype=float) for c in (
            "ic_20", "rank_ic_20", "ic_60", "rank_ic_60", "rank_ic_days_60",
            "test_rank_ic", "ic_decay_20", "ic_decay_60")})
    hist = history[["model_id", "kind", "date", "ic", "rank_ic"]] if len(history) else \
        pd.DataFrame(columns=["model_id", "kind", "date", "ic", "rank_ic"])
    new = new.assign(date=pd.to_datetime(new["date"]))
    both = pd.concat([hist.assign(_new=False), new.assign(_new=True)], ignore_index=True)
    both["date"] = pd.to_datetime(both["date"])
    both = both.sort_values(["model_id", "kind", "date"], kind="stable")
    g = both.groupby(["model_id", "kind"], sort=False)
    for w in (20, 60):
        for col in ("ic", "rank_ic"):
            both[f"{col}_{w}"] = g[col].transform(
                lambda s, w=w: s.astype(float).rolling(w, min_periods=1).mean())
    both["rank_ic_days_60"] = g["rank_ic"].transform(
        lambda s: s.astype(float).rolling(60, min_periods=1).count())
    out = both[both["_new"]].drop(columns="_new")
    out = new.drop(columns=[c for c in ("ic", "rank_ic") if c in new]).merge(
        out[["model_id", "kind", "date", "ic", "rank_ic", "ic_20", "rank_ic_20", "ic_60",
             "rank_ic_60", "rank_ic_days_60"]], on=["model_id", "kind", "date"], how="left")
    out["test_rank_ic"] = out["model_id"].map(test_rank_ic).astype(float)
    out["ic_decay_20"] = out["test_rank_ic"] - out["rank_ic_20"]
    out["ic_decay_60"] = out["test_rank_ic"] - out["rank_ic_60"]
    return out


def rolling_mean(values: pd.Series, window: int, min_days: int) -> pd.Series:
    """Rolling mean over the last ``window`` values, NaN until ``min_days`` are finite."""
    v = values.astype(float)
    return v.rolling(window, min_periods=min_days).mean()

"""The drift table trimmed to what a heat map draws: the last ``days`` evaluated days,
the ``top`` features that drifted most over them (by one measure's maximum), any
features asked for by name, and the rest summarised per day (their maximum, mean and
how many drift), so nothing is hidden and the answer stays small (a version has ~158
features; every feature x 120 days was 19k rows, ~1 MB of JSON per page load).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from cluster.monitoring.store import Table

@dataclass(frozen=True)
class Window:
    """Which part of a version's drift figures: ``since`` (a date) and/or the last
    ``days`` evaluated days; ``top`` features by ``measure`` (None: every feature) plus
    the named ``features``."""
    since: object = None
    days: int | None = None
    top: int | None = None
    measure: str = "psi"
    features: tuple[str, ...] = ()


def _load(lake_dir, model_id: str, window: Window, columns: list[str] | None):
    """(rows of the window's days, how many days the version has since ``since``);
    unknown names in ``window.features`` are a ValueError naming them."""
    filters = [("model_id", "=", model_id)]
    if window.since is not None:
        filters.append(("date", ">=", window.since))
    frame = Table(lake_dir, "drift").read(filters, columns=columns)
    if frame.empty:
        return frame, 0
    dates = np.sort(frame["date"].unique())
    if window.days is not None and window.days < len(dates):
        frame = frame[frame["date"] >= dates[len(dates) - window.days]]
    unknown = sorted(set(window.features) - set(frame["feature"].unique()))
    if unknown:
        raise ValueError(f"feature: no drift figures for {unknown[:10]} of {model_id!r} "
                         f"(known: {sorted(frame['feature'].unique())[:10]}...)")
    return frame, len(dates)


def read_window(lake_dir, model_id: str, window: Window) -> pd.DataFrame:
    """The drift rows of ``model_id`` in ``window``, sorted by date and feature."""
    frame, _ = _load(lake_dir, model_id, window, None)
    if frame.empty:
        return frame
    if window.top is not None:
        keep = set(ranking(frame, window.measure).index[:window.top]) | set(window.features)
        frame = frame[frame["feature"].isin(keep)]
    elif window.features:
        frame = frame[frame["feature"].isin(window.features)]
    return frame.sort_values(["date", "feature"], kind="stable")


def ranking(frame: pd.DataFrame, measure: str) -> pd.DataFrame:
    """Per feature over the frame's days: max and mean of ``measure`` and the days it
    drifted, most drifting first (ties by name, so the order is stable)."""
    g = frame.groupby("feature")
    out = pd.DataFrame({"max": g[measure].max(), "mean": g[measure].mean(),
                        "drifting_days": g["drifting"].sum().astype(int)})
    out = out.rename_axis("feature").reset_index()
    out["_max"] = out["max"].fillna(-math.inf)
    out = out.sort_values(["_max", "feature"], ascending=[False, True], kind="stable")
    return out.drop(columns="_max").set_index("feature")


def heatmap(lake_dir, model_id: str, window: Window) -> dict:
    """A (features x days) matrix of ``window.measure`` for the shown features (top
    first, then the named ones), the others summarised per day, and every feature's
    ranking. Empty dict when the version has no drift figures."""
    frame, days_total = _load(lake_dir, model_id, window,
                              ["date", "feature", window.measure, "drifting"])
    if frame.empty:
        return {}
    ranked = ranking(frame, window.measure)
    top = list(ranked.index[:window.top]) if window.top is not None else list(ranked.index)
    shown = top + [f for f in window.features if f not in top]
    grid = frame.pivot_table(index="feature", columns="date", values=window.measure,
                             aggfunc="last", dropna=False)
    dates = list(grid.columns)
    rest = frame[~frame["feature"].isin(shown)]
    by_day = rest.groupby("date")
    summary = {"features": int(rest["feature"].nunique()), "max": [], "mean": [], "drifting": []}
    if len(rest):
        summary |= {"max": _floats(by_day[window.measure].max().reindex(dates)),
                    "mean": _floats(by_day[window.measure].mean().reindex(dates)),
                    "drifting": [int(v) for v in
                                 by_day["drifting"].sum().reindex(dates).fillna(0)]}
    return {"measure": window.measure,
            "dates": [pd.Timestamp(d).date().isoformat() for d in dates],
            "days_total": days_total,
            "features": shown, "features_total": int(len(ranked)),
            "z": [_floats(grid.loc[f]) for f in shown],
            "rest": summary,
            "ranking": [{"feature": f, "max": _float(r["max"]), "mean": _float(r["mean"]),
                         "drifting_days": int(r["drifting_days"])}
                        for f, r in ranked.iterrows()]}


def _float(v):
    v = float(v)
    return round(v, 5) if math.isfinite(v) else None


def _floats(values) -> list:
    return [_float(v) for v in np.asarray(values, dtype=float)]

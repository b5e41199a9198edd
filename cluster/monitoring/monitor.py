"""One monitoring run: predictions -> realised performance, drift, alerts.

Incremental: the ``monitoring`` table remembers which (version, kind, day) were
evaluated and, in its commit metadata, the first day still waiting for its label
(``pending_from``) and the predictions table version it read. A run reads the
predictions from the earliest of ``pending_from`` and the first day of any
predictions file added since (a backfill by ``jobs.predict`` of older days
counts), evaluates only days whose label is known and not yet evaluated, and
appends them (one commit per table); it also brings the ``ab_daily`` table (per
experiment, arm and day: served rows, RankIC) up to date the same way. A daily run costs the same on day 250 as on
day 1: it reads a few days of predictions and features, and the last 60
evaluated days per version for the rolling windows.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np
import pandas as pd

from cluster.config import Settings, get_settings
from cluster.features.alpha158 import LABEL_NAME
from cluster.lake import predictions as P
from cluster.lake.features import FeaturesTable
from cluster.monitoring import abdaily, alerts as A
from cluster.monitoring.drift import DriftReference, daily_drift
from cluster.monitoring.performance import daily_performance, rolling_mean, with_rolling
from cluster.monitoring.reference import load_reference
from cluster.monitoring.store import Table

log = logging.getLogger(__name__)

HISTORY_DAYS = 120          # calendar days of monitoring rows read for the rolling windows


@dataclass
class VersionInfo:
    model_id: str
    test_rank_ic: float | None
    drift: DriftReference | None
    features: list[str] = field(default_factory=list)


class Monitor:
    def __init__(self, settings: Settings | None = None, registry=None, bus=None,
                 actions: A.AlertActions | None = None, resources: bool = True):
        self.settings = settings or get_settings()
        self.lake = self.settings.lake_dir
        self._registry = registry
        self.bus = bus
        self.actions = actions
        self.resources = resources
        self.monitoring = Table(self.lake, "monitoring")
        self.drift = Table(self.lake, "drift")
        self.alerts = A.AlertsTable(self.lake)
        self._versions: dict[str, VersionInfo] = {}
        self._drift_rows: pd.DataFrame | None = None

    @property
    def registry(self):
        if self._registry is None:
            from cluster.registry.store import ModelRegistry
            self._registry = ModelRegistry.for_settings(self.settings)
        return self._registry

    # -- the run -------------------------------------------------------------
    def run(self, model: str | None = None, since=None) -> dict:
        started = time.perf_counter()
        meta = self.monitoring.last_meta()
        start = self._start(meta, since)
        preds_version = P.table_version(self.lake)
        preds = self._predictions(start, model)
        evaluated = self._evaluated(start)
        new, pending_from = self._evaluate(preds, evaluated)
        history = self._history(new)
        rows = with_rolling(history, new, {m: v.test_rank_ic for m, v in self._versions.items()
                                           if v.test_rank_ic is not None})
        now = datetime.now(timezone.utc)
        rows["evaluated_at"] = now
        if not rows.empty:
            name_version = rows["model_id"].str.rpartition("/")
            rows["model"], rows["version"] = name_version[0], name_version[2]
        last_day = rows["date"].max() if len(rows) else None
        new_meta = {"pending_from": str(pending_from.date()) if pending_from is not None else (
            str((pd.Timestamp(last_day) + pd.Timedelta(days=1)).date()) if last_day is not None
            else meta.get("pending_from")), "predictions_version": preds_version}
        if len(rows) or new_meta != {k: meta.get(k) for k in new_meta}:
            self.monitoring.append(rows, new_meta)
        if self._drift_rows is not None:
            self.drift.append(self._drift_rows)
            self._drift_rows = None
        # the A/B statistics' daily figures, from the same few days of predictions
        abdaily.update(self.lake)
        transitions = self._alert(rows, history)
        dispatched = A.AlertDispatcher(self.lake, self.settings.monitoring, self.bus,
                                       self.actions).dispatch(transitions)
        if history.empty and rows.empty and meta.get("pending_from"):
            # nothing new: report each version's latest figures (the last 120 days read)
            recent = (pd.Timestamp(meta["pending_from"]) - pd.Timedelta(days=HISTORY_DAYS))
            history = self.monitoring.read([("date", ">=", recent.date())])
            if model:
                history = history[history["model"] == model]
        summary = self._summary(rows, history, dispatched, start, started)
        try:
            from cluster.monitoring.raymetrics import export_run
            export_run(summary, self.alerts)
        except Exception as exc:        # the dashboard is optional; the run is not
            log.debug("ray metrics not exported: %s", exc)
        return summary

    # -- inputs --------------------------------------------------------------
    def _start(self, meta: dict, since) -> pd.Timestamp | None:
        if since is not None:
            return pd.Timestamp(since)
        if not meta:
            return None
        starts = [pd.Timestamp(meta["pending_from"])] if meta.get("pending_from") else []
        added = P.first_date_added_since(self.lake, meta.get("predictions_version"))
        if added is not None:
            starts.append(pd.Timestamp(added))
        return min(starts) if starts else None

    def _predictions(self, start, model: str | None) -> pd.DataFrame:
        cols = ["version", "instrument", "date", "output", "source", "latency_ms",
                "request_id"]
        frame = P.read_predictions(self.lake, start=start, columns=cols)
        frame = frame[frame["date"].notna()]
        if model:
            frame = frame[frame["version"].str.rpartition("/")[0] == model]
        frame = frame.rename(columns={"version": "model_id"})
        frame["kind"] = np.where(frame["source"] == "shadow", "shadow", "live")
        frame["date"] = pd.to_datetime(frame["date"])
        return frame

    def _evaluated(self, start) -> set:
        filters = [("date", ">=", start.date())] if start is not None else None
        done = self.monitoring.read(filters, columns=["model_id", "kind", "date"])
        return set(zip(done["model_id"], done["kind"], pd.to_datetime(done["date"])))

    def _version(self, model_id: str) -> VersionInfo:
        if model_id not in self._versions:
            name, _, version = model_id.rpartition("/")
            test, ref, feats = None, None, []
            try:
                info = self.registry.get(name, version)
                test = info.metrics.get("test_rank_ic")
                reference = load_reference(self.registry, name, version)
                if reference is not None:
                    feats = [c for c in reference.columns if c not in ("date", "instrument")]
                    report = self.registry.artefact_json(name, version, "report.json")
                    d = self.settings.monitoring.drift
                    ref = DriftReference(reference, feats, report.get("feature_importance"),
                                         d.bins, d.psi_threshold, d.ks_alpha)
            except Exception as exc:
                log.warning("no registry information for %s (%s): IC decay and drift skipped",
                            model_id, exc)
            self._versions[model_id] = VersionInfo(model_id, test, ref, feats)
        return self._versions[model_id]

    # -- evaluation ----------------------------------------------------------
    def _evaluate(self, preds: pd.DataFrame, evaluated: set):
        """New monitoring rows, and the first day still waiting for its label."""
        if preds.empty:
            return pd.DataFrame(), None
        keys = list(zip(preds["model_id"], preds["kind"], preds["date"]))
        todo = preds[[k not in evaluated for k in keys]]
        if todo.empty:
            return pd.DataFrame(), None
        versions = {m: self._version(m) for m in todo["model_id"].unique()}
        feats = sorted({f for v in versions.values() for f in v.features})
        window = self.settings.monitoring.drift.window_days
        first, last = todo["date"].min(), todo["date"].max()
        table = FeaturesTable(self.lake)
        if not table.exists():
            return pd.DataFrame(), first
        features = table.read(start=first - pd.Timedelta(days=2 * window + 10), end=last,
                              columns=[LABEL_NAME, *feats])
        labels = features.loc[np.isfinite(features[LABEL_NAME]), ["instrument", "date",
                                                                   LABEL_NAME]]
        labels = labels.rename(columns={LABEL_NAME: "label"})
        known = set(labels["date"].unique())
        ready = todo[todo["date"].isin(known)]
        waiting = todo.loc[~todo["date"].isin(known), "date"]
        pending_from = waiting.min() if len(waiting) else None
        perf = daily_performance(ready, labels, self.settings.monitoring.topk_fraction)
        if perf.empty:
            return perf, pending_from
        perf["date"] = pd.to_datetime(perf["date"])
        for part in (self._latency(ready), self._drift(perf, ready, features)):
            part["date"] = pd.to_datetime(part["date"])
            perf = perf.merge(part, on=["model_id", "kind", "date"], how="left")
        return perf, pending_from

    def _latency(self, preds: pd.DataFrame) -> pd.DataFrame:
        served = preds[(preds["source"] == "served") & preds["latency_ms"].notna()]
        served = served.drop_duplicates(["model_id", "request_id"])
        g = served.groupby(["model_id", "kind", "date"])["latency_ms"]
        out = pd.DataFrame({"requests": g.size(), "p99_ms": g.quantile(0.99)}).reset_index()
        return out if len(out) else pd.DataFrame(columns=["model_id", "kind", "date",
                                                          "requests", "p99_ms"])

    def _drift(self, perf: pd.DataFrame, preds: pd.DataFrame, features: pd.DataFrame):
        window = self.settings.monitoring.drift.window_days
        per_day, per_feature = [], []
        for model_id, days in perf[perf["kind"] == "live"].groupby("model_id")["date"]:
            info = self._versions.get(model_id)
            if info is None or info.drift is None:
                continue
            universe = preds.loc[preds["model_id"] == model_id, "instrument"].unique()
            rows = features[features["instrument"].isin(universe)]
            day, feat = daily_drift(info.drift, rows, sorted(days.unique()), window)
            day["model_id"], day["kind"] = model_id, "live"
            feat["model_id"] = model_id
            per_day.append(day)
            per_feature.append(feat)
        # written after the monitoring rows (a failed run writes neither)
        self._drift_rows = pd.concat(per_feature, ignore_index=True) if per_feature else None
        cols = ["model_id", "kind", "date", "drift_score", "drifting_features"]
        if not per_day:
            return pd.DataFrame(columns=cols)
        out = pd.concat(per_day, ignore_index=True).rename(
            columns={"drifting": "drifting_features"})
        return out[cols]

    def _history(self, new: pd.DataFrame) -> pd.DataFrame:
        if new.empty:
            return pd.DataFrame()
        start = (new["date"].min() - pd.Timedelta(days=HISTORY_DAYS)).date()
        hist = self.monitoring.read([("date", ">=", start)])
        hist = hist[hist["model_id"].isin(set(new["model_id"]))]
        for m in new["model_id"].unique():
            self._version(m)
        return hist

    # -- alerts --------------------------------------------------------------
    def _alert(self, rows: pd.DataFrame, history: pd.DataFrame) -> list[A.Transition]:
        m = self.settings.monitoring
        book = A.AlertBook(self.alerts.active())
        transitions: list[A.Transition] = []
        if len(rows):
            live = rows[rows["kind"] == "live"]
            past = history[history["kind"] == "live"] if len(history) else history
            both = pd.concat([past[["model_id", "date", "rank_ic"]] if len(past) else None,
                              live[["model_id", "date", "rank_ic"]]], ignore_index=True)
            both = both.sort_values(["model_id", "date"]).drop_duplicates(
                ["model_id", "date"], keep="last")
            both["acc"] = both.groupby("model_id")["rank_ic"].transform(
                lambda s: rolling_mean(s, m.accuracy_window_days, m.accuracy_min_days))
            acc = dict(zip(zip(both["model_id"], both["date"]), both["acc"]))
            for day, today in live.sort_values("date").groupby("date", sort=True):
                readings = []
                for row in today.to_dict("records"):
                    a = acc.get((row["model_id"], row["date"]))
                    readings += A.model_readings(row, m.alert_thresholds,
                                                 None if a is None or a != a else float(a))
                transitions += book.evaluate(readings)
        if self.resources:
            from cluster.monitoring.usage import resource_usage
            transitions += book.evaluate(A.resource_readings(resource_usage(),
                                                             m.resource_thresholds))
        return transitions

    # -- summary -------------------------------------------------------------
    def _summary(self, rows, history, dispatched, start, started) -> dict:
        versions = {}
        allrows = pd.concat([history, rows], ignore_index=True) if len(history) else rows
        for model_id, g in (allrows.groupby("model_id") if len(allrows) else []):
            live = g[g["kind"] == "live"].sort_values("date")
            latest = live.iloc[-1] if len(live) else g.sort_values("date").iloc[-1]
            entry = {k: _num(latest.get(k)) for k in (
                "ic_20", "rank_ic_20", "ic_60", "rank_ic_60", "test_rank_ic", "ic_decay_20",
                "ic_decay_60", "drift_score")}
            entry["last_day"] = str(pd.Timestamp(latest["date"]).date())
            entry["days_evaluated"] = int(len(rows[rows["model_id"] == model_id])) \
                if len(rows) else 0
            shadow = g[g["kind"] == "shadow"].sort_values("date")
            if len(shadow):
                entry["shadow"] = {k: _num(shadow.iloc[-1].get(k)) for k in (
                    "rank_ic_20", "rank_ic_60", "ic_decay_20")}
            entry["alerts_raised"] = [d["rule"] for d in dispatched
                                      if d["subject"] == model_id and d["state"] == "raised"]
            entry["alerts_resolved"] = [d["rule"] for d in dispatched
                                        if d["subject"] == model_id
                                        and d["state"] == "resolved"]
            versions[model_id] = entry
        return {"days_evaluated": int(len(rows)),
                "since": str(start.date()) if start is not None else None,
                "versions": versions,
                "alerts": [{k: d[k] for k in ("rule", "model", "version", "day", "state",
                                               "value", "threshold", "alert_id", "action",
                                               "action_result")} for d in dispatched],
                "ic_decay": {m: {"test_rank_ic": v["test_rank_ic"],
                                 "rank_ic_20": v["rank_ic_20"], "rank_ic_60": v["rank_ic_60"],
                                 "decay_20": v["ic_decay_20"], "decay_60": v["ic_decay_60"]}
                             for m, v in versions.items()},
                "seconds": round(time.perf_counter() - started, 3)}


def _num(v):
    if v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return round(f, 6) if np.isfinite(f) else None


def run_monitor(settings: Settings | None = None, **kw) -> dict:
    run_kw = {k: kw.pop(k) for k in ("model", "since") if k in kw}
    return Monitor(settings, **kw).run(**run_kw)

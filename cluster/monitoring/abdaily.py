"""The ``ab_daily`` table: per rollout (experiment), arm and trading day, the served
prediction rows and their realised RankIC, kept incrementally by the monitor so the
A/B statistics never read the whole predictions table.

Watermark (the metadata of the table's last commit): ``predictions_version``, the
predictions table version the update read, and ``pending_from``, the first day whose
served rows were read but whose label was not known yet (null: none). Every served
row of that version dated before ``pending_from`` is in the table. So the rows not
covered are those dated from ``start = min(pending_from, first date of any
predictions file added since)``: the update reads only those (a date-pruned read: a
few days when the monitor runs daily, whatever the table's age), and so do the
readers, for what the last update has not seen yet. A (rollout, arm, day) is
evaluated once its label is known and again only if its served row count changed
(the predictions table is append-only: an equal count is the same rows); readers
keep the latest row per key, maintenance drops the older ones (registry dedupe).

Served rows without a trading day (posted feature rows: no instrument, no date) can
never be scored and are not counted here.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from cluster.lake import predictions as P
from cluster.monitoring.store import Table

KEY = ["rollout_id", "arm", "date"]
SERVED_COLUMNS = ["rollout_id", "arm", "version", "instrument", "date", "output", "source"]


@dataclass(frozen=True)
class Unseen:
    """The served rows the table does not cover: those dated ``>= start`` (``start``
    None: all of them) unless ``nothing``."""
    start: pd.Timestamp | None
    nothing: bool = False


def table(lake_dir: Path) -> Table:
    return Table(lake_dir, "ab_daily")


def unseen(lake_dir: Path, meta: dict | None = None) -> Unseen:
    meta = table(lake_dir).last_meta() if meta is None else meta
    if meta.get("predictions_version") is None:
        return Unseen(None)
    starts = [pd.Timestamp(meta["pending_from"])] if meta.get("pending_from") else []
    added = P.first_date_added_since(lake_dir, meta["predictions_version"])
    if added is not None:
        starts.append(pd.Timestamp(added))
    return Unseen(min(starts)) if starts else Unseen(None, nothing=True)


def served(lake_dir: Path, since: Unseen, rollout_id: str | None = None,
           version: int | None = None) -> pd.DataFrame:
    """Served rows of experiments (a rollout id, a trading day) not covered by the table."""
    if since.nothing:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in SERVED_COLUMNS})
    pred = P.read_arrow(lake_dir, start=since.start, version=version,
                        columns=SERVED_COLUMNS).to_pandas(date_as_object=False)
    pred = pred[(pred["source"] == "served") & pred["rollout_id"].notna()
                & pred["date"].notna()]
    if rollout_id is not None:
        pred = pred[pred["rollout_id"] == rollout_id]
    return pred.assign(date=pd.to_datetime(pred["date"]))


def with_labels(lake_dir: Path, pred: pd.DataFrame) -> pd.DataFrame:
    """``pred`` joined to the label of each (instrument, date) (missing: NaN)."""
    from cluster.features.alpha158 import LABEL_NAME
    from cluster.lake.features import FeaturesTable
    feats = FeaturesTable(lake_dir)
    named = pred["instrument"].dropna()
    if named.empty or not feats.exists():
        return pred.assign(label=np.nan)
    labels = feats.read(start=pred["date"].min(), end=pred["date"].max(),
                        instruments=sorted(named.unique()), columns=[LABEL_NAME])
    labels = labels.rename(columns={LABEL_NAME: "label"})[["instrument", "date", "label"]]
    labels = labels.assign(date=pd.to_datetime(labels["date"]))
    return pred.merge(labels, on=["instrument", "date"], how="left")


def evaluate(frame: pd.DataFrame) -> pd.DataFrame:
    """Served rows with labels -> one row per (rollout_id, arm, date): rows, keys, RankIC
    (by ``abtest.arm_daily_rank_ic``, the same as on the whole table)."""
    from cluster.monitoring.abtest import MIN_KEYS, arm_daily_rank_ic
    cols = KEY + ["rows", "keys", "rank_ic"]
    if frame.empty:
        return pd.DataFrame(columns=cols)
    rows = frame.groupby(KEY, dropna=False).size().rename("rows")
    scored = frame[np.isfinite(frame["label"].astype(float))]
    keys = scored.groupby(KEY).agg(keys=("instrument", "nunique"))
    out = pd.concat([rows, keys], axis=1).reset_index()
    out["keys"] = out["keys"].fillna(0).astype("int64")
    ics = []
    for rid, g in scored.groupby("rollout_id", sort=True):
        daily = arm_daily_rank_ic(g)
        if not daily.empty:
            long = daily.rename_axis("date").reset_index().melt(
                id_vars="date", var_name="arm", value_name="rank_ic")
            ics.append(long.assign(rollout_id=rid))
    if ics:
        ic = pd.concat(ics, ignore_index=True)
        ic["date"] = pd.to_datetime(ic["date"])
        out = out.merge(ic, on=KEY, how="left")
    else:
        out["rank_ic"] = np.nan
    # below MIN_KEYS keys a day has no RankIC (as on the whole table)
    out.loc[out["keys"] < MIN_KEYS, "rank_ic"] = np.nan
    return out[cols]


def stored(lake_dir: Path, rollout_id: str | None = None, before=None,
           from_=None) -> pd.DataFrame:
    """The table's latest row per key, optionally of one rollout and dated in
    [from_, before)."""
    filters = [("rollout_id", "=", rollout_id)] if rollout_id is not None else []
    if before is not None:
        filters.append(("date", "<", pd.Timestamp(before).date()))
    if from_ is not None:
        filters.append(("date", ">=", pd.Timestamp(from_).date()))
    frame = table(lake_dir).read(filters or None)
    frame = frame.sort_values("evaluated_at", kind="stable")
    return frame.drop_duplicates(KEY, keep="last").sort_values(KEY, ignore_index=True)


def update(lake_dir: Path) -> int:
    """Evaluate the served days not in the table yet (or whose rows changed) whose label
    is known; returns the rows appended."""
    meta = table(lake_dir).last_meta()
    since = unseen(lake_dir, meta)
    version = P.table_version(lake_dir)
    if version is None or since.nothing:
        return 0
    pred = served(lake_dir, since, version=version)
    fresh = evaluate(with_labels(lake_dir, pred) if len(pred) else pred)
    known = stored(lake_dir, from_=since.start) if len(fresh) else fresh
    if len(known):
        fresh = fresh.merge(known[KEY + ["rows"]].rename(columns={"rows": "_had"}),
                            on=KEY, how="left")
        fresh = fresh[fresh["_had"] != fresh["rows"]].drop(columns="_had")
    # a day is ready once its label is known for some key (the label horizon passed)
    labelled = set(fresh.loc[fresh["keys"] > 0, "date"])
    ready = fresh[fresh["date"].isin(labelled)]
    waiting = fresh.loc[~fresh["date"].isin(labelled), "date"]
    new_meta = {"pending_from": str(waiting.min().date()) if len(waiting) else None,
                "predictions_version": version}
    if len(ready) or new_meta != {k: meta.get(k) for k in new_meta}:
        table(lake_dir).append(ready.assign(evaluated_at=datetime.now(timezone.utc)),
                               new_meta)
    return int(len(ready))


def daily_frame(lake_dir: Path, rollout_id: str | None = None) -> pd.DataFrame:
    """Every served (rollout_id, arm, date) with rows, keys and RankIC: the table for
    the days it covers, the predictions (date-pruned, with labels) for the rest."""
    since = unseen(lake_dir)
    if since.nothing:
        return stored(lake_dir, rollout_id)[KEY + ["rows", "keys", "rank_ic"]]
    done = stored(lake_dir, rollout_id, before=since.start) if since.start is not None \
        else None
    pred = served(lake_dir, since, rollout_id)
    rest = evaluate(with_labels(lake_dir, pred) if len(pred) else pred)
    if done is None or done.empty:
        return rest
    out = pd.concat([done[KEY + ["rows", "keys", "rank_ic"]], rest], ignore_index=True)
    return out.sort_values(KEY, ignore_index=True)

"""The feature pipeline: bars (lake) -> indicators + Alpha158 + label -> features (lake).

Full runs fan out on Ray Data, one block per group of whole instruments read
straight from the bars table's files (no shuffle; ``map_batches`` over whole-
instrument blocks), and stream the result into one Delta commit. Incremental
runs read only the bars rows written after the cache's data version (the files
whose ``data_version`` statistics reach past it: after maintenance, only the
files committed since) and compute only what changed: new days from the cached
look-back, restated or new instruments in full. Nothing lists the whole table,
so a one-day update costs the same whatever the lake holds. Small jobs run in
process: scheduling tasks would cost more than the work.

Two runs of one feature set at once (the event follower and an API call): the
second to commit is refused by the features table (a Delta application
transaction per feature set), waits for the first one's factor cache and plans
again, so no row is appended twice.
"""
from __future__ import annotations

import json
import logging
import pickle
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from cluster.config import Settings, get_settings
from cluster.errors import LakeError, MlopsError
from cluster.events import EventBus, FeaturesUpdated, get_bus
from cluster.features.cache import CacheSnapshot, FeatureCache
from cluster.features.compute import Computed, _run_bounds, compute_append, compute_full
from cluster.features.featureset import FeatureSet, feature_set_for
from cluster.features.indicators import IndicatorStates
from cluster.lake import storage, tables
from cluster.lake.bars import BarsTable
from cluster.lake.features import FeaturesTable
from cluster.schema import BAR_COLUMNS

log = logging.getLogger(__name__)
# A run that lost the commit race to another run of the same feature set plans again
# this many times, each after waiting up to CACHE_WAIT_S for the winner's cache.
RUN_ATTEMPTS = 5
CACHE_WAIT_S = 10.0
Progress = Callable[[float, str], None]


@dataclass
class Plan:
    """What a run computes: instruments in full, instruments from their tail."""
    full: list[str] = field(default_factory=list)
    append: pd.DataFrame | None = None  # new bars of append-only instruments
    overwrite: bool = False             # replace the whole table (a full run over all)


class FeaturePipeline:
    def __init__(self, settings: Settings | None = None, bus: EventBus | None = None):
        self.settings = settings or get_settings()
        self.lake = self.settings.lake_dir
        self.bars = BarsTable(self.lake)
        self.features = FeaturesTable(self.lake)
        self.cache = FeatureCache(self.lake)
        self.bus = bus if bus is not None else get_bus(self.lake)
        self.fs: FeatureSet = feature_set_for(self.settings)
        self.ray_start_seconds = 0.0

    # -- entry point -------------------------------------------------------
    def run(self, incremental: bool = True, instruments: list[str] | None = None,
            progress: Progress | None = None, use_ray: bool | None = None) -> dict:
        started = time.perf_counter()
        if not self.bars.exists():
            raise MlopsError("no bars yet: run `python -m jobs.ingest` first")
        for attempt in range(RUN_ATTEMPTS):
            try:
                summary = self._run_once(incremental, instruments, progress, use_ray)
                summary["seconds"] = round(time.perf_counter() - started, 3)
                return summary
            except tables.WriteConflict as exc:
                log.info("features: %s; planning again (attempt %d)", exc, attempt + 1)
                self._await_cache(CACHE_WAIT_S)
        raise LakeError(f"features: other runs of feature set {self.fs.id} kept committing "
                        f"first ({RUN_ATTEMPTS} tries); run again")

    def _valid(self, version: int | None, latest: int | None = None) -> bool:
        return version is not None and self.features.unchanged_since(version, self.fs.id,
                                                                     latest)

    def _await_cache(self, timeout: float) -> None:
        """After a lost race: wait until the winner's factor cache is saved."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.cache.load(self.fs.id, self._valid) is not None:
                return
            time.sleep(0.05)

    def _run_once(self, incremental: bool, instruments: list[str] | None,
                  progress: Progress | None, use_ray: bool | None) -> dict:
        started = time.perf_counter()
        self.ray_start_seconds = 0.0
        progress = progress or (lambda pct, msg: None)
        bars = BarsTable(self.lake).pinned()  # one snapshot, its log read once
        self.bars = bars
        version = bars.data_version()
        progress(0.0, "planning")
        base = self.features.open()  # the features table this run plans on
        snap = self.cache.load(self.fs.id, lambda v: self._valid(v, base.version())) \
            if base is not None else None
        plan, snap = self._plan(snap, version, incremental, instruments)
        computed_rows = 0
        features_version = base.version() if base is not None else None
        if plan.full or plan.append is not None:
            computed_rows, features_version = self._execute(plan, snap, version, progress,
                                                            use_ray, base)
        selected = snap.meta if instruments is None else snap.meta.loc[
            [i for i in instruments if i in snap.meta.index]]
        total_rows = int(selected["rows"].sum())
        summary = {
            "feature_set": self.fs.id, "data_version": version,
            "features_version": features_version,
            "instruments": int(len(selected)), "rows": total_rows,
            "computed_rows": int(computed_rows),
            "cached_rows": int(max(total_rows - computed_rows, 0)),
            "mode": "full" if plan.overwrite or (plan.full and plan.append is None
                                                  and not incremental) else "incremental",
            "seconds": round(time.perf_counter() - started, 3),
            "ray_start_seconds": self.ray_start_seconds,
        }
        if computed_rows:
            changed = sorted(set(plan.full) | (set(plan.append["instrument"])
                                               if plan.append is not None else set()))
            self.bus.publish(FeaturesUpdated(feature_set=self.fs.id, data_version=version,
                                             features_version=features_version,
                                             instruments=changed, rows=int(computed_rows)))
        progress(100.0, "done")
        return summary

    # -- planning ----------------------------------------------------------
    def _plan(self, snap: CacheSnapshot | None, version: int, incremental: bool,
              only: list[str] | None) -> tuple[Plan, CacheSnapshot]:
        catalog = self.bars.catalog()
        all_instruments = catalog.instruments
        known = set(all_instruments)
        wanted = all_instruments if only is None else [i for i in only if i in known]
        unknown = sorted(set(only or []) - known)
        if unknown:
            raise MlopsError(f"instrument(s) not in the bars table: {unknown[:10]}")
        calendar = catalog.calendar
        if snap is None or not incremental:
            base = snap if (snap is not None and only is not None) else _empty_snapshot(
                self.fs.id, version, calendar)
            base.calendar = calendar
            return Plan(full=wanted, overwrite=only is None), base
        meta = snap.meta
        cached_version = meta["data_version"].to_numpy()
        stale = cached_version < version
        missing = [i for i in wanted if i not in meta.index]
        lowest = int(cached_version[stale].min()) if stale.any() else version
        # rows the data versions after the cache's wrote (new or restated); a restated
        # row is dated within the cached range, so the date tells them apart
        changes = self.bars.changes(after=lowest) if stale.any() else \
            pd.DataFrame(columns=BAR_COLUMNS + ["version"])
        if only is not None:
            changes = changes[changes["instrument"].isin(wanted)]
        # by position in the cache's meta (-1: an instrument it does not hold), on
        # arrays: pandas' map and isin per column cost more than the day's rows
        at = meta.index.get_indexer(changes["instrument"])
        held = at >= 0
        at = np.where(held, at, 0)
        if len(meta):
            newer = ~held | (changes["version"].to_numpy() > cached_version[at])
            last = meta["last_date"].to_numpy()[at]
            backfill = ~held | ~(changes["date"].to_numpy() > last)
        else:
            newer = backfill = ~held
        names = changes["instrument"].to_numpy(dtype=object)
        full = set(missing) | set(names[newer & backfill])
        # a calendar day new to the lake inside an instrument's cached range adds a NaN
        # row to it: its windows shift, so it is recomputed in full
        fresh_days = calendar.difference(snap.calendar)
        if len(fresh_days) and len(snap.meta):
            inside = snap.meta[(snap.meta["first_date"] <= fresh_days.max())
                               & (snap.meta["last_date"] >= fresh_days.min())].index
            for inst in inside:
                span = fresh_days[(fresh_days >= snap.meta.at[inst, "first_date"])
                                  & (fresh_days <= snap.meta.at[inst, "last_date"])]
                if len(span):
                    full.add(inst)
        take = newer & ~np.isin(names, list(full)) if full else newer
        append = changes[BAR_COLUMNS][take] if not take.all() else changes[BAR_COLUMNS]
        snap.calendar = calendar
        # instruments with no change still move to the new data version
        skip = full | set(names[take])
        untouched = ~meta.index.isin(list(skip)) & meta.index.isin(wanted)
        meta["data_version"] = np.where(untouched, version, cached_version)
        return Plan(full=sorted(full), append=append if len(append) else None), snap

    # -- execution ---------------------------------------------------------
    def _execute(self, plan: Plan, snap: CacheSnapshot, version: int, progress: Progress,
                 use_ray: bool | None, base) -> tuple[int, int]:
        """Compute and write the plan; returns (rows written, new features version)."""
        rows = 0
        parts: list[Computed] = []
        if plan.append is not None:
            progress(10.0, f"updating {plan.append['instrument'].nunique()} instrument(s)")
            parts.append(compute_append(plan.append, snap.tail, snap.states, snap.calendar,
                                        self.fs, version, snap.meta))
        if plan.full and plan.overwrite:
            rows, features_version = self._full_overwrite(plan.full, snap, version, progress,
                                                          use_ray, base)
        elif plan.full:
            progress(30.0, f"recomputing {len(plan.full)} instrument(s)")
            bars = self.bars.read(instruments=plan.full)
            parts.append(compute_full(bars, snap.calendar, self.fs, version))
        if parts:
            table = pa.concat_tables([p.features for p in parts])
            features_version = self.features.append(
                table, self._meta(version, "incremental", table.num_rows), base=base)
            rows += table.num_rows
            _merge_into(snap, *parts)
        snap.data_version = version
        progress(95.0, "saving factor cache")
        self.cache.save(snap, features_version)
        return rows, features_version

    def _full_overwrite(self, instruments: list[str], snap: CacheSnapshot, version: int,
                        progress: Progress, use_ray: bool | None, base) -> tuple[int, int]:
        groups = _chunks(instruments, self.settings.feature_pipeline.instruments_per_block)
        files = [self.bars.files_for(g) for g in groups]
        work = len(instruments) * len(snap.calendar)  # rows to compute, at most
        ray_path = use_ray if use_ray is not None else (
            work > self.settings.feature_pipeline.local_threshold_rows)
        if ray_path:  # timed apart: a cluster pays it once, not per run
            from cluster.ray_env import ensure_ray
            t0 = time.perf_counter()
            ensure_ray()
            self.ray_start_seconds = round(time.perf_counter() - t0, 3)
        # each block writes its own data file; one commit lists them all, so a run
        # that fails leaves only uncommitted files, removed here
        run_prefix = f"part-{uuid.uuid4().hex[:12]}-"
        written: list[dict] = []
        collected: list[Computed] = []
        source = _ray_blocks if ray_path else _local_blocks
        try:
            for block in source(groups, files, snap.calendar, self.fs, version,
                                self.lake, run_prefix):
                for action, cache in zip(block.column("file").to_pylist(),
                                         block.column(CACHE_COLUMN).to_pylist()):
                    written.append(json.loads(action))
                    collected.append(pickle.loads(cache))
                progress(5.0 + 85.0 * len(collected) / max(len(groups), 1),
                         f"computed {len(collected)}/{len(groups)} block(s)")
            features_version = self.features.commit_files(
                written, self.fs.schema, self._meta(version, "full", None), replace=True,
                base=base)
        except BaseException:
            self.features.discard_files(run_prefix)
            raise
        snap.meta = snap.meta.iloc[0:0]
        snap.tail = snap.tail.iloc[0:0]
        snap.states = IndicatorStates.empty()
        _merge_into(snap, *collected)
        return sum(json.loads(f["stats"])["numRecords"] for f in written), features_version

    def _meta(self, version: int, mode: str, rows: int | None) -> dict:
        return {"kind": "features", "feature_set": self.fs.id, "data_version": version,
                "mode": mode, "rows": rows}


# -- block computation (runs in Ray Data tasks or in process) -------------------
CACHE_COLUMN = "cache"


def compute_block(instruments: list[str], files: list[str],
                  calendar: pd.DatetimeIndex, fs: FeatureSet, version: int,
                  lake_dir: Path, name: str) -> pa.Table:
    """Read whole instruments' bars from their files, compute them and write the
    features as one (uncommitted) data file of the features table. Returns one
    row: the file's add action (JSON) and the block's factor-cache part (pickled);
    the features themselves never travel back to the driver."""
    bars = read_bar_files(instruments, files)
    part = compute_full(bars, calendar, fs, version)
    action = FeaturesTable(lake_dir).write_file(part.features, name)
    # an empty table, not a slice: a pickled slice carries its parent's buffers
    cache = pickle.dumps(Computed(part.features.schema.empty_table(), part.tail, part.states,
                                  part.meta))
    return pa.table({"file": [json.dumps(action)], CACHE_COLUMN: pa.array([cache], pa.binary())})


def read_bar_files(instruments: list[str], files: list[str]) -> pd.DataFrame:
    """Whole instruments' bars from the bars data files that may hold them (row
    groups pruned on the files' own statistics)."""
    from cluster.lake.bars import STORED_SCHEMA
    table = tables.read_instruments(files, STORED_SCHEMA, BAR_COLUMNS, instruments)
    return tables.to_frame(table.sort_by([("instrument", "ascending"), ("date", "ascending")]))


def _block_name(prefix: str, index: int) -> str:
    return f"{prefix}{index:05d}.lz4.parquet"


def _local_blocks(groups, files, calendar, fs, version, lake_dir, prefix):
    for i, group in enumerate(groups):
        yield compute_block(group, files[i], calendar, fs, version, lake_dir,
                            _block_name(prefix, i))


def _ray_blocks(groups, files, calendar, fs, version, lake_dir, prefix):
    """One Ray Data block per group of whole instruments; workers read the bars files
    and write the features files themselves (the lake is on storage every node sees)."""
    import ray

    from cluster.ray_env import ensure_ray
    ensure_ray()
    items = [{"instruments": json.dumps(g), "files": json.dumps(files[k]),
              "name": _block_name(prefix, k)} for k, g in enumerate(groups)]
    calendar_ref = ray.put(calendar)

    def compute(batch: dict) -> pa.Table:
        cal = ray.get(calendar_ref)
        return pa.concat_tables([
            compute_block(json.loads(g), json.loads(f), cal, fs, version, lake_dir, n)
            for g, f, n in zip(batch["instruments"], batch["files"], batch["name"])])

    ds = one_operator_map(items, compute)
    yield from ds.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=2)


def one_operator_map(items: list[dict], fn):
    """A Ray Data dataset of ``items``, one block each, mapped by ``fn`` one item
    per batch, whose one operator gets every CPU.

    Ray Data reserves a share of the CPUs for each operator of a plan; on a small
    machine that left the one map operator here one task at a time (16 blocks of
    0.2 s took 3.4 s on 2 CPUs, 1.8 s without the reservation, measured). A dataset
    keeps a copy of the context it was created under: the setting stays with it."""
    import ray
    context = ray.data.DataContext.get_current()
    reserved = context.op_resource_reservation_enabled
    context.op_resource_reservation_enabled = False
    try:
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        return ds.map_batches(fn, batch_size=1, batch_format="numpy")
    finally:
        context.op_resource_reservation_enabled = reserved


def _merge_into(snap: CacheSnapshot, *parts: Computed) -> None:
    """Replace the cache entries of the parts' instruments with the parts' (one concat,
    so a run of many blocks stays linear)."""
    if not parts:
        return
    names = set().union(*(p.meta.index for p in parts))
    metas = [m for m in [snap.meta[~snap.meta.index.isin(names)]] if len(m)]
    snap.meta = pd.concat(metas + [p.meta for p in parts]).sort_index()
    tails = [p.tail for p in parts]
    if len(snap.tail) and "instrument" in snap.tail:
        # Arrow's is_in: pandas' isin on Arrow-backed strings loops in Python (20x slower)
        hit = pc.is_in(pa.array(snap.tail["instrument"]), value_set=pa.array(sorted(names)))
        kept = snap.tail[~hit.to_numpy(zero_copy_only=False)]
        if len(kept):
            tails.insert(0, kept)
    if len(tails) == 1:  # a daily update of every instrument: its tail is in key order
        snap.tail = tails[0].reset_index(drop=True)
    else:  # whole instruments, each in date order: put their runs in name order
        tail = pd.concat(tails, ignore_index=True)
        snap.tail = tail.take(_runs_by_name(tail["instrument"].to_numpy(dtype=object))
                              ).reset_index(drop=True)
    snap.states = snap.states.merge(*(p.states for p in parts))


def _runs_by_name(names: np.ndarray) -> np.ndarray:
    """The row order that puts runs of equal names in name order, each run's rows
    kept as they are (a stable sort by name when every name is one run; sorting the
    runs, not the rows, costs a tenth of pandas' sort of a day's tail)."""
    starts, ends = _run_bounds(names)
    lengths = ends - starts
    by = np.argsort(names[starts], kind="stable")
    lengths = lengths[by]
    offsets = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    return np.arange(len(names), dtype=np.int64) + np.repeat(starts[by] - offsets, lengths)


def _empty_snapshot(feature_set: str, version: int, calendar) -> CacheSnapshot:
    meta = pd.DataFrame({"first_date": pd.Series(dtype="datetime64[ns]"),
                         "last_date": pd.Series(dtype="datetime64[ns]"),
                         "rows": pd.Series(dtype="int64"),
                         "data_version": pd.Series(dtype="int64")})
    meta.index.name = "instrument"
    return CacheSnapshot(feature_set, version, meta, IndicatorStates.empty(), pd.DataFrame(),
                         calendar)


def _chunks(items: list, size: int) -> list[list]:
    """``items`` in as few blocks of at most ``size`` as fit, of equal size (+-1): the
    last block of a plain cut may be nearly empty, and a round of tasks waits for
    its slowest (241 instruments: 8 blocks of 30-31, not 7 of 32 and one of 17)."""
    n = -(-len(items) // size)
    return [items[i * len(items) // n:(i + 1) * len(items) // n] for i in range(n)]


def features_path(settings: Settings | None = None) -> Path:
    return FeaturesTable((settings or get_settings()).lake_dir).path

"""One replica's serving state: the loaded versions, the policy, the request path.

Everything a request needs is one immutable ``Snapshot`` (policy + loaded
versions + stable fallback) read once at the start of the request, so a policy
change mid-request cannot route it to a version the replica does not hold. A
background task syncs with the control plane: it loads and health-checks new
versions in a worker thread (requests keep flowing), then swaps the snapshot.

Failures never reach the client because of a switch: when a non-stable version
raises, the stable one answers in process and the error is counted against the
version that failed (the rollout gates see it). Shadow versions predict on a
separate thread after the answer is computed; their outputs only reach the
statistics and the predictions table.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from cluster.config import Settings, get_settings
from cluster.errors import MlopsError
from serving.control import DEFAULT_DEPLOYMENT
from serving.heartbeat import HeartbeatSealer, heartbeat_key
from serving.inputs import CrossSection, FeatureReader, serving_feature_set
from serving.policy import TrafficPolicy
from serving.predictions import PredictionSink
from serving.stats import StatsBook
from serving.versions import InputError, LoadedVersion, load_version

log = logging.getLogger(__name__)

MAX_SHADOW_PENDING = 1000
RELOAD_AFTER_S = 10.0


class NotReady(MlopsError):
    """No version is being served yet (nothing deployed, or still loading)."""


@dataclass(frozen=True)
class Snapshot:
    revision: int = -1
    policy: TrafficPolicy | None = None
    versions: dict[str, LoadedVersion] = field(default_factory=dict)
    stable: LoadedVersion | None = None
    shadows: tuple[LoadedVersion, ...] = ()
    rollout: str | None = None          # the rollout (experiment) id of this policy


@dataclass
class Answer:
    version: str
    predictions: list[float]
    request_id: str
    latency_ms: float
    data_version: int | None = None


class ServingRuntime:
    def __init__(self, control, settings: Settings | None = None, replica_id: str | None = None,
                 deployment: str = DEFAULT_DEPLOYMENT, sync_interval_s: float | None = None,
                 sink: PredictionSink | None = None,
                 reader: FeatureReader | None = None, registry=None):
        self.control = control
        self.deployment = deployment
        self.settings = settings or get_settings()
        self.replica_id = replica_id or f"{os.uname().nodename}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        serving = self.settings.serving
        self.sync_interval_s = sync_interval_s or serving.sync_interval_s
        self.sink = sink or PredictionSink(self.settings.lake_dir, serving.predictions_flush_rows,
                                           serving.predictions_flush_seconds)
        self.reader = reader or FeatureReader(self.settings.lake_dir)
        self._registry = registry
        self.snapshot = Snapshot()
        self.stats = StatsBook()
        self._loaded: dict[str, LoadedVersion] = {}
        self._load_errors: dict[str, str] = {}
        self._load_failed_at: dict[str, float] = {}
        self._desired: dict = {"versions": [], "revision": -1}
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._shadow_pool = ThreadPoolExecutor(1, thread_name_prefix="shadow")
        self._predict_pool = ThreadPoolExecutor(serving.predict_threads,
                                                thread_name_prefix="predict")
        self._shadow_pending = 0
        self.shadow_dropped = 0
        self.last_sync: float | None = None
        self.sync_error: str | None = None
        self._sealer: HeartbeatSealer | None = None

    @property
    def registry(self):
        if self._registry is None:
            from cluster.registry.store import ModelRegistry
            self._registry = ModelRegistry.for_settings(self.settings)
        return self._registry

    # -- lifecycle ---------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.sink.start()
        await self.sync_once()      # serve the current versions from the first request on
        self._task = asyncio.create_task(self._sync_loop(), name="serving-sync")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
            self._task = None
        self._shadow_pool.shutdown(wait=True)
        self._predict_pool.shutdown(wait=True)
        await asyncio.to_thread(self.sink.close)

    def ready(self) -> bool:
        return self.snapshot.stable is not None and self.snapshot.policy is not None

    def alive(self) -> bool:
        """The sync task is running (a control plane outage alone is not a fault:
        the replica keeps serving its last snapshot)."""
        return self._task is not None and not self._task.done()

    # -- sync with the control plane --------------------------------------
    async def _sync_loop(self) -> None:
        while True:
            await asyncio.sleep(self.sync_interval_s)
            await self.sync_once()

    async def sync_once(self) -> None:
        now = time.monotonic()
        if any(now - self._load_failed_at[m] > RELOAD_AFTER_S for m in self._load_errors):
            await self.apply(self._desired)     # retry a refused version that is still wanted
        stats = self.stats.drain()
        loaded = {v: "ok" for v in self._loaded} | self._load_errors
        try:
            if self._sealer is None:    # reads the key file once
                key = await asyncio.to_thread(heartbeat_key, self.settings, self.deployment)
                self._sealer = HeartbeatSealer(key, self.replica_id)
            body, mac = self._sealer.seal(self.snapshot.revision, loaded, stats)
            desired = await self.control.sync(body, mac)
        except Exception as exc:
            self.stats.merge(stats)         # keep them for the next heartbeat
            if self.sync_error is None:
                log.warning("control plane unreachable (%s); serving the last snapshot", exc)
            self.sync_error = f"{type(exc).__name__}: {exc}"
            return
        self.sync_error, self.last_sync = None, time.time()
        if desired is not None:
            self._desired = desired
            await self.apply(desired)

    async def apply(self, desired: dict) -> None:
        wanted = list(desired["versions"])
        now = time.monotonic()
        for mid in list(self._load_errors):
            # a refused version is retried only after a pause (a registry hiccup heals;
            # a corrupt artefact keeps failing and keeps being reported)
            if mid not in wanted or now - self._load_failed_at[mid] > RELOAD_AFTER_S:
                del self._load_errors[mid]
                del self._load_failed_at[mid]
        missing = [m for m in wanted if m not in self._loaded and m not in self._load_errors]
        if missing:
            feature_set = await asyncio.to_thread(serving_feature_set, self.settings)
            for mid in missing:
                try:
                    self._loaded[mid] = await asyncio.to_thread(load_version, self.registry, mid,
                                                                feature_set)
                    log.info("replica %s loaded %s", self.replica_id, mid)
                except Exception as exc:
                    self._load_errors[mid] = f"{type(exc).__name__}: {exc}"
                    self._load_failed_at[mid] = time.monotonic()
                    log.warning("replica %s refused %s: %s", self.replica_id, mid, exc)
        for mid in [m for m in self._loaded if m not in wanted]:
            del self._loaded[mid]   # in-flight requests keep their own reference
        policy = TrafficPolicy.from_dict(desired["policy"]) if desired.get("policy") else None
        versions = {m: self._loaded[m] for m in wanted if m in self._loaded}
        shadows = tuple(versions[v] for v in (policy.shadow if policy else ()) if v in versions)
        self.snapshot = Snapshot(int(desired["revision"]), policy, versions,
                                 versions.get(desired.get("stable")), shadows,
                                 desired.get("rollout"))

    # -- the request path --------------------------------------------------
    def _choose(self, snap: Snapshot, key: str | None) -> LoadedVersion:
        if snap.stable is None or snap.policy is None:
            raise NotReady("no model version is being served yet: deploy one with "
                           "`python -m jobs.deploy` or POST /api/models/{model_id}/deploy")
        return snap.versions.get(snap.policy.choose(key)) or snap.stable

    def _compute(self, snap: Snapshot, chosen: LoadedVersion, matrix_of):
        """Predict with ``chosen``; if it fails and is not the stable version, the stable
        one answers. Returns (out, used, failed version or None). Touches no statistics:
        it runs on a predict thread."""
        try:
            return chosen.predict(matrix_of(chosen)), chosen, None
        except Exception as exc:
            if chosen is snap.stable:
                raise
            # an InputError of the stable version too is the client's input, not a fault
            out = snap.stable.predict(matrix_of(snap.stable))
            log.debug("%s failed (%s); %s answered", chosen.model_id, exc, snap.stable.model_id)
            return out, snap.stable, chosen

    def _try_compute(self, snap: Snapshot, chosen: LoadedVersion, matrix_of):
        try:
            return self._compute(snap, chosen, matrix_of)
        except Exception as exc:
            return exc

    def _settle(self, snap: Snapshot, chosen: LoadedVersion, result):
        """On the loop's thread: count a failure against the version that failed (the
        rollout gates see it), or raise the request's error; returns (out, used)."""
        if isinstance(result, BaseException):
            if chosen is snap.stable and not isinstance(result, InputError):
                self.stats.get(chosen.model_id).error()
            raise result
        out, used, failed = result
        if failed is not None:
            self.stats.get(failed.model_id).error()
        return out, used

    def _answer(self, snap: Snapshot, chosen: LoadedVersion, matrix_of):
        return self._settle(snap, chosen, self._try_compute(snap, chosen, matrix_of))

    def _off_loop(self, fn, *args):
        return asyncio.get_running_loop().run_in_executor(self._predict_pool, fn, *args)

    # A recorded row is a tuple in the predictions SCHEMA's order (cluster/lake/
    # predictions.py): building it is the only per-row work on the request path.
    # Posted ``rows`` (one prediction each) or ``windows`` (sequence models: one list of
    # an instrument's rows per prediction, oldest first); ``date`` routes a rolling version.
    def predict_rows(self, rows: list[dict] | None, key: str | None = None,
                     data_version: int | None = None, date=None,
                     windows: list[list[dict]] | None = None) -> Answer:
        t0 = time.perf_counter()
        snap = self.snapshot
        chosen = self._choose(snap, key)

        def inputs_of(v):
            return v.inputs_from_rows(rows, date, windows)
        out, used = self._answer(snap, chosen, inputs_of)
        return self._record_rows(snap, chosen, used, out, t0, inputs_of, key, data_version)

    async def predict_rows_async(self, rows: list[dict] | None, key: str | None = None,
                                 data_version: int | None = None, date=None,
                                 windows: list[list[dict]] | None = None) -> Answer:
        """``predict_rows`` with the model call on a predict thread, off the event loop;
        statistics and the predictions buffer are still only touched on the loop."""
        t0 = time.perf_counter()
        snap = self.snapshot
        chosen = self._choose(snap, key)

        def inputs_of(v):
            return v.inputs_from_rows(rows, date, windows)
        result = await self._off_loop(self._try_compute, snap, chosen, inputs_of)
        out, used = self._settle(snap, chosen, result)
        return self._record_rows(snap, chosen, used, out, t0, inputs_of, key, data_version)

    def _record_rows(self, snap, chosen, used, out, t0, inputs_of, key, data_version) -> Answer:
        latency = (time.perf_counter() - t0) * 1000.0
        self.stats.get(used.model_id).ok(latency)
        rid, now, preds = uuid.uuid4().hex, time.time(), out.tolist()
        tail = (None, chosen.model_id, snap.rollout, snap.revision, "served")
        self.sink.add([(now, rid, key, used.model_id, None, None, data_version, p, latency,
                        False, *tail) for p in preds])
        for shadow in snap.shadows:
            self._shadow(shadow, inputs_of, rid, key, None, None,
                         [data_version] * len(preds), snap)
        return Answer(used.model_id, preds, rid, latency, data_version)

    def read_inputs(self, instruments: list[str], date) -> CrossSection:
        """The features of ``instruments`` on ``date`` (blocking: call it off the loop)."""
        if not instruments:
            raise InputError("instruments is empty")
        return self.reader.cross_section(instruments, date)

    def predict_cross_section(self, cs: CrossSection, key: str | None, t0: float) -> Answer:
        snap = self.snapshot
        chosen = self._choose(snap, key)
        out, used = self._answer(snap, chosen, cs.inputs_for)
        return self._record_cross_section(snap, chosen, used, out, t0, cs, key)

    async def predict_instruments_async(self, instruments: list[str], date, key: str | None,
                                        t0: float) -> tuple[Answer, CrossSection]:
        """Read the cross-section and predict in one trip to a predict thread."""
        snap = self.snapshot
        chosen = self._choose(snap, key)
        cs, result = await self._off_loop(self._read_and_compute, instruments, date, snap,
                                          chosen)
        out, used = self._settle(snap, chosen, result)
        return self._record_cross_section(snap, chosen, used, out, t0, cs, key), cs

    def _read_and_compute(self, instruments, date, snap, chosen):
        cs = self.read_inputs(instruments, date)        # its errors are the request's
        return cs, self._try_compute(snap, chosen, cs.inputs_for)

    def _record_cross_section(self, snap, chosen, used, out, t0, cs, key) -> Answer:
        latency = (time.perf_counter() - t0) * 1000.0
        preds = out.tolist()
        stats = self.stats.get(used.model_id)
        stats.ok(latency)
        stats.realised(cs.date, cs.instruments, preds, cs.realised)
        rid, now, dvs = uuid.uuid4().hex, time.time(), cs.data_versions
        tail = (cs.features_version, chosen.model_id, snap.rollout, snap.revision, "served")
        self.sink.add([(now, rid, key, used.model_id, inst, cs.date, dv, p, latency, False,
                        *tail) for inst, dv, p in zip(cs.instruments, dvs, preds)])
        for shadow in snap.shadows:
            self._shadow(shadow, cs.inputs_for, rid, key, cs, cs.date, dvs, snap)
        data_version = max((d for d in dvs if d is not None), default=None)
        return Answer(used.model_id, preds, rid, latency, data_version)

    # -- shadows -----------------------------------------------------------
    def _shadow(self, version: LoadedVersion, matrix_of, rid, key, cs, date, dvs,
                snap: Snapshot) -> None:
        if self._shadow_pending >= MAX_SHADOW_PENDING:
            self.shadow_dropped += 1        # never let shadows back up into serving
            return
        self._shadow_pending += 1
        self._shadow_pool.submit(self._run_shadow, version, matrix_of, rid, key, cs, date, dvs,
                                 snap)

    def _run_shadow(self, version: LoadedVersion, matrix_of, rid, key, cs, date, dvs,
                    snap: Snapshot) -> None:
        t0 = time.perf_counter()
        try:
            preds = version.predict(matrix_of(version)).tolist()
        except Exception:
            self._on_loop(self._shadow_done, version.model_id, None, None, cs)
            return
        latency = (time.perf_counter() - t0) * 1000.0
        instruments = cs.instruments if cs is not None else [None] * len(preds)
        now = time.time()
        tail = (cs.features_version if cs is not None else None, version.model_id,
                snap.rollout, snap.revision, "shadow")
        self.sink.add([(now, rid, key, version.model_id, inst, date, dv, p, latency, True,
                        *tail) for inst, dv, p in zip(instruments, dvs, preds)])
        self._on_loop(self._shadow_done, version.model_id, preds, latency, cs)

    def _on_loop(self, fn, *args) -> None:
        # Statistics are only touched on the event loop's thread (no locks on the hot path).
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(fn, *args)
        else:
            fn(*args)

    def _shadow_done(self, model_id: str, preds, latency, cs) -> None:
        self._shadow_pending -= 1
        stats = self.stats.get(model_id)
        if preds is None:
            stats.error()
            return
        stats.ok(latency)
        if cs is not None:
            stats.realised(cs.date, cs.instruments, preds, cs.realised)

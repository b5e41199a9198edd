"""Library functions behind the features API (``GET /api/features/{stock_code}``,
``POST /api/features/calculate``): no web framework here, only the work."""
from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable

import pandas as pd

from cluster.config import Settings, get_settings
from cluster.errors import MlopsError, NotFoundError
from cluster.lake.features import FeaturesTable


def read_instrument_features(stock_code: str, version: int | None = None, start=None,
                             end=None, columns: list[str] | None = None,
                             settings: Settings | None = None) -> pd.DataFrame:
    """One instrument's features as of a features-table version (latest when None)."""
    table = FeaturesTable((settings or get_settings()).lake_dir)
    if not table.exists():
        raise MlopsError("no features yet: run `python -m jobs.features` first")
    frame = table.read(version, instruments=[stock_code], start=start, end=end, columns=columns)
    if frame.empty:
        raise NotFoundError(f"no features for instrument {stock_code!r}"
                         + (f" at features version {version}" if version is not None else ""))
    return frame


@dataclass
class FeatureJob:
    job_id: str
    state: str = "queued"          # queued | running | completed | failed
    percent: float = 0.0
    message: str = ""
    summary: dict | None = None
    error: str | None = None
    started_at: float = field(default_factory=time.time)

    def to_dict(self) -> dict:
        return {"job_id": self.job_id, "state": self.state, "percent": round(self.percent, 1),
                "message": self.message, "summary": self.summary, "error": self.error}


_jobs: dict[str, FeatureJob] = {}
_run_lock = threading.Lock()  # one feature computation at a time per process


def start_feature_job(incremental: bool = True, instruments: list[str] | None = None,
                      settings: Settings | None = None) -> FeatureJob:
    """Start a computation in a background thread; poll ``feature_job(job_id)``."""
    from cluster.features.pipeline import FeaturePipeline
    job = FeatureJob(job_id=uuid.uuid4().hex[:12])
    _jobs[job.job_id] = job

    def progress(pct: float, message: str) -> None:
        job.percent, job.message = pct, message

    def work() -> None:
        with _run_lock:
            job.state = "running"
            try:
                job.summary = FeaturePipeline(settings).run(
                    incremental=incremental, instruments=instruments, progress=progress)
                job.state, job.percent = "completed", 100.0
            except Exception as exc:
                job.state, job.error = "failed", f"{type(exc).__name__}: {exc}"
    threading.Thread(target=work, name=f"features-{job.job_id}", daemon=True).start()
    return job


def feature_job(job_id: str) -> FeatureJob:
    try:
        return _jobs[job_id]
    except KeyError:
        raise MlopsError(f"no feature job {job_id!r}") from None


def on_data_synced(bus, settings: Settings | None = None,
                   on_summary=None) -> Callable[[], None]:
    """Keep the features current in this process: every ``data_synced`` event on
    ``bus`` runs an incremental computation (one at a time). Returns an unsubscribe."""
    from cluster.features.pipeline import FeaturePipeline

    def handle(event) -> None:
        with _run_lock:
            summary = FeaturePipeline(settings, bus).run(incremental=True)
        if on_summary is not None:
            on_summary(summary)
    return bus.subscribe("data_synced", handle)


def follow_data_synced(bus, after: int, settings: Settings | None = None,
                       stop: "threading.Event | None" = None, poll_seconds: float = 2.0,
                       on_summary=None) -> int:
    """For another process: read ``data_synced`` events persisted after offset ``after``
    and run an incremental computation for each batch of them, until ``stop`` is set
    (or once, when ``stop`` is None). Returns the last offset handled."""
    from cluster.features.pipeline import FeaturePipeline
    while True:
        events = bus.read(after=after, types=["data_synced"])
        if events:
            after = events[-1][0]
            with _run_lock:
                summary = FeaturePipeline(settings, bus).run(incremental=True)
            summary["events_offset"] = after
            if on_summary is not None:
                on_summary(summary)
        if stop is None or stop.wait(poll_seconds):
            return after

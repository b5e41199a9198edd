"""Library functions behind the features API (``GET /api/features/{stock_code}``,
``POST /api/features/calculate``): no web framework here, only the work."""
from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field

import pandas as pd

from cluster.config import Settings, get_settings
from cluster.errors import MlopsError
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
        raise MlopsError(f"no features for instrument {stock_code!r}"
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

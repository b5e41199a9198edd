"""The resource-aware job queue: jobs with a priority and a resource request, admitted
as Ray jobs when the cluster's resources fit.

Policy (``admit``, pure; seed Property 10):

- rank: effective priority ``priority + waited / aging_s`` (higher first), FIFO within
  an equal rank (submission order). Every waiting job ages at the same rate, so aging
  never reorders two waiting jobs; it only keeps newcomers from overtaking an old job
  forever: a job of the lowest priority outranks every job submitted more than
  ``(PRIORITY_MAX - PRIORITY_MIN) * aging_s`` after it.
- admission: in rank order, each job that fits the resources still free starts; one
  that does not fit lets smaller jobs behind it start (backfill) until it has waited
  ``reserve_after_s``; from then on nothing ranked below it starts until it does. With
  every request within the cluster's capacity and every job ending within D, a job
  therefore waits at most ``(2N + 1) * (reserve_after_s + D)``, N the number of jobs
  submitted before ``aging horizon`` after it (tests/test_job_queue.py checks it).

The queue is persisted in SQLite (``$MLOPS_HOME/queue/jobs.db``): a restart loses no
queued job, and a job submitted to Ray is found again by its id (its Ray submission
id). ``tick()`` syncs running jobs with Ray, admits and submits; the API's replicas
call it in the background (``queue.run_in_api``), several at once safely (one
transaction admits at a time; a submission id is never submitted twice).
"""
from __future__ import annotations

import json
import logging
import math
import shlex
import sqlite3
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cluster.errors import MlopsError, NotFoundError

log = logging.getLogger(__name__)

PRIORITY_MIN, PRIORITY_MAX = 0, 9
# What each job type runs (``python -m <module> <args>``) and its default request.
JOB_TYPES: dict[str, dict] = {
    "features": {"module": "jobs.features", "priority": 6, "cpus": 1.0},
    "train": {"module": "jobs.train", "priority": 5, "cpus": 1.0},
    "tune": {"module": "jobs.tune", "priority": 3, "cpus": 1.0},
    "predict": {"module": "jobs.predict", "priority": 7, "cpus": 1.0},
    "monitor": {"module": "jobs.monitor", "priority": 4, "cpus": 0.5},
    "maintain": {"module": "jobs.maintain", "priority": 2, "cpus": 0.5},
}
SUBMIT_TRIES = 10
WAITING = ("queued",)
ACTIVE = ("submitting", "submitted", "running", "stopping")
FINAL = ("succeeded", "failed", "stopped", "cancelled")


class QueueError(MlopsError, ValueError):
    """A job request the queue refuses (unknown type, priority, resources over capacity)."""


@dataclass(frozen=True)
class Resources:
    cpus: float = 0.0
    gpus: float = 0.0

    def fits(self, free: "Resources") -> bool:
        eps = 1e-9
        return self.cpus <= free.cpus + eps and self.gpus <= free.gpus + eps

    def __add__(self, other: "Resources") -> "Resources":
        return Resources(self.cpus + other.cpus, self.gpus + other.gpus)

    def __sub__(self, other: "Resources") -> "Resources":
        return Resources(self.cpus - other.cpus, self.gpus - other.gpus)


@dataclass
class Job:
    id: str
    type: str
    priority: int
    resources: Resources
    args: list[str] = field(default_factory=list)
    metadata: dict = field(default_factory=dict)
    state: str = "queued"
    submitted_at: float = 0.0
    seq: int = 0
    started_at: float | None = None
    ended_at: float | None = None
    message: str = ""

    @property
    def entrypoint(self) -> str:
        module = JOB_TYPES[self.type]["module"]
        return shlex.join(["python", "-m", module, *self.args])

    def to_dict(self) -> dict:
        d = asdict(self)
        d["resources"] = asdict(self.resources)
        d["entrypoint"] = self.entrypoint
        return d


# -- the policy (pure) ------------------------------------------------------------
def effective_priority(job: Job, now: float, aging_s: float) -> float:
    return job.priority + max(0.0, now - job.submitted_at) / aging_s


def rank(jobs: list[Job], now: float, aging_s: float) -> list[Job]:
    """Highest effective priority first, FIFO (submission order) within a rank."""
    return sorted(jobs, key=lambda j: (-effective_priority(j, now, aging_s), j.seq))


def admit(waiting: list[Job], free: Resources, now: float, aging_s: float,
          reserve_after_s: float) -> list[Job]:
    """The waiting jobs to start now, given the resources free (see the module doc)."""
    started = []
    for job in rank(waiting, now, aging_s):
        if job.resources.fits(free):
            started.append(job)
            free = free - job.resources
        elif now - job.submitted_at >= reserve_after_s:
            break               # its reservation: nothing ranked below it starts first
    return started


def aging_horizon(aging_s: float) -> float:
    """After this long, no newcomer outranks a waiting job."""
    return (PRIORITY_MAX - PRIORITY_MIN) * aging_s


# -- persistence ------------------------------------------------------------------
_SCHEMA = """
create table if not exists jobs (
    seq integer primary key autoincrement,
    id text unique not null,
    type text not null,
    priority integer not null,
    cpus real not null,
    gpus real not null,
    args text not null,
    metadata text not null,
    state text not null,
    submitted_at real not null,
    started_at real,
    ended_at real,
    message text not null default ''
);
create index if not exists jobs_state on jobs(state);
"""


class JobStore:
    """The jobs table (SQLite, WAL): every change is one transaction."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.executescript(_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        db.execute("pragma journal_mode=wal")
        db.row_factory = sqlite3.Row
        return db

    @contextmanager
    def transaction(self):
        db = self._connect()
        try:
            db.execute("begin immediate")       # one writer at a time, across processes
            yield db
            db.execute("commit")
        except BaseException:
            db.execute("rollback")
            raise
        finally:
            db.close()

    @staticmethod
    def _job(row) -> Job:
        return Job(row["id"], row["type"], int(row["priority"]),
                   Resources(float(row["cpus"]), float(row["gpus"])), json.loads(row["args"]),
                   json.loads(row["metadata"]), row["state"], float(row["submitted_at"]),
                   int(row["seq"]), row["started_at"], row["ended_at"], row["message"])

    def insert(self, job: Job) -> Job:
        with self.transaction() as db:
            cur = db.execute(
                "insert into jobs (id, type, priority, cpus, gpus, args, metadata, state, "
                "submitted_at, message) values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (job.id, job.type, job.priority, job.resources.cpus, job.resources.gpus,
                 json.dumps(job.args), json.dumps(job.metadata), job.state, job.submitted_at,
                 job.message))
            job.seq = int(cur.lastrowid)
        return job

    def get(self, job_id: str, db=None) -> Job:
        conn = db or self._connect()
        try:
            row = conn.execute("select * from jobs where id = ?", (job_id,)).fetchone()
        finally:
            if db is None:
                conn.close()
        if row is None:
            raise NotFoundError(f"no job {job_id!r}")
        return self._job(row)

    def select(self, states: tuple[str, ...] | None = None, limit: int = 100,
               db=None) -> list[Job]:
        conn = db or self._connect()
        try:
            if states:
                marks = ",".join("?" * len(states))
                rows = conn.execute(f"select * from jobs where state in ({marks}) order by seq "
                                    "desc limit ?", (*states, limit)).fetchall()
            else:
                rows = conn.execute("select * from jobs order by seq desc limit ?",
                                    (limit,)).fetchall()
        finally:
            if db is None:
                conn.close()
        return [self._job(r) for r in rows]

    @staticmethod
    def update(db, job_id: str, **fields) -> None:
        sets = ", ".join(f"{k} = ?" for k in fields)
        db.execute(f"update jobs set {sets} where id = ?", (*fields.values(), job_id))


# -- the queue ----------------------------------------------------------------------
_RAY_STATE = {"PENDING": "submitted", "RUNNING": "running", "SUCCEEDED": "succeeded",
              "FAILED": "failed", "STOPPED": "stopped"}


class JobQueue:
    def __init__(self, store: JobStore, runner=None, aging_s: float = 60.0,
                 reserve_after_s: float = 300.0, capacity: Resources | None = None,
                 clock=time.time):
        self.store = store
        self.runner = runner              # cluster.ray_jobs.RayJobs (or a test double)
        self.aging_s = aging_s
        self.reserve_after_s = reserve_after_s
        self._capacity = capacity
        self.clock = clock
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._tries: dict[str, int] = {}

    @classmethod
    def for_settings(cls, settings) -> "JobQueue":
        from cluster.ray_jobs import RayJobs
        q = settings.queue
        capacity = None
        if q.capacity_cpus is not None or q.capacity_gpus is not None:
            capacity = Resources(q.capacity_cpus or 0.0, q.capacity_gpus or 0.0)
        return cls(JobStore(Path(settings.home) / "queue" / "jobs.db"),
                   RayJobs.for_settings(settings), q.aging_s, q.reserve_after_s, capacity)

    # -- capacity ------------------------------------------------------------------
    def capacity(self) -> Resources | None:
        """What the queue may hand out: the settings' capacity, else the cluster's total."""
        if self._capacity is not None:
            return self._capacity
        if self.runner is None:
            return None
        try:
            return self.runner.capacity()
        except Exception as exc:
            log.warning("cluster resources unknown: %s", exc)
            return None

    # -- requests ------------------------------------------------------------------
    def submit(self, job_type: str, args: list[str] | None = None, priority: int | None = None,
               cpus: float | None = None, gpus: float = 0.0, metadata: dict | None = None,
               job_id: str | None = None) -> Job:
        if job_type not in JOB_TYPES:
            raise QueueError(f"unknown job type {job_type!r}; one of {sorted(JOB_TYPES)}")
        spec = JOB_TYPES[job_type]
        priority = spec["priority"] if priority is None else priority
        if isinstance(priority, bool) or not PRIORITY_MIN <= int(priority) <= PRIORITY_MAX:
            raise QueueError(f"priority must be an integer in [{PRIORITY_MIN}, {PRIORITY_MAX}], "
                             f"got {priority!r}")
        request = Resources(float(spec["cpus"] if cpus is None else cpus), float(gpus))
        if not (math.isfinite(request.cpus) and math.isfinite(request.gpus)) \
                or request.cpus < 0 or request.gpus < 0:
            raise QueueError("cpus and gpus must be finite and >= 0")
        capacity = self.capacity()
        if capacity is not None and not request.fits(capacity):
            raise QueueError(f"resources {asdict(request)} exceed the cluster's capacity "
                             f"{asdict(capacity)}: the job could never start")
        args = [str(a) for a in (args or [])]
        meta = {str(k): str(v) for k, v in (metadata or {}).items()}
        job = Job(job_id or f"mlops-{job_type}-{uuid.uuid4().hex[:10]}", job_type, int(priority),
                  request, args, meta, "queued", self.clock())
        return self.store.insert(job)

    def get(self, job_id: str) -> Job:
        return self.store.get(job_id)

    def list(self, states: tuple[str, ...] | None = None, limit: int = 100) -> list[Job]:
        return self.store.select(states, limit)

    def cancel(self, job_id: str, reason: str = "cancelled") -> Job:
        """A queued job is dropped; a running one is stopped (its Ray job too)."""
        with self.store.transaction() as db:
            job = self.store.get(job_id, db)
            if job.state in FINAL:
                return job
            if job.state in WAITING:
                self.store.update(db, job_id, state="cancelled", ended_at=self.clock(),
                                  message=reason)
                return self.store.get(job_id, db)
            self.store.update(db, job_id, state="stopping", message=reason)
        if self.runner is not None:
            try:
                self.runner.stop(job_id)
            except Exception as exc:
                log.warning("stopping Ray job %s failed: %s", job_id, exc)
        return self.store.get(job_id)

    def logs(self, job_id: str) -> str:
        self.store.get(job_id)
        return self.runner.logs(job_id) if self.runner is not None else ""

    # -- the loop --------------------------------------------------------------------
    def tick(self) -> list[Job]:
        """Sync active jobs with Ray, admit what fits, submit it; returns the admitted."""
        self._sync()
        capacity = self.capacity()
        if capacity is None or self.runner is None:
            return []
        now = self.clock()
        with self.store.transaction() as db:
            active = self.store.select(ACTIVE, limit=10_000, db=db)
            used = sum((j.resources for j in active), Resources())
            waiting = self.store.select(WAITING, limit=10_000, db=db)
            chosen = admit(waiting, capacity - used, now, self.aging_s, self.reserve_after_s)
            for job in chosen:
                self.store.update(db, job.id, state="submitting", started_at=now)
        for job in chosen:
            self._submit(job)
        return chosen

    def _submit(self, job: Job) -> None:
        try:
            self.runner.submit(job)
            state, message = "submitted", ""
        except Exception as exc:
            if self.runner.exists(job.id):          # a retry after a crash: already there
                state, message = "submitted", ""
            else:
                # e.g. the head's job agent not registered yet: back in the queue, a few times
                tries = self._tries[job.id] = self._tries.get(job.id, 0) + 1
                message = f"submission failed ({tries}x): {type(exc).__name__}: {exc}"
                state = "failed" if tries >= SUBMIT_TRIES else "queued"
        with self.store.transaction() as db:
            fields = {"state": state, "message": message[:2000]}
            if state == "failed":
                fields["ended_at"] = self.clock()
            if state == "queued":
                fields["started_at"] = None
            self.store.update(db, job.id, **fields)

    def _sync(self) -> None:
        if self.runner is None:
            return
        for job in self.store.select(ACTIVE, limit=10_000):
            if job.state == "submitting":
                if self.clock() - (job.started_at or 0) > 60:   # the submitter died
                    self._submit(job)
                continue
            try:
                status = self.runner.status(job.id)
            except Exception as exc:
                log.debug("status of %s unknown: %s", job.id, exc)
                continue
            state = _RAY_STATE.get(status, job.state)
            if job.state == "stopping" and state in ("submitted", "running"):
                continue
            if state != job.state:
                fields = {"state": state}
                if state in FINAL:
                    fields["ended_at"] = self.clock()
                with self.store.transaction() as db:
                    self.store.update(db, job.id, **fields)

    def start_background(self, interval_s: float = 2.0) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()

        def loop():
            while not self._stop.wait(interval_s):
                try:
                    self.tick()
                except Exception as exc:        # keep the loop alive; say why once a tick
                    log.warning("job queue tick failed: %s", exc)
        self._thread = threading.Thread(target=loop, name="job-queue", daemon=True)
        self._thread.start()

    def stop_background(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

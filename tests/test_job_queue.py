"""The resource-aware job queue (``cluster.resources``): seed Property 10 on the pure
admission policy over random job mixes and capacities (Hypothesis), persistence
across a restart, and cancellation. Ray jobs themselves: tests/test_queue_ray.py."""
from __future__ import annotations

from hypothesis import given, strategies as st

from cluster.resources import (PRIORITY_MAX, PRIORITY_MIN, Job, JobQueue, JobStore, Resources,
                               admit, aging_horizon, effective_priority)


@st.composite
def mixes(draw):
    capacity = Resources(float(draw(st.integers(1, 6))), float(draw(st.integers(0, 2))))
    n = draw(st.integers(1, 25))
    jobs = []
    for i in range(n):
        cpus = draw(st.integers(0, int(capacity.cpus)))
        gpus = draw(st.integers(0, int(capacity.gpus)))
        if cpus == gpus == 0:
            cpus = 1
        jobs.append(dict(arrive=draw(st.integers(0, 40)),
                         priority=draw(st.integers(PRIORITY_MIN, PRIORITY_MAX)),
                         res=Resources(float(cpus), float(gpus)),
                         duration=draw(st.integers(1, 6))))
    aging = draw(st.integers(1, 6))
    reserve = draw(st.integers(0, 12))
    return capacity, jobs, aging, reserve


def simulate(capacity, specs, aging, reserve):
    """Discrete time: each tick ends jobs, adds arrivals, then admits. Checks the policy's
    invariants at every admission; returns each job's (submitted, started)."""
    jobs = [Job(f"j{i}", "train", s["priority"], s["res"], submitted_at=float(s["arrive"]),
                seq=i) for i, s in enumerate(specs)]
    duration = {j.id: s["duration"] for j, s in zip(jobs, specs)}
    started, running = {}, {}
    waiting = []
    t = 0
    while len(started) < len(jobs):
        assert t < 10_000, "a job never started"
        for jid in [j for j, end in running.items() if end <= t]:
            del running[jid]
        waiting += [j for j in jobs if j.submitted_at == t]
        used = sum((next(j for j in jobs if j.id == r).resources for r in running), Resources())
        free = capacity - used
        chosen = admit(waiting, free, float(t), aging, reserve)
        _check_admission(waiting, chosen, free, t, aging, reserve)
        for job in chosen:
            started[job.id] = t
            running[job.id] = t + duration[job.id]
        waiting = [j for j in waiting if j.id not in started]
        t += 1
    return jobs, started, max(duration.values())


def _check_admission(waiting, chosen, free, t, aging, reserve):
    """Highest rank first, FIFO within a rank; a job is passed over only when it does not
    fit what is left, and never once it holds its reservation."""
    key = {j.id: (-effective_priority(j, t, aging), j.seq) for j in waiting}
    ids = {j.id for j in chosen}
    left = free
    for job in sorted(waiting, key=lambda j: key[j.id]):
        if job.id in ids:
            assert job.resources.fits(left)
            left = left - job.resources
        else:
            assert not job.resources.fits(left), f"{job.id} fits but was passed over"
            if t - job.submitted_at >= reserve:
                # reserved: nothing ranked below it started
                assert all(key[c.id] < key[job.id] for c in chosen)
                break
    assert left.cpus >= -1e-9 and left.gpus >= -1e-9


@given(mixes())
def test_property_10_priority_fifo_and_bounded_wait(mix):
    """Seed Property 10: over random job mixes and capacities, admission is by rank
    with FIFO within a priority, and every job waits a bounded time."""
    capacity, specs, aging, reserve = mix
    jobs, started, dmax = simulate(capacity, specs, aging, reserve)
    horizon = aging_horizon(aging)
    for job in jobs:
        wait = started[job.id] - job.submitted_at
        ahead = sum(1 for o in jobs if o is not job and o.submitted_at <= job.submitted_at
                    + horizon)
        assert wait <= (2 * ahead + 1) * (reserve + dmax), (job, wait, ahead)
    # FIFO within a priority for equal requests: an earlier one never starts later
    for a in jobs:
        for b in jobs:
            if (a.priority == b.priority and a.resources == b.resources
                    and a.submitted_at < b.submitted_at):
                assert started[a.id] <= started[b.id], (a, b)


def test_aging_lets_an_old_low_priority_job_outrank_newcomers():
    old = Job("old", "maintain", PRIORITY_MIN, Resources(1), submitted_at=0.0, seq=0)
    new = Job("new", "train", PRIORITY_MAX, Resources(1), submitted_at=100.0, seq=1)
    assert admit([old, new], Resources(1), 100.0, 60.0, 1e9) == [new]   # 100 s: not yet
    at = aging_horizon(60.0) + 1.0
    new.submitted_at = at
    assert admit([old, new], Resources(1), at, 60.0, 1e9) == [old]


class FakeRay:
    """A stand-in for the Ray job client: records submissions, reports given states."""

    def __init__(self, cpus=2.0):
        self.cpus, self.submitted, self.states, self.stopped = cpus, [], {}, []

    def capacity(self):
        return Resources(self.cpus, 0.0)

    def submit(self, job):
        self.submitted.append(job.id)
        self.states[job.id] = "PENDING"

    def exists(self, job_id):
        return job_id in self.states

    def status(self, job_id):
        return self.states[job_id]

    def stop(self, job_id):
        self.stopped.append(job_id)
        self.states[job_id] = "STOPPED"

    def logs(self, job_id):
        return f"log of {job_id}"


def test_queue_persists_and_a_restart_loses_nothing(tmp_path):
    import pytest

    from cluster.errors import NotFoundError
    from cluster.resources import QueueError
    path = tmp_path / "jobs.db"
    ray = FakeRay(cpus=2.0)
    q = JobQueue(JobStore(path), ray, aging_s=60, reserve_after_s=300)
    a = q.submit("train", ["--model", "linear"], priority=5, cpus=2, metadata={"model": "m"})
    b = q.submit("features", priority=9, cpus=1)
    c = q.submit("maintain", priority=1, cpus=1)
    with pytest.raises(QueueError, match="capacity"):
        q.submit("train", cpus=3)
    with pytest.raises(QueueError, match="unknown job type"):
        q.submit("mine")
    with pytest.raises(QueueError, match="priority"):
        q.submit("train", priority=10)
    assert [j.id for j in q.tick()] == [b.id, c.id]      # a does not fit beside them
    assert q.get(a.id).state == "queued" and q.get(b.id).state == "submitted"
    # a restart: a new queue on the same file sees every job as it was
    q2 = JobQueue(JobStore(path), ray, aging_s=60, reserve_after_s=300)
    assert {j.id: j.state for j in q2.list()} == {a.id: "queued", b.id: "submitted",
                                                  c.id: "submitted"}
    ray.states[b.id] = "SUCCEEDED"
    ray.states[c.id] = "RUNNING"
    q2.tick()
    assert q2.get(b.id).state == "succeeded" and q2.get(c.id).state == "running"
    assert q2.get(a.id).state == "queued"                 # 1 CPU free, it needs 2
    assert q2.cancel(c.id).state == "stopping" and ray.stopped == [c.id]
    q2.tick()
    assert q2.get(c.id).state == "stopped"
    assert q2.get(a.id).state == "submitted"
    assert q2.get(a.id).entrypoint == "python -m jobs.train --model linear"
    d = q2.submit("monitor", args=["--x", "a b; rm -rf /"])
    assert d.entrypoint.endswith("'a b; rm -rf /'")      # arguments are quoted
    assert q2.cancel(d.id).state == "cancelled"
    with pytest.raises(NotFoundError):
        q2.get("nope")

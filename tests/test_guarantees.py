"""The runner's guarantees where they were found broken: each test failed before the fix.

Leases end committed or given back whatever fails; ``run.job`` is the job as
last committed; a close after ``shutdown(wait=False)`` hands jobs over;
``on_cancel`` runs exactly once; a dead worker's job goes before new ones.
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from freezegun import freeze_time

from batchjobs import BatchJobs, JobRun, Status
from batchjobs.errors import StoreError
from batchjobs.models import utcnow
from batchjobs.testing import Faults
from tests.strategies import Ledger


@pytest.fixture
def short_jobs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every job counts as short, however loaded the machine is."""
    monkeypatch.setattr("batchjobs.runner.claims.SHORT_JOB", 60.0)


class Resource:
    closed = False

    def close(self) -> None:
        self.closed = True


@pytest.mark.usefixtures("short_jobs")
def test_a_failed_batch_commit_leaves_no_job_leased(make_jobs: Any) -> None:
    jobs = make_jobs(lease_seconds=60)
    opened: list[Resource] = []
    faults = Faults(jobs)

    class Arms(Ledger):
        def process_chunk(self, run: JobRun, start: int, size: int) -> int:
            opened.append(run.closing(Resource()))
            if len(opened) == 3:  # the last job of the second batch: its commit fails
                jobs.store.fail_commits(1)
            return super().process_chunk(run, start, size)

    jobs.register(Arms)
    created = [jobs.create("ledger", {"n": 5}) for _ in range(5)]
    with pytest.raises(StoreError, match="disk I/O error"), faults.failing_commits(0):
        jobs.runner.drain()
    assert [r.closed for r in opened] == [True] * 3  # every run was closed
    assert jobs.runner.leases.live() == []  # the heartbeat renews nothing
    assert [jobs.store.holder(j.id) for j in created] == [None] * 5
    # Nothing waits for a lease to expire: another worker runs the rest at once.
    other = make_jobs(lease_seconds=60)
    assert other.runner.drain() == 4
    assert all(other.retrieve(j.id).status == Status.COMPLETED for j in created)


@pytest.mark.parametrize("listening", [False, True])
def test_run_job_is_the_job_as_last_committed_whoever_listens(
    jobs: BatchJobs, listening: bool
) -> None:
    seen: list[tuple[Status, Any]] = []

    class Seeing(Ledger):
        def process_chunk(self, run: JobRun, start: int, size: int) -> int:
            seen.append((run.job.status, run.job.result.get("advancement_count")))
            return super().process_chunk(run, start, size)

        def finalize(self, run: JobRun) -> None:
            seen.append((run.job.status, run.job.result.get("advancement_count")))

    jobs.register(Seeing)
    if listening:
        jobs.subscribe("batch.updated", lambda sender, **kw: None)
    job = jobs.create("ledger", {"n": 30})
    jobs.run_until_idle(timeout=10)
    processing = Status.PROCESSING
    assert seen == [(processing, None), (processing, 10), (processing, 20), (processing, 20)]
    assert jobs.retrieve(job.id).status == Status.COMPLETED


def test_close_after_shutdown_without_waiting_hands_running_jobs_over(
    make_jobs: Any, db_path: Path
) -> None:
    jobs = make_jobs(lease_seconds=60)
    started, release = threading.Event(), threading.Event()

    class Slow(Ledger):
        def process_chunk(self, run: JobRun, start: int, size: int) -> int:
            if start == 10:
                started.set()
                release.wait(5)
            return super().process_chunk(run, start, size)

    jobs.register(Slow)
    job = jobs.create("ledger", {"n": 100})
    jobs.start()
    assert started.wait(5)
    jobs.shutdown(wait=False)
    closer = threading.Thread(target=jobs.close)
    closer.start()
    release.set()
    closer.join(10)
    assert not closer.is_alive()
    other = make_jobs(lease_seconds=60)
    assert other.store.holder(job.id) is None  # handed over, not left leased for a minute
    stopped = other.retrieve(job.id)
    assert stopped.status == Status.PROCESSING and stopped.result["advancement_count"] == 20
    other.run_until_idle(timeout=10)
    assert other.retrieve(job.id).status == Status.COMPLETED


class LongLedger(Ledger):
    """A ``Ledger`` whose job with ``"long"`` in its context runs one chunk that takes
    long, with no checkpoint: it sets ``started``, then waits for ``release``."""

    started = threading.Event()
    release = threading.Event()

    def process_chunk(self, run: JobRun, start: int, size: int) -> int:
        if run.job.context.get("long"):
            type(self).started.set()
            type(self).release.wait(10)
        return super().process_chunk(run, start, size)


@pytest.fixture
def long_ledger() -> type[LongLedger]:
    LongLedger.started, LongLedger.release = threading.Event(), threading.Event()
    return LongLedger


class Tidy(Ledger):
    """Counts its cleanups in ``cleaned`` (a list of job ids) on the class."""

    cleaned: list[str] = []

    def on_cancel(self, run: JobRun) -> None:
        type(self).cleaned.append(run.job.id)


@pytest.fixture
def tidy(make_jobs: Any) -> BatchJobs:
    Tidy.cleaned = []
    jobs = make_jobs(lease_seconds=60)
    jobs.register(Tidy)
    return jobs


class SlowTidy(Tidy):
    """A ``Tidy`` whose ``on_cancel`` sets ``entered``, then waits for ``free``."""

    entered = threading.Event()
    free = threading.Event()

    def on_cancel(self, run: JobRun) -> None:
        type(self).entered.set()
        type(self).free.wait(10)
        super().on_cancel(run)


@pytest.fixture
def slow_tidy() -> type[SlowTidy]:
    SlowTidy.entered, SlowTidy.free = threading.Event(), threading.Event()
    return SlowTidy


def handed_over(jobs: BatchJobs, n: int = 100) -> str:
    """A job left processing after its first checkpoint, its lease released."""
    job = jobs.create("ledger", {"n": n})
    jobs.runner.stopping.set()
    jobs.runner.run_next(ids=[job.id])
    jobs.runner.stopping.clear()
    assert jobs.retrieve(job.id).status == Status.PROCESSING
    return job.id


def test_a_cancel_from_a_process_without_the_strategy_is_cleaned_up_by_a_worker(
    tidy: BatchJobs, db_path: Path
) -> None:
    id = handed_over(tidy)
    with BatchJobs(db_path) as bare:  # no strategy for "ledger" here
        bare.cancel(id)
    assert Tidy.cleaned == []
    tidy.run_until_idle(timeout=10)
    assert Tidy.cleaned == [id]
    tidy.run_until_idle(timeout=10)
    assert Tidy.cleaned == [id]


def test_a_job_given_back_by_a_batch_and_canceled_then_is_cleaned_up_once(
    tidy: BatchJobs, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("batchjobs.runner.claims.SHORT_JOB", 0.2)

    class Slow(Tidy):
        def process_chunk(self, run: JobRun, start: int, size: int) -> int:
            if run.job.context.get("slow"):
                threading.Event().wait(0.3)
            return super().process_chunk(run, start, size)

    tidy.register(Slow)
    first = tidy.create("ledger", {"n": 1})  # a batch of its own; the next claim takes 2
    slow = tidy.create("ledger", {"n": 1, "slow": True})
    given = handed_over(tidy)  # waits in the slow job's batch, given back when it ends

    def cancel_given(sender: Any, *, job: Any, **extra: Any) -> None:
        if job.id == slow.id:  # sent after the commit that gave ``given`` back
            tidy.cancel(given)

    tidy.subscribe("batch.completed", cancel_given)
    tidy.run_until_idle(timeout=10)
    assert tidy.retrieve(first.id).status == Status.COMPLETED
    assert tidy.retrieve(given).status == Status.CANCELED
    assert Tidy.cleaned == [given]


def test_a_running_job_canceled_is_cleaned_up_once_by_its_worker(tidy: BatchJobs) -> None:
    class Cancels(Tidy):
        def process_chunk(self, run: JobRun, start: int, size: int) -> int:
            if start == 20:
                tidy.cancel(run.job.id)  # a canceller that has the strategy too
            return super().process_chunk(run, start, size)

    tidy.register(Cancels)
    job = tidy.create("ledger", {"n": 50})
    tidy.run_until_idle(timeout=10)
    assert tidy.retrieve(job.id).status == Status.CANCELED
    assert Tidy.cleaned == [job.id]


@pytest.mark.usefixtures("short_jobs")
def test_a_dead_workers_job_is_taken_over_before_newer_short_jobs(make_jobs: Any) -> None:
    with freeze_time("2026-03-01 12:00:00") as clock:
        jobs = make_jobs(lease_seconds=5)
        for _ in range(20):
            jobs.create("ledger", {"n": 1})
        orphan = jobs.create("ledger", {"n": 1})
        dead = make_jobs(lease_seconds=5)
        assert dead.runner.claim_next(ids=[orphan.id]) is not None  # and never runs it
        clock.tick(timedelta(seconds=6))
        order: list[str] = []
        jobs.subscribe("batch.completed", lambda sender, *, job, **kw: order.append(job.id))
        assert jobs.runner.drain() == 21
    assert order.index(orphan.id) == 0  # its expired lease goes before every free job


@pytest.mark.usefixtures("short_jobs")
def test_a_waiting_job_whose_cleanup_cannot_be_taken_is_given_back(tidy: BatchJobs) -> None:
    class Cancels(Tidy):
        def process_chunk(self, run: JobRun, start: int, size: int) -> int:
            other = run.job.context.get("cancel")
            if other:  # the next job of its batch, waiting: its cleanup cannot be taken
                tidy.cancel(other)
                tidy.store.fail_commits(1)
            return super().process_chunk(run, start, size)

    tidy.register(Cancels)
    first = tidy.create("ledger", {"n": 1})  # a batch of its own; the next claim takes 2
    canceller = tidy.create("ledger", {"n": 1})
    waiting = handed_over(tidy)  # processing began: a cleanup is owed once canceled
    tidy.update(canceller.id, context={"cancel": waiting})
    with pytest.raises(StoreError, match="disk I/O error"):
        tidy.runner.drain()
    assert tidy.runner.leases.live() == []  # the heartbeat renews nothing
    assert tidy.store.holder(waiting) is None  # any worker may take its cleanup now
    tidy.run_until_idle(timeout=10)
    assert Tidy.cleaned == [waiting]
    assert tidy.retrieve(first.id).status == tidy.retrieve(canceller.id).status
    assert tidy.retrieve(canceller.id).status == Status.COMPLETED


@pytest.mark.usefixtures("short_jobs")
def test_a_failure_after_a_batch_commit_ends_every_run_and_leaves_no_claim_leased(
    tidy: BatchJobs, make_jobs: Any
) -> None:
    opened: list[Resource] = []

    class Cancels(Tidy):
        def process_chunk(self, run: JobRun, start: int, size: int) -> int:
            opened.append(run.closing(Resource()))
            other = run.job.context.get("cancel")
            if other:  # the job before it in its batch, done and waiting for the commit
                tidy.cancel(other)
            return super().process_chunk(run, start, size)

    tidy.register(Cancels)
    first = tidy.create("ledger", {"n": 1})  # a batch of its own; the next claim takes 2
    lost = tidy.create("ledger", {"n": 1})
    last = tidy.create("ledger", {"n": 1, "cancel": lost.id})
    rest = [tidy.create("ledger", {"n": 1}) for _ in range(4)]  # the next claim's

    def failing(sender: Any, *, job: Any, **extra: Any) -> None:
        if job.id == last.id:  # sent after the batch's commit, before its runs are ended
            tidy.store.fail_commits(1)  # the lost job's cleanup cannot be taken

    tidy.subscribe("batch.completed", failing)
    with pytest.raises(StoreError, match="disk I/O error"):
        tidy.runner.drain()
    assert [r.closed for r in opened] == [True] * 3  # every run was ended
    assert tidy.runner.leases.live() == []  # the heartbeat renews nothing
    assert [tidy.store.holder(j.id) for j in rest] == [None] * 4  # nothing waits to expire
    other = make_jobs(lease_seconds=60)
    assert other.runner.drain() == 4
    assert [other.retrieve(j.id).status for j in (first, last, *rest)] == [Status.COMPLETED] * 6
    assert other.retrieve(lost.id).status == Status.CANCELED


@pytest.mark.usefixtures("short_jobs")
def test_a_long_job_of_a_batch_holds_up_neither_the_jobs_done_before_it_nor_those_after(
    make_jobs: Any, long_ledger: type[LongLedger]
) -> None:
    jobs = make_jobs(lease_seconds=60)
    started, release = long_ledger.started, long_ledger.release
    jobs.register(long_ledger)
    # Claimed 1, then 2, then 4 at a time: the third batch is the last three jobs.
    first = [jobs.create("ledger", {"n": 1}) for _ in range(3)]
    done = jobs.create("ledger", {"n": 1})  # its end waits for its batch's commit
    long = jobs.create("ledger", {"n": 1, "long": True})
    behind = jobs.create("ledger", {"n": 1})  # claimed, not started
    drainer = threading.Thread(target=jobs.runner.drain)
    drainer.start()
    try:
        assert started.wait(10)
        other = make_jobs(lease_seconds=60)
        deadline = time.monotonic() + 5
        while other.store.holder(behind.id) is not None and time.monotonic() < deadline:
            jobs.runner.renew_leases()  # the heartbeat, while the long job runs
            release.wait(0.01)
        assert other.retrieve(done.id).status == Status.COMPLETED  # committed meanwhile
        assert other.runner.drain() == 1  # not held up by the long job
        assert other.retrieve(behind.id).status == Status.COMPLETED
        assert other.store.holder(long.id) is not None  # still running there
    finally:
        release.set()
        drainer.join(10)
    statuses = [jobs.retrieve(j.id).status for j in (*first, done, long)]
    assert statuses == [Status.COMPLETED] * 5
    assert jobs.runner.leases.live() == []


@pytest.mark.usefixtures("short_jobs")
def test_the_receivers_of_what_the_heartbeat_commits_never_hold_up_the_heartbeat(
    make_jobs: Any, long_ledger: type[LongLedger]
) -> None:
    jobs = make_jobs(lease_seconds=60)
    started, release = long_ledger.started, long_ledger.release
    entered, finished, free = threading.Event(), threading.Event(), threading.Event()

    jobs.register(long_ledger)
    jobs.create("ledger", {"n": 1})  # a batch of its own; the next claim takes 2
    done = jobs.create("ledger", {"n": 1})
    jobs.create("ledger", {"n": 1, "long": True})

    def slow(sender: Any, *, job: Any, **extra: Any) -> None:
        if job.id == done.id:  # an email sent, say: it takes a while
            entered.set()
            free.wait(10)
            finished.set()

    jobs.subscribe("batch.completed", slow)
    drainer = threading.Thread(target=jobs.runner.drain)
    drainer.start()
    try:
        assert started.wait(10)
        deadline = time.monotonic() + 5
        while not entered.is_set() and time.monotonic() < deadline:
            jobs.runner.renew_leases()  # the heartbeat, while the long job runs
            release.wait(0.01)
        assert entered.is_set() and not finished.is_set()  # the beat went on meanwhile
        assert jobs.runner.renew_leases() == 1  # the long job's lease, renewed at once
    finally:
        free.set()
        release.set()
        drainer.join(10)
    assert jobs.runner.leases.live() == []


@pytest.mark.usefixtures("short_jobs")
def test_a_job_given_back_behind_a_long_one_is_run_by_another_worker_without_a_poll(
    make_jobs: Any, long_ledger: type[LongLedger]
) -> None:
    jobs = make_jobs(lease_seconds=0.6, poll_interval=60)  # a beat every 0.2 s, no poll
    started, release = long_ledger.started, long_ledger.release
    jobs.register(long_ledger)
    jobs.create("ledger", {"n": 1})  # a batch of its own; the next claim takes 2
    long = jobs.create("ledger", {"n": 1, "long": True})
    behind = jobs.create("ledger", {"n": 1})
    jobs.start(concurrency=2)
    try:
        assert started.wait(10)
        # Given back by the heartbeat, it is taken by the other worker thread at once.
        assert jobs.wait(behind.id, timeout=5).status == Status.COMPLETED
        assert jobs.retrieve(long.id).status != Status.COMPLETED
    finally:
        release.set()
    assert jobs.wait(long.id, timeout=10).status == Status.COMPLETED


def test_a_cleanup_running_in_the_cancelling_thread_keeps_its_lease_through_a_shutdown(
    tidy: BatchJobs, make_jobs: Any, slow_tidy: type[SlowTidy]
) -> None:
    entered, free = slow_tidy.entered, slow_tidy.free
    tidy.register(slow_tidy)
    id = handed_over(tidy)
    canceller = threading.Thread(target=tidy.cancel, args=(id,))  # a request's thread, say
    canceller.start()
    try:
        assert entered.wait(10)  # its on_cancel runs there, under a lease of tidy's runner
        tidy.start()
        tidy.shutdown()  # the workers stop: what they left is given back, not this
        other = make_jobs(lease_seconds=60)
        assert other.runner.drain() == 0  # the cleanup is not there to take twice
    finally:
        free.set()
        canceller.join(10)
    assert Tidy.cleaned == [id]
    assert tidy.store.holder(id) is None


def test_a_cleanup_run_by_cancel_keeps_its_lease_however_long_on_cancel_takes(
    make_jobs: Any, slow_tidy: type[SlowTidy]
) -> None:
    Tidy.cleaned = []
    jobs = make_jobs(lease_seconds=0.3)  # no workers started here: nothing else renews
    entered, free = slow_tidy.entered, slow_tidy.free
    jobs.register(slow_tidy)
    id = handed_over(jobs)
    canceller = threading.Thread(target=jobs.cancel, args=(id,))
    canceller.start()
    try:
        assert entered.wait(10)
        holder = jobs.store.holder(id)
        assert holder is not None and holder.expires_at is not None
        while utcnow() <= holder.expires_at + timedelta(seconds=0.1):  # past its first term
            free.wait(0.02)
        other = make_jobs(lease_seconds=60)
        assert other.runner.drain() == 0  # the cleanup is still held: not taken twice
    finally:
        free.set()
        canceller.join(10)
    assert Tidy.cleaned == [id]


@pytest.mark.usefixtures("short_jobs")
def test_a_long_cleanup_of_a_job_canceled_in_its_batch_holds_up_no_one(
    tidy: BatchJobs, make_jobs: Any, slow_tidy: type[SlowTidy]
) -> None:
    entered, free = slow_tidy.entered, slow_tidy.free

    class Slow(SlowTidy):  # its events are slow_tidy's, set afresh for this test
        def process_chunk(self, run: JobRun, start: int, size: int) -> int:
            other = run.job.context.get("cancel")
            if other:  # the next job of its batch, waiting: its worker cleans it up
                tidy.cancel(other)
            return super().process_chunk(run, start, size)

    tidy.register(Slow)
    # Claimed 1, then 2, then 4 at a time: the third batch is the last three jobs.
    for _ in range(3):
        tidy.create("ledger", {"n": 1})
    canceller = tidy.create("ledger", {"n": 1})
    canceled = handed_over(tidy)  # processing began: a cleanup is owed once canceled
    tidy.update(canceller.id, context={"cancel": canceled})
    behind = tidy.create("ledger", {"n": 1})
    drainer = threading.Thread(target=tidy.runner.drain)
    drainer.start()
    try:
        assert entered.wait(10)
        other = make_jobs(lease_seconds=60)
        deadline = time.monotonic() + 5
        while other.store.holder(behind.id) is not None and time.monotonic() < deadline:
            tidy.runner.renew_leases()  # the heartbeat, while on_cancel runs
            free.wait(0.01)
        assert other.retrieve(canceller.id).status == Status.COMPLETED
        assert other.runner.drain() == 1
        assert other.retrieve(behind.id).status == Status.COMPLETED
    finally:
        free.set()
        drainer.join(10)
    assert Tidy.cleaned == [canceled]

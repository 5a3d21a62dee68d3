"""The background scheduler in one process: pick-up, wake-ups, fairness, handover."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from batchjobs import BatchJobs, JobRun, Status
from tests.strategies import Ledger, Words, read_ledger

pytestmark = pytest.mark.backends("sqlite", "postgres")


def test_start_runs_many_jobs_to_completion(make_jobs: Any) -> None:
    jobs = make_jobs(concurrency=3)
    created = [jobs.create("words", {"words": list("abcde")}) for _ in range(30)]
    jobs.start()
    for job in created:
        assert jobs.wait(job.id, timeout=10).status == Status.COMPLETED
    jobs.shutdown()
    assert jobs.list_and_count(status="completed")[1] == 30


def test_a_created_job_is_picked_up_at_once_not_at_the_next_poll(make_jobs: Any) -> None:
    jobs = make_jobs(poll_interval=60)
    started = threading.Event()

    class Notes(Words):
        def pre_process(self, run: JobRun) -> None:
            started.set()
            super().pre_process(run)

    jobs.register(Notes)
    jobs.start()
    jobs.create("words", {"words": ["a"]})
    assert started.wait(2)  # the poll is a minute away
    jobs.shutdown()


def test_a_retried_or_confirmed_job_wakes_the_scheduler(make_jobs: Any) -> None:
    jobs = make_jobs(poll_interval=60)
    jobs.start()
    preview = jobs.create("words", {"words": ["a"]}, dry_run=True)
    assert jobs.wait(preview.id, timeout=5).status == Status.PRE_PROCESSED
    jobs.confirm(preview.id)
    assert jobs.wait(preview.id, timeout=5).status == Status.COMPLETED
    broken = jobs.create("ledger", {"n": 20, "fail_at": 10})
    assert jobs.wait(broken.id, timeout=5).status == Status.FAILED
    jobs.update(broken.id, context={"fail_at": None})
    jobs.retry(broken.id)
    assert jobs.wait(broken.id, timeout=5).status == Status.COMPLETED
    jobs.shutdown()


def test_a_new_job_is_pre_processed_while_every_worker_is_busy(make_jobs: Any) -> None:
    jobs = make_jobs(concurrency=1, poll_interval=60)
    busy, release = threading.Event(), threading.Event()

    class Long(Ledger):
        def process_chunk(self, run: JobRun, start: int, size: int) -> int:
            busy.set()
            release.wait(10)
            return super().process_chunk(run, start, size)

    jobs.register(Long)
    long = jobs.create("ledger", {"n": 20})
    jobs.start()
    assert busy.wait(5)
    preview = jobs.create("words", {"words": ["a", "b"]}, dry_run=True)
    assert jobs.wait(preview.id, timeout=5).status == Status.PRE_PROCESSED
    assert jobs.retrieve(long.id).status == Status.PROCESSING
    release.set()
    assert jobs.wait(long.id, timeout=5).status == Status.COMPLETED
    jobs.shutdown()


def test_shutdown_hands_a_running_job_over_at_once(make_jobs: Any, tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.txt"
    first = make_jobs(lease_seconds=60)
    chunks = threading.Semaphore(0)

    class Counted(Ledger):
        def process_chunk(self, run: JobRun, start: int, size: int) -> int:
            chunks.release()
            time.sleep(0.01)
            return super().process_chunk(run, start, size)

    first.register(Counted)
    job = first.create("ledger", {"n": 1000, "ledger": str(ledger), "cursor": True})
    first.start()
    for _ in range(3):
        assert chunks.acquire(timeout=5)
    first.shutdown()
    handed = first.retrieve(job.id)
    assert handed.status == Status.PROCESSING
    assert 0 < handed.result["advancement_count"] < 1000
    # The lease was released: a second instance resumes without waiting 60 s.
    second = make_jobs(lease_seconds=60)
    second.run_until_idle(timeout=10)
    assert second.retrieve(job.id).status == Status.COMPLETED
    assert read_ledger(ledger) == [str(i) for i in range(1000)]


def test_two_schedulers_on_one_file_run_each_job_once(make_jobs: Any, tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.txt"
    a, b = make_jobs(concurrency=2), make_jobs(concurrency=2)
    created = [
        a.create("ledger", {"n": 30, "ledger": str(ledger), "tagged": True}) for _ in range(40)
    ]
    a.start()
    b.start()
    for job in created:
        assert a.wait(job.id, timeout=20).status == Status.COMPLETED
    a.shutdown()
    b.shutdown()
    lines = read_ledger(ledger)
    assert len(lines) == 40 * 30 and len(set(lines)) == 40 * 30


def test_wait_times_out_with_the_status(jobs: BatchJobs) -> None:
    job = jobs.create("words", {"words": ["a"]})
    try:
        jobs.wait(job.id, timeout=0.05)
    except TimeoutError as error:
        assert str(error) == f"batch job {job.id} is still created after 0.05 seconds"
    else:  # pragma: no cover
        raise AssertionError("wait did not time out")


def test_a_database_that_turns_read_only_is_one_warning_and_a_backoff(
    make_jobs: Any, monkeypatch: Any, caplog: Any
) -> None:
    import logging

    from batchjobs.testing import Faults

    monkeypatch.setattr("batchjobs.scheduler.OUTAGE_FIRST", 0.02)
    jobs = make_jobs(poll_interval=0.01)
    job = jobs.create("words", {"words": ["a"]})
    caplog.set_level(logging.WARNING, logger="batchjobs")
    with Faults(jobs).read_only():
        jobs.start()
        assert jobs.scheduler is not None
        outage = jobs.scheduler.outage
        deadline = time.monotonic() + 10
        while outage.failures < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert outage.failures >= 4 and outage.count == 1
        assert outage.backing_off() or outage.error is not None
    assert jobs.wait(job.id, timeout=10).status == Status.COMPLETED
    jobs.shutdown()
    where = jobs.store.location
    # Ours only: not another test's threads, and not APScheduler's own warning that it
    # skipped a 10 ms poll still overlapping the one before it under load (max_instances=1).
    ours = [
        r for r in caplog.records if r.name.split(".")[0] == "batchjobs" and where in r.getMessage()
    ]
    lines = [r.getMessage() for r in ours]
    assert lines[0].startswith(f"Cannot write to the database {where}: it is read-only")
    assert len(lines) == 2 and lines[1].startswith(f"the database {where} works again")
    assert not any(r.exc_info for r in ours)

"""The testing kit: faults in the real database, crashes after chunk N."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from freezegun import freeze_time

from batchjobs import BatchJobs, Status
from batchjobs.errors import StoreError, StoreLockedError, StoreReadOnlyError
from batchjobs.testing import CrashAfterChunk, Faults, SimulatedCrash, crash_after_chunk
from tests.strategies import Ledger, read_ledger


def test_a_crash_after_chunk_n_resumes_with_that_chunk_done_twice(
    make_jobs: Any, tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger.txt"
    with freeze_time("2026-03-01 12:00:00") as clock:
        jobs = make_jobs(lease_seconds=10)
        jobs.register(crash_after_chunk(Ledger, 2))
        job = jobs.create("ledger", {"n": 40, "ledger": str(ledger), "cursor": True})
        with pytest.raises(SimulatedCrash, match="after chunk 2"):
            jobs.run_until_idle(timeout=10)
        assert jobs.store.holder(job.id) is not None  # left leased, as after kill -9
        assert jobs.run_next() is None
        clock.tick(timedelta(seconds=10))
        jobs.run_until_idle(timeout=10)  # the same strategy: it crashes once per job
    done = jobs.retrieve(job.id)
    assert done.status == Status.COMPLETED
    lines = read_ledger(ledger)
    assert sorted(set(lines), key=int) == [str(i) for i in range(40)]
    assert len(lines) == 50  # chunk 2 (10..19) ran twice, no other


def test_a_crash_with_an_exit_code_ends_the_process_at_once(tmp_path: Path) -> None:
    db, ledger = tmp_path / "jobs.db", tmp_path / "ledger.txt"
    script = textwrap.dedent(
        f"""
        from batchjobs import BatchJobs
        from batchjobs.testing import crash_after_chunk
        from tests.strategies import Ledger
        jobs = BatchJobs({str(db)!r})
        jobs.register(crash_after_chunk(Ledger(), 1, exit_code=7))
        jobs.create("ledger", {{"n": 30, "ledger": {str(ledger)!r}}})
        jobs.run_until_idle(timeout=10)
        print("not reached")
        """
    )
    ran = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=Path.cwd()
    )
    assert ran.returncode == 7 and "not reached" not in ran.stdout
    assert read_ledger(ledger) == [str(i) for i in range(10)]
    with BatchJobs(db) as jobs:
        (job,), _ = jobs.list_and_count()
        assert job.status == Status.PROCESSING and "advancement_count" not in job.result


def test_crash_after_chunk_keeps_the_strategy_s_name_and_refuses_a_bad_count() -> None:
    wrapped = crash_after_chunk(Ledger(), 3)
    assert isinstance(wrapped, CrashAfterChunk)
    assert (wrapped.batch_type, wrapped.chunk_size, wrapped.identifier) == ("ledger", 10, "Ledger")
    with pytest.raises(ValueError, match="chunks must be a positive integer, not 0"):
        crash_after_chunk(Ledger, 0)


def test_faults_make_the_store_fail_and_stop_when_the_context_ends(jobs: BatchJobs) -> None:
    faults = Faults(jobs)
    with faults.read_only(), pytest.raises(StoreReadOnlyError, match="read-only"):
        jobs.create("ledger", {"n": 1})
    assert jobs.list_and_count()[1] == 0  # nothing was written
    with faults.lock_held(timeout=0.01), pytest.raises(StoreLockedError, match="locked"):
        jobs.create("ledger", {"n": 1})
    with faults.failing_commits(1):
        with pytest.raises(StoreError, match="disk I/O error"):
            jobs.create("ledger", {"n": 1})
        assert jobs.list_and_count()[1] == 0
        job = jobs.create("ledger", {"n": 1})  # one failure, then it works
    with faults.failing_commits(5):
        pass
    jobs.run_until_idle(timeout=10)  # the unspent failures were cancelled
    assert jobs.retrieve(job.id).status == Status.COMPLETED


def test_faults_want_a_batchjobs_or_a_store() -> None:
    with pytest.raises(TypeError, match="is neither a BatchJobs nor a Store"):
        Faults(object())

"""Real worker processes on one database (SQLite or PostgreSQL): kill -9, SIGTERM, contention,
poison jobs."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from batchjobs import BatchJobs, Status
from tests.strategies import read_ledger

pytestmark = [pytest.mark.slow, pytest.mark.backends("sqlite", "postgres")]
ROOT = Path(__file__).resolve().parent.parent


def wait_for(condition: Callable[[], Any], timeout: float = 20, what: str = "") -> Any:
    """Poll ``condition`` (a cheap read of the store) until it is truthy."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what or condition}")


def progress(jobs: BatchJobs, id: str) -> int:
    return jobs.retrieve(id).result.get("advancement_count", 0)


def test_kill_9_mid_job_then_another_worker_finishes_it(
    jobs: BatchJobs, start_worker: Callable[..., Any], tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger.txt"
    job = jobs.create("ledger", {"n": 400, "sleep": 0.02, "ledger": str(ledger), "cursor": True})
    first = start_worker("--lease-seconds", "1")
    wait_for(lambda: progress(jobs, job.id) >= 50, what="the first checkpoints")
    first.send_signal(signal.SIGKILL)
    first.wait()
    start_worker("--lease-seconds", "1")
    assert jobs.wait(job.id, timeout=30).status == Status.COMPLETED
    counts = Counter(read_ledger(ledger))
    assert set(counts) == {str(i) for i in range(400)}  # nothing lost
    assert sum(counts.values()) - 400 <= 10  # at most one chunk (10 records) twice


def test_sigterm_hands_the_job_over_without_repeating_a_record(
    jobs: BatchJobs, start_worker: Callable[..., Any], tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger.txt"
    job = jobs.create("ledger", {"n": 400, "sleep": 0.02, "ledger": str(ledger), "cursor": True})
    first = start_worker("--lease-seconds", "60")
    wait_for(lambda: progress(jobs, job.id) >= 50, what="the first checkpoints")
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=10) == 0
    handed = jobs.retrieve(job.id)
    assert handed.status == Status.PROCESSING
    # A 60 s lease, yet the next worker starts at once: the lease was released.
    start_worker("--lease-seconds", "60")
    assert jobs.wait(job.id, timeout=20).status == Status.COMPLETED
    assert read_ledger(ledger) == [str(i) for i in range(400)]


def test_three_workers_run_200_jobs_exactly_once(
    jobs: BatchJobs, start_worker: Callable[..., Any], tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger.txt"
    # Leases of the default length: with the test workers' 1 s, a loaded machine that
    # starves a heartbeat for a second lets another worker take a running job over (a
    # chunk repeated, as takeover allows); nothing here dies, so any repeat is a bug.
    lease = ("--lease-seconds", "30")
    workers = [start_worker("--concurrency", "2", *lease) for _ in range(3)]
    created = [
        jobs.create("ledger", {"n": 5, "chunk_size": 2, "ledger": str(ledger), "tagged": True})
        for _ in range(200)
    ]
    for job in created:
        assert jobs.wait(job.id, timeout=60).status == Status.COMPLETED
    for worker in workers:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=10) == 0
    counts = Counter(read_ledger(ledger))
    assert len(counts) == 200 * 5
    assert set(counts.values()) == {1}


def test_a_chunk_longer_than_the_lease_is_not_taken_over(
    jobs: BatchJobs, start_worker: Callable[..., Any], tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger.txt"
    job = jobs.create("ledger", {"n": 20, "sleep": 1.2, "ledger": str(ledger)})
    start_worker("--lease-seconds", "0.4")
    wait_for(lambda: jobs.retrieve(job.id).status == Status.PROCESSING, what="processing")
    start_worker("--lease-seconds", "0.4")  # would take the job if the lease lapsed
    assert jobs.wait(job.id, timeout=20).status == Status.COMPLETED
    assert read_ledger(ledger) == [str(i) for i in range(20)]


def test_a_job_that_kills_every_worker_ends_failed_after_max_attempts(
    jobs: BatchJobs, start_worker: Callable[..., Any]
) -> None:
    job = jobs.create("ledger", {"n": 20, "exit_at": 0})
    options = ("--lease-seconds", "0.3", "--max-attempts", "2")
    deaths = 0
    while jobs.retrieve(job.id).status != Status.FAILED:
        assert deaths <= 3, "the poison job was not failed after max_attempts"
        worker = start_worker(*options, ready=False)  # it may die before it says so
        # The worker either dies on the job or, once it is failed, stays up.
        while worker.poll() is None and jobs.retrieve(job.id).status != Status.FAILED:
            time.sleep(0.02)
        if worker.poll() is not None:
            assert worker.returncode == 3
            deaths += 1
    assert deaths == 3  # the first claim and two takeovers
    failed = jobs.retrieve(job.id)
    assert failed.result["errors"][-1]["code"] == "max_attempts_exceeded"


# -- same-host takeover: a dead holder's lease is expired at once --------------------


def test_kill_9_then_a_new_worker_on_this_host_resumes_at_once(
    jobs: BatchJobs, start_worker: Callable[..., Any], tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger.txt"
    job = jobs.create("ledger", {"n": 300, "sleep": 0.02, "ledger": str(ledger), "cursor": True})
    first = start_worker("--lease-seconds", "30")
    wait_for(lambda: progress(jobs, job.id) >= 50, what="the first checkpoints")
    first.send_signal(signal.SIGKILL)
    first.wait()
    left_at = progress(jobs, job.id)
    holder = jobs.store.holder(job.id)
    assert holder is not None and holder.owner.split(":")[1] == str(first.pid)
    # Its lease has 30 s to run; a worker of this host sees its holder died.
    start_worker("--lease-seconds", "30")
    started = time.monotonic()
    wait_for(lambda: progress(jobs, job.id) > left_at, timeout=10, what="the resumed job")
    resumed = time.monotonic() - started
    assert jobs.wait(job.id, timeout=20).status == Status.COMPLETED
    assert resumed < 5, f"resumed {resumed:.2f} s after the new worker started"
    counts = Counter(read_ledger(ledger))
    assert set(counts) == {str(i) for i in range(300)}
    assert sum(counts.values()) - 300 <= 10  # at most one chunk twice
    assert jobs.store.holder(job.id) is None


def test_a_live_worker_s_lease_is_never_taken_by_a_worker_of_its_host(
    jobs: BatchJobs, start_worker: Callable[..., Any], tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger.txt"
    job = jobs.create("ledger", {"n": 60, "sleep": 0.05, "ledger": str(ledger), "cursor": True})
    first = start_worker("--lease-seconds", "30")
    wait_for(lambda: progress(jobs, job.id) >= 10, what="the first checkpoints")
    owner = jobs.store.holder(job.id)
    assert owner is not None
    second = start_worker("--lease-seconds", "30", "--poll-interval", "0.02")
    # The second worker polls every 20 ms for the whole job: it never takes it.
    assert jobs.wait(job.id, timeout=20).status == Status.COMPLETED
    assert read_ledger(ledger) == [str(i) for i in range(60)]
    assert first.poll() is None and second.poll() is None


def _process_with_pid(pid: int) -> subprocess.Popen[bytes] | None:
    """A live process that got ``pid`` (Linux, as root: ``ns_last_pid``), or ``None``."""
    for _ in range(50):
        try:
            Path("/proc/sys/kernel/ns_last_pid").write_text(str(pid - 1))
        except OSError:
            return None
        proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        if proc.pid == pid:
            return proc
        proc.kill()
        proc.wait()
    return None


def test_a_dead_holder_s_pid_reused_by_a_live_process_is_not_taken_for_it(
    jobs: BatchJobs, start_worker: Callable[..., Any], tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger.txt"
    job = jobs.create("ledger", {"n": 200, "sleep": 0.02, "ledger": str(ledger), "cursor": True})
    first = start_worker("--lease-seconds", "30")
    wait_for(lambda: progress(jobs, job.id) >= 30, what="the first checkpoints")
    first.send_signal(signal.SIGKILL)
    first.wait()
    reused = _process_with_pid(first.pid)
    if reused is None:
        pytest.skip("cannot give a new process a chosen pid here (needs Linux and root)")
    try:
        left_at = progress(jobs, job.id)
        start_worker("--lease-seconds", "30")
        # The pid is alive again, but not as the holder: the lease is taken at once.
        wait_for(lambda: progress(jobs, job.id) > left_at, timeout=10, what="the resumed job")
        assert jobs.wait(job.id, timeout=20).status == Status.COMPLETED
    finally:
        reused.kill()
        reused.wait()
    assert sum(Counter(read_ledger(ledger)).values()) - 200 <= 10

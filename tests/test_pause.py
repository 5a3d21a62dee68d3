"""Pause and resume: the transitions, the runner stopping at a checkpoint, real workers."""

from __future__ import annotations

import signal
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from batchjobs import (
    BatchJob,
    BatchJobs,
    BatchJobStrategy,
    JobRun,
    NotAllowedError,
    NotFoundError,
    Status,
)
from batchjobs.cli import cli
from batchjobs.http import create_app
from batchjobs.models import utcnow
from tests.strategies import Ledger, read_ledger
from tests.test_crash import progress, wait_for

pytestmark = pytest.mark.backends("sqlite", "postgres")

ROOT = Path(__file__).resolve().parent.parent


def confirmed_job(jobs: BatchJobs, **context: Any) -> BatchJob:
    """A ledger job that is ``confirmed``: pre-processed as a dry run, then confirmed."""
    job = jobs.create("ledger", {"n": 30, **context}, dry_run=True)
    jobs.run_until_idle(timeout=10)
    return jobs.confirm(job.id)


def events_of(jobs: BatchJobs, *names: str) -> list[tuple[str, str, str]]:
    seen: list[tuple[str, str, str]] = []
    for name in names:
        jobs.subscribe(
            name, lambda sender, job, _n=name, **extra: seen.append((_n, job.id, job.status.value))
        )
    return seen


# -- the transitions ---------------------------------------------------------------------


def test_pause_and_resume_move_the_job_and_send_their_events(jobs: BatchJobs) -> None:
    job = confirmed_job(jobs)
    seen = events_of(jobs, "batch.paused", "batch.confirmed")
    paused = jobs.pause(job.id)
    assert paused.status == Status.PAUSED and paused.paused_at is not None
    assert paused.to_dict()["paused_at"] == paused.paused_at.isoformat()
    assert jobs.retrieve(job.id) == paused
    resumed = jobs.resume(job.id)
    assert resumed.status == Status.CONFIRMED and resumed.paused_at is None
    assert seen == [("batch.paused", job.id, "paused"), ("batch.confirmed", job.id, "confirmed")]
    jobs.run_until_idle(timeout=10)
    assert jobs.retrieve(job.id).status == Status.COMPLETED


def job_in(jobs: BatchJobs, status: str) -> BatchJob:
    """A job left in ``status``."""
    if status == "paused":
        return jobs.pause(confirmed_job(jobs).id)
    if status == "failed":
        job = jobs.create("broken")
    else:
        job = jobs.create("ledger", {"n": 3}, dry_run=status == "pre_processed")
    if status == "canceled":
        return jobs.cancel(job.id)
    if status != "created":
        jobs.run_until_idle(timeout=10)
    return job


@pytest.mark.parametrize(
    "status", ["created", "pre_processed", "completed", "canceled", "failed", "paused"]
)
def test_pause_refuses_every_other_status_in_medusas_phrasing(jobs: BatchJobs, status: str) -> None:
    job = job_in(jobs, status)
    before = jobs.retrieve(job.id)
    assert before.status == status
    with pytest.raises(NotAllowedError) as error:
        jobs.pause(job.id)
    assert error.value.message == f'Cannot pause a batch job with status "{status}"'
    assert jobs.retrieve(job.id) == before  # nothing written


def test_resume_refuses_a_job_that_is_not_paused_and_unknown_ids(jobs: BatchJobs) -> None:
    job = confirmed_job(jobs)
    with pytest.raises(NotAllowedError) as error:
        jobs.resume(job.id)
    assert error.value.message == 'Cannot resume a batch job with status "confirmed"'
    assert jobs.retrieve(job.id).status == Status.CONFIRMED
    for operation in (jobs.pause, jobs.resume):
        with pytest.raises(NotFoundError) as missing:
            operation("batch_nope")
        assert missing.value.message == "Batch job with id batch_nope was not found"


def test_a_paused_job_rests_and_can_be_canceled(jobs: BatchJobs) -> None:
    job = jobs.pause(confirmed_job(jobs).id)
    assert jobs.wait(job.id, timeout=5).status == Status.PAUSED
    jobs.run_until_idle(timeout=10)  # returns: nothing active
    assert jobs.retrieve(job.id).status == Status.PAUSED
    canceled = jobs.cancel(job.id)
    assert canceled.status == Status.CANCELED
    with pytest.raises(NotAllowedError):
        jobs.resume(job.id)


# -- the runner ----------------------------------------------------------------------------


def pause_at(jobs: BatchJobs, job_id: str, advancement: int) -> None:
    """Pause ``job_id`` once its checkpoint reaches ``advancement``: an operator's click."""

    def receiver(sender: Any, *, job: BatchJob, **extra: Any) -> None:
        if job.id == job_id and job.result.get("advancement_count") == advancement:
            jobs.pause(job.id)

    jobs.subscribe("batch.updated", receiver)


def test_a_running_job_stops_at_its_next_checkpoint_and_resumes_repeating_nothing(
    jobs: BatchJobs, tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger.txt"
    job = jobs.create("ledger", {"n": 50, "ledger": str(ledger), "cursor": True})
    pause_at(jobs, job.id, 10)
    jobs.run_until_idle(timeout=10)
    paused = jobs.retrieve(job.id)
    # The chunk in progress when the pause came (10-19) is committed, then it stopped.
    assert (paused.status, paused.result["advancement_count"]) == (Status.PAUSED, 20)
    assert read_ledger(ledger) == [str(i) for i in range(20)]
    assert jobs.store.holder(job.id) is None  # the lease is given up
    jobs.resume(job.id)
    jobs.run_until_idle(timeout=10)
    assert jobs.retrieve(job.id).status == Status.COMPLETED
    assert read_ledger(ledger) == [str(i) for i in range(50)]


def test_a_job_paused_and_resumed_during_a_chunk_never_runs_in_two_workers_at_once(
    make_jobs: Callable[..., BatchJobs], tmp_path: Path
) -> None:
    jobs = make_jobs(lease_seconds=60)
    in_chunk, release = threading.Event(), threading.Event()

    class Held(Ledger):
        def process_chunk(self, run: JobRun, start: int, size: int) -> int:
            if start == 10 and not in_chunk.is_set():
                in_chunk.set()
                release.wait(10)
            return super().process_chunk(run, start, size)

    jobs.register(Held)
    ledger = tmp_path / "ledger.txt"
    job = jobs.create("ledger", {"n": 30, "ledger": str(ledger), "cursor": True})
    worker = threading.Thread(target=jobs.runner.drain)
    worker.start()
    try:
        assert in_chunk.wait(10)
        jobs.pause(job.id)
        jobs.resume(job.id)  # before the worker reached its next checkpoint
        other = make_jobs(lease_seconds=60)
        assert other.runner.drain() == 0  # the first worker still runs it
    finally:
        release.set()
        worker.join(10)
    jobs.run_until_idle(timeout=10)
    assert jobs.retrieve(job.id).status == Status.COMPLETED
    assert read_ledger(ledger) == [str(i) for i in range(30)]  # each record once


def test_a_pause_during_the_last_chunk_lets_the_job_complete(jobs: BatchJobs) -> None:
    job = jobs.create("ledger", {"n": 20})
    pause_at(jobs, job.id, 10)
    jobs.run_until_idle(timeout=10)
    done = jobs.retrieve(job.id)
    assert (done.status, done.result["advancement_count"]) == (Status.COMPLETED, 20)


def test_a_paused_job_is_not_claimed_until_resumed(jobs: BatchJobs, tmp_path: Path) -> None:
    job = jobs.pause(confirmed_job(jobs).id)
    assert jobs.run_next() is None
    jobs.resume(job.id)
    assert jobs.run_next() is not None
    assert jobs.retrieve(job.id).status == Status.COMPLETED


def test_a_job_canceled_while_its_pause_is_pending_is_cleaned_up(
    jobs: BatchJobs, tmp_path: Path
) -> None:
    job = jobs.create("ledger", {"n": 50})

    def receiver(sender: Any, *, job: BatchJob, **extra: Any) -> None:
        if job.result.get("advancement_count") == 10:
            jobs.pause(job.id)
            jobs.cancel(job.id)

    jobs.subscribe("batch.updated", receiver)
    jobs.run_until_idle(timeout=10)
    assert jobs.retrieve(job.id).status == Status.CANCELED
    assert jobs.store.holder(job.id) is None


class Pauser(BatchJobStrategy):
    """One short chunk; its ``context["pause"]`` job is paused while this one runs."""

    batch_type = "pauser"
    jobs: BatchJobs | None = None

    def pre_process(self, run: JobRun) -> None:
        run.set_count(1)  # one chunk: no checkpoint gives the batch back before the end

    def process_chunk(self, run: JobRun, start: int, size: int) -> int:
        target = run.job.context.get("pause")
        if target and self.jobs is not None:
            self.jobs.pause(target)
        return 1


def test_a_job_paused_while_it_waits_in_a_batch_is_given_back(
    jobs: BatchJobs, monkeypatch: pytest.MonkeyPatch
) -> None:
    # However long pausing takes, the batch stays together: the paused job waits in it.
    monkeypatch.setattr("batchjobs.runner.claims.SHORT_JOB", 60.0)
    pauser = Pauser()
    pauser.jobs = jobs
    jobs.register(pauser)
    first, second, third = (jobs.create("pauser", {}, dry_run=True) for _ in range(3))
    jobs.run_until_idle(timeout=10)
    jobs.update(second.id, context={"pause": third.id})
    for job in (first, second, third):
        jobs.confirm(job.id)
    jobs.run_until_idle(timeout=10)  # one alone, then second and third in one claim
    assert [jobs.retrieve(j.id).status for j in (first, second, third)] == [
        Status.COMPLETED,
        Status.COMPLETED,
        Status.PAUSED,
    ]
    assert jobs.store.holder(third.id) is None


# -- the edges -------------------------------------------------------------------------------


def test_pause_and_resume_over_http_for_the_owner_only(jobs: BatchJobs) -> None:
    owned = jobs.create("ledger", {"n": 30}, dry_run=True, created_by="usr_1")
    jobs.run_until_idle(timeout=10)
    jobs.confirm(owned.id)
    client = create_app(jobs, tokens={"t1": "usr_1", "t2": "usr_2"}).test_client()
    url = f"/admin/batch-jobs/{owned.id}"
    paused = client.post(f"{url}/pause", headers={"Authorization": "Bearer t1"})
    assert paused.status_code == 200
    assert paused.get_json() == {"batch_job": jobs.retrieve(owned.id).to_dict()}
    assert paused.get_json()["batch_job"]["status"] == "paused"
    other = client.post(f"{url}/resume", headers={"Authorization": "Bearer t2"})
    assert other.status_code == 400 and other.get_json()["type"] == "not_allowed"
    assert jobs.retrieve(owned.id).status == Status.PAUSED
    again = client.post(f"{url}/pause", headers={"Authorization": "Bearer t1"})
    assert again.status_code == 400
    assert again.get_json()["message"] == 'Cannot pause a batch job with status "paused"'
    resumed = client.post(f"{url}/resume", headers={"Authorization": "Bearer t1"})
    assert resumed.get_json()["batch_job"]["status"] == "confirmed"


def test_pause_and_resume_from_the_command_line(jobs: BatchJobs, db_url: str | Path) -> None:
    job = confirmed_job(jobs)
    runner = CliRunner(env={"BATCHJOBS_DB": None, "BATCHJOBS_APP": None})
    group = ["--db", str(db_url), "--app", "tests.strategies"]
    paused = runner.invoke(cli, [*group, "pause", job.id])
    assert (paused.exit_code, paused.stdout) == (0, f"{job.id} paused\n")
    watched = runner.invoke(cli, [*group, "watch", job.id])
    assert watched.exit_code == 1
    assert f"continue it with: batchjobs resume {job.id}" in watched.stderr
    refused = runner.invoke(cli, [*group, "pause", job.id])
    assert refused.exit_code == 2
    assert 'Cannot pause a batch job with status "paused"' in refused.stderr
    resumed = runner.invoke(cli, [*group, "resume", job.id, "--json"])
    assert resumed.exit_code == 0 and '"status": "confirmed"' in resumed.stdout


# -- real worker processes ---------------------------------------------------------------------


@pytest.mark.slow
def test_a_job_paused_in_a_worker_process_resumes_with_nothing_repeated(
    jobs: BatchJobs, start_worker: Callable[..., Any], tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger.txt"
    job = jobs.create("ledger", {"n": 300, "sleep": 0.02, "ledger": str(ledger), "cursor": True})
    start_worker("--lease-seconds", "60")
    wait_for(lambda: progress(jobs, job.id) >= 50, what="the first checkpoints")
    jobs.pause(job.id)
    # The worker commits the chunk it was on, then gives the job up: a 60 s
    # lease, released at once.
    wait_for(lambda: jobs.store.holder(job.id) is None, what="the lease given up")
    paused = jobs.retrieve(job.id)
    assert paused.status == Status.PAUSED
    done = paused.result["advancement_count"]
    assert 50 <= done < 300
    assert read_ledger(ledger) == [str(i) for i in range(done)]  # no record beyond it
    jobs.resume(job.id)
    assert jobs.wait(job.id, timeout=30).status == Status.COMPLETED
    assert read_ledger(ledger) == [str(i) for i in range(300)]  # each record once


@pytest.mark.slow
def test_a_paused_job_stays_paused_after_kill_9_and_a_restart(
    jobs: BatchJobs, start_worker: Callable[..., Any], tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger.txt"
    job = jobs.create("ledger", {"n": 300, "sleep": 0.02, "ledger": str(ledger), "cursor": True})
    first = start_worker("--lease-seconds", "1")
    wait_for(lambda: progress(jobs, job.id) >= 50, what="the first checkpoints")
    jobs.pause(job.id)
    first.send_signal(signal.SIGKILL)  # maybe before its checkpoint: its lease stays behind
    first.wait()
    at_pause = jobs.retrieve(job.id)
    left = jobs.store.holder(job.id)  # the dead worker's lease, if it had no time to give it up
    if left is not None and left.expires_at is not None:
        expiry = left.expires_at
        wait_for(lambda: utcnow() > expiry, what="the dead worker's lease to expire")
    start_worker("--lease-seconds", "1")
    # A restarted worker takes over expired leases before anything else: it runs
    # this new job to the end, and leaves the paused one alone.
    other = jobs.create("ledger", {"n": 5})
    assert jobs.wait(other.id, timeout=30).status == Status.COMPLETED
    assert jobs.retrieve(job.id) == at_pause
    assert at_pause.status == Status.PAUSED
    jobs.resume(job.id)
    assert jobs.wait(job.id, timeout=30).status == Status.COMPLETED
    counts = Counter(read_ledger(ledger))
    assert set(counts) == {str(i) for i in range(300)}  # nothing lost
    assert sum(counts.values()) - 300 <= 10  # at most the chunk the kill cut short, twice

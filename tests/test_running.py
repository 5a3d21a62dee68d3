"""Running jobs: checkpoints, cancel, failures, retries, resume, leases."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from freezegun import freeze_time

from batchjobs import BatchJob, BatchJobs, InvalidDataError, JobRun, MissingContextKeyError, Status
from batchjobs.models import utcnow
from batchjobs.runner.claims import STILL_OURS_FOR
from batchjobs.store import Store
from tests.strategies import Ledger, read_ledger

pytestmark = pytest.mark.backends("sqlite", "postgres")
ROOT = Path(__file__).resolve().parent.parent


def test_checkpoints_are_visible_from_another_connection_while_the_job_runs(
    jobs: BatchJobs, make_store: Callable[[], Store]
) -> None:
    seen: list[int | None] = []
    outside = make_store()  # its own connections

    class Watching(Ledger):
        def process_chunk(self, run: JobRun, start: int, size: int) -> int:
            job = outside.get(run.job.id)
            assert job is not None
            seen.append(job.result.get("advancement_count"))
            return super().process_chunk(run, start, size)

    jobs.register(Watching)
    jobs.create("ledger", {"n": 35})
    jobs.run_until_idle(timeout=10)
    # The first chunk runs before the first checkpoint; each later one sees the one before.
    assert seen == [None, 10, 20, 30]


def test_cancel_from_another_thread_stops_within_one_chunk(jobs: BatchJobs, tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.txt"
    second_chunk = threading.Event()
    release = threading.Event()
    cleaned: list[int] = []

    class Slow(Ledger):
        def process_chunk(self, run: JobRun, start: int, size: int) -> int:
            if start == 10:
                second_chunk.set()
                release.wait(5)
            return super().process_chunk(run, start, size)

        def on_cancel(self, run: JobRun) -> None:
            cleaned.append(run.result["advancement_count"])

    jobs.register(Slow)
    job = jobs.create("ledger", {"n": 100, "ledger": str(ledger)})
    runner = threading.Thread(target=jobs.run_until_idle, kwargs={"timeout": 10})
    runner.start()
    assert second_chunk.wait(5)
    canceled = jobs.cancel(job.id)
    release.set()
    runner.join(10)
    assert canceled.status == Status.CANCELED
    final = jobs.retrieve(job.id)
    assert final.status == Status.CANCELED
    assert final.result["advancement_count"] == 10  # the chunk in flight is not saved
    assert cleaned == [20]  # on_cancel saw the run's own progress
    assert len(read_ledger(ledger)) == 20


def test_failure_in_pre_process_fails_the_job_with_the_error(jobs: BatchJobs) -> None:
    failed: list[str] = []
    jobs.subscribe("batch.failed", lambda sender, job, **kw: failed.append(job.id))
    job = jobs.create("broken")
    jobs.run_until_idle(timeout=10)
    done = jobs.retrieve(job.id)
    assert done.status == Status.FAILED and done.failed_at is not None
    assert done.result["errors"] == [{"message": "cannot count the records", "code": "ValueError"}]
    assert failed == [job.id]


def test_a_context_key_the_job_lacks_fails_it_as_refused_input(jobs: BatchJobs) -> None:
    job = jobs.create("ledger", {"path": "unused"})  # Ledger reads context["n"]
    jobs.run_until_idle(timeout=10)
    done = jobs.retrieve(job.id)
    assert done.status == Status.FAILED
    assert done.result["errors"] == [
        {"message": "The job's context has no 'n'", "code": "invalid_data"}
    ]
    assert not done.is_retryable
    assert done.context == {"path": "unused"} and type(done.context) is dict


def test_a_run_reads_its_context_as_a_mapping_whose_missing_keys_are_input_errors() -> None:
    run = JobRun(BatchJob(id="batch_1", type="t", status=Status.CREATED, context={"a": 1}))
    assert run.job.context["a"] == 1 and run.job.context.get("b", 2) == 2
    with pytest.raises(MissingContextKeyError, match=r"^The job's context has no 'b'$") as caught:
        run.job.context["b"]
    assert isinstance(caught.value, KeyError) and isinstance(caught.value, InvalidDataError)
    assert json.loads(json.dumps(run.job.context)) == {"a": 1}


def test_failing_chunk_without_retry_fails_and_retry_resumes_from_the_checkpoint(
    jobs: BatchJobs, tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger.txt"
    job = jobs.create("ledger", {"n": 50, "fail_at": 30, "ledger": str(ledger), "cursor": True})
    jobs.run_until_idle(timeout=10)
    failed = jobs.retrieve(job.id)
    assert failed.status == Status.FAILED
    assert failed.result["advancement_count"] == 30
    assert failed.result["errors"] == [{"message": "chunk at 30 failed", "code": "RuntimeError"}]
    assert failed.result["error_count"] == 1

    jobs.update(job.id, context={"fail_at": None})
    retried = jobs.retry(job.id)
    assert retried.status == Status.CONFIRMED and retried.failed_at is None
    jobs.run_until_idle(timeout=10)
    done = jobs.retrieve(job.id)
    assert done.status == Status.COMPLETED
    # Nothing repeated, nothing lost; the cursor came back as it was saved.
    assert read_ledger(ledger) == [str(i) for i in range(50)]


def test_a_job_that_failed_before_pre_processing_retries_from_created(jobs: BatchJobs) -> None:
    job = jobs.create("broken")
    jobs.run_until_idle(timeout=10)
    retried = jobs.retry(job.id)
    assert retried.status == Status.CREATED


def test_should_retry_records_the_error_and_resumes_after_the_backoff(
    jobs: BatchJobs, tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger.txt"
    with freeze_time("2026-03-01 12:00:00") as clock:
        job = jobs.create(
            "ledger", {"n": 30, "fail_at": 20, "retry": True, "max_retry": 2, "ledger": str(ledger)}
        )
        jobs.run_next()
        waiting = jobs.retrieve(job.id)
        assert waiting.status == Status.PROCESSING
        assert waiting.context["retry_count"] == 1
        assert waiting.result["errors"][0]["message"] == "chunk at 20 failed"
        assert jobs.run_next() is None  # backing off for 1 s
        clock.tick(timedelta(seconds=1))
        jobs.run_next()
        assert jobs.retrieve(job.id).context["retry_count"] == 2
        clock.tick(timedelta(seconds=1))
        assert jobs.run_next() is None  # the second backoff is 2 s
        clock.tick(timedelta(seconds=1))
        jobs.run_next()  # retry_count == max_retry: this failure is final
        done = jobs.retrieve(job.id)
    assert done.status == Status.FAILED
    assert done.result["error_count"] == 3
    assert done.result["advancement_count"] == 20
    assert read_ledger(ledger) == [str(i) for i in range(20)]


def test_retry_after_automatic_retries_succeeds(jobs: BatchJobs) -> None:
    calls: list[int] = []

    class Flaky(Ledger):
        def process_chunk(self, run: JobRun, start: int, size: int) -> int:
            calls.append(start)
            if len(calls) == 2:
                raise ConnectionError("flaky")
            return super().process_chunk(run, start, size)

        def should_retry(self, run: JobRun, error: Exception) -> bool:
            return isinstance(error, ConnectionError)

    jobs.register(Flaky)
    with freeze_time("2026-03-01 12:00:00") as clock:
        job = jobs.create("ledger", {"n": 25})
        jobs.run_next()
        clock.tick(timedelta(seconds=1))
        jobs.run_next()
    done = jobs.retrieve(job.id)
    assert done.status == Status.COMPLETED
    assert calls == [0, 10, 10, 20]
    assert done.result["errors"] == [{"message": "flaky", "code": "ConnectionError"}]


def test_a_job_left_processing_by_a_dead_worker_resumes_after_its_lease(
    make_jobs: Any, tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger.txt"
    dead = make_jobs(lease_seconds=10)

    class Dies(Ledger):
        def process_chunk(self, run: JobRun, start: int, size: int) -> int:
            done = super().process_chunk(run, start, size)
            if start == 20:
                raise SystemExit  # the worker dies after the work, before the checkpoint
            return done

    dead.register(Dies)
    with freeze_time("2026-03-01 12:00:00") as clock:
        job = dead.create("ledger", {"n": 40, "ledger": str(ledger), "cursor": True})
        with pytest.raises(SystemExit):
            dead.run_next()
        alive = make_jobs(lease_seconds=10)
        assert alive.run_next() is None  # the lease still holds
        clock.tick(timedelta(seconds=10))
        alive.run_next()
    done = alive.retrieve(job.id)
    assert done.status == Status.COMPLETED
    lines = read_ledger(ledger)
    assert sorted(set(lines), key=int) == [str(i) for i in range(40)]
    assert len(lines) == 50  # exactly one chunk (20..29) ran twice


def test_max_attempts_fails_a_job_whose_worker_keeps_dying(make_jobs: Any) -> None:
    class Poison(Ledger):
        def process_chunk(self, run: JobRun, start: int, size: int) -> int:
            raise SystemExit

    with freeze_time("2026-03-01 12:00:00") as clock:
        jobs = make_jobs(lease_seconds=1, max_attempts=2)
        jobs.register(Poison)
        job = jobs.create("ledger", {"n": 10})
        for _ in range(3):  # the first claim and two takeovers
            with pytest.raises(SystemExit):
                jobs.run_next()
            clock.tick(timedelta(seconds=1))
        jobs.run_next()
    done = jobs.retrieve(job.id)
    assert done.status == Status.FAILED
    assert done.result["errors"][-1]["code"] == "max_attempts_exceeded"
    assert "taken over 3 times" in done.result["errors"][-1]["message"]


def test_lease_is_renewed_by_the_heartbeat(make_jobs: Any) -> None:
    jobs = make_jobs(lease_seconds=30)
    job = jobs.create("ledger", {"n": 10})
    claim = jobs.runner.claim_next()
    assert claim is not None and claim.job.id == job.id
    jobs.runner.leases.hold(claim.lease)  # as run_claim does
    later = utcnow() + timedelta(seconds=20)
    assert jobs.runner.renew_leases(now=later) == 1
    other = make_jobs(lease_seconds=30)
    assert other.runner.claim_next(now=later + timedelta(seconds=29)) is None
    assert other.runner.claim_next(now=later + timedelta(seconds=31)) is not None


def test_run_until_idle_times_out_on_a_job_leased_elsewhere(make_jobs: Any) -> None:
    holder, waiter = make_jobs(lease_seconds=60), make_jobs(lease_seconds=60)
    holder.create("ledger", {"n": 10})
    assert holder.runner.claim_next() is not None
    with pytest.raises(TimeoutError, match="1 batch job"):
        waiter.run_until_idle(timeout=0.2)


def test_list_and_count_filters_and_pages(jobs: BatchJobs) -> None:
    with freeze_time("2026-01-01") as clock:
        ids = []
        for i in range(5):
            ids.append(
                jobs.create("words", {"words": []}, created_by=f"usr_{i % 2}", dry_run=i == 4).id
            )
            clock.tick(timedelta(days=1))
        jobs.create("ledger", {"n": 1})
        jobs.run_until_idle(timeout=10)
    page, count = jobs.list_and_count(limit=2)
    assert count == 6 and len(page) == 2
    assert page[0].type == "ledger" and page[1].id == ids[4]  # newest first
    page, count = jobs.list_and_count(type="words", order="created_at", limit=2, offset=1)
    assert count == 5 and [j.id for j in page] == ids[1:3]
    assert jobs.list_and_count(created_by="usr_1")[1] == 2
    assert jobs.list_and_count(created_by=["usr_0", "usr_1"])[1] == 5
    assert jobs.list_and_count(status="pre_processed")[0][0].id == ids[4]
    assert jobs.list_and_count(status=["completed", "pre_processed"])[1] == 6
    assert jobs.list_and_count(confirmed_at=None)[1] == 1
    assert jobs.list_and_count(created_at={"gte": "2026-01-02", "lt": "2026-01-04"})[1] == 2
    assert jobs.list_and_count(created_at={"gt": "2026-01-05T00:00:00Z"})[1] == 1
    assert [j.id for j in jobs.list_and_count(id=[ids[0], ids[3]])[0]] == [ids[3], ids[0]]
    assert jobs.list_and_count(id=ids[2])[0][0].id == ids[2]
    assert jobs.list_and_count(completed_at=None)[0][0].id == ids[4]
    assert jobs.list_and_count(completed_at={"lte": "2026-01-07"}, failed_at=None)[1] == 5
    assert jobs.list_and_count(pre_processed_at={"gte": "2026-01-01"}, confirmed_at=None)[1] == 1
    assert jobs.list_and_count(canceled_at={"gt": "2000-01-01"})[1] == 0
    assert [j.id for j in jobs.list_and_count(order="created_by", type="words")[0]][:3] == [
        ids[0],
        ids[2],
        ids[4],
    ]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"limit": -1}, "limit must be a non-negative integer"),
        ({"order": "-context"}, "order must be one of"),
        ({"status": "done"}, "unknown status 'done'"),
        ({"color": "red"}, "cannot filter on 'color'"),
        ({"created_at": {"after": "2026"}}, "created_at: unknown operator 'after'"),
        ({"created_at": {"gt": "yesterday"}}, "created_at: 'yesterday' is not an ISO 8601 date"),
    ],
)
def test_list_and_count_refuses_bad_filters(
    jobs: BatchJobs, kwargs: dict[str, Any], message: str
) -> None:
    from batchjobs import InvalidDataError

    with pytest.raises(InvalidDataError, match=message):
        jobs.list_and_count(**kwargs)


def commits_of(statements: list[str]) -> int:
    """How many transactions the traced statements committed."""
    commits, in_transaction = 0, False
    # A statement that fires triggers is traced once more per trigger step.
    statements = [sql for i, sql in enumerate(statements) if i == 0 or sql != statements[i - 1]]
    for sql in statements:
        head = sql.lstrip().split(" ", 1)[0].upper()
        if head == "BEGIN":
            in_transaction = True
        elif head == "COMMIT":
            commits, in_transaction = commits + 1, False
        elif not in_transaction and re.match(r"(INSERT INTO|UPDATE|DELETE FROM) batch_jobs ", sql):
            commits += 1  # a statement of its own is its own transaction (triggers ride along)
    return commits


@pytest.fixture
def short_jobs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every job counts as short, however loaded the machine is."""
    monkeypatch.setattr("batchjobs.runner.claims.SHORT_JOB", 60.0)


@pytest.mark.backends("sqlite")  # counts SQLite's statements
@pytest.mark.usefixtures("short_jobs")
def test_jobs_run_back_to_back_share_their_commits(jobs: BatchJobs) -> None:
    statements: list[str] = []
    jobs.store.db.conn.set_trace_callback(statements.append)
    created = [jobs.create("ledger", {"n": 5}) for _ in range(10)]
    assert commits_of(statements) == 10
    statements.clear()
    assert jobs.runner.drain() == 10
    # Claims of 1, 2, 4 and the last 3: each commit ends a batch and claims the next.
    assert commits_of(statements) == 5
    for job in created:
        done = jobs.retrieve(job.id)
        assert done.status == Status.COMPLETED
        assert None not in (done.pre_processed_at, done.confirmed_at, done.processing_at)


@pytest.mark.backends("sqlite")  # counts SQLite's statements
@pytest.mark.usefixtures("short_jobs")
def test_a_job_that_waited_behind_a_slow_one_reads_its_own_lease_alone(jobs: BatchJobs) -> None:
    # Before a job that waited in its batch starts, a read says it is still ours; once
    # two jobs in a row ran longer than STILL_OURS_FOR, that read's answers for the jobs
    # waiting behind would be too old by their turn, so it asks for the one job starting.
    assert STILL_OURS_FOR < 0.01
    statements: list[str] = []
    created = [jobs.create("ledger", {"n": 1, "sleep": 0.01}) for _ in range(7)]
    jobs.store.db.conn.set_trace_callback(statements.append)
    assert jobs.runner.drain() == 7  # batches of 1, 2 and 4
    reads = [sql for sql in statements if sql.startswith("SELECT status") and "lease = " in sql]
    assert len(reads) == 1 + 3  # one a job that waited (it was 1 + 3 + 2 + 1 leases)
    assert all(jobs.retrieve(job.id).status == Status.COMPLETED for job in created)


@pytest.mark.usefixtures("short_jobs")
def test_jobs_behind_one_slow_job_still_share_a_read(
    jobs: BatchJobs, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One job longer than STILL_OURS_FOR among quick ones (a thread descheduled under
    # load): the read after it still answers for every job waiting behind.
    monkeypatch.setattr("batchjobs.runner.claims.STILL_OURS_FOR", 0.05)  # quick: under it
    created = [jobs.create("ledger", {"n": 1, "sleep": 0.06 if i == 3 else 0}) for i in range(7)]
    asked: list[list[str]] = []
    holding = jobs.store.holding

    def noting(leases: Any) -> Any:
        asked.append([lease.id for lease in leases])
        return holding(leases)

    monkeypatch.setattr(jobs.store, "holding", noting)
    assert jobs.runner.drain() == 7  # batches of 1, 2 and 4; the slow one starts the 4
    ids = [job.id for job in created]
    assert asked == [[ids[2]], ids[4:]]
    assert all(jobs.retrieve(job.id).status == Status.COMPLETED for job in created)


@pytest.mark.backends("sqlite")  # counts SQLite's statements
def test_a_drain_soon_after_another_claims_a_new_job_without_reading_the_owners_again(
    jobs: BatchJobs,
) -> None:
    statements: list[str] = []
    jobs.store.db.conn.set_trace_callback(statements.append)

    def owner_reads() -> int:
        return sum("SELECT DISTINCT owner" in statement for statement in statements)

    with freeze_time(utcnow(), tick=False):  # within OWNERS_FOR of each other
        jobs.create("ledger", {"n": 1})
        assert jobs.runner.drain() == 1 and owner_reads() == 1
        statements.clear()
        jobs.create("ledger", {"n": 1})
        assert jobs.runner.drain() == 1 and owner_reads() == 0
        statements.clear()
        # Nothing runnable: looked for again with the owners read now (a process that
        # died since may have left a job).
        assert jobs.runner.drain() == 0 and owner_reads() == 1


@pytest.mark.parametrize("retry", [False, True])
def test_a_failed_chunk_leaves_no_trace_but_its_error(jobs: BatchJobs, retry: bool) -> None:
    class Sloppy(Ledger):
        def process_chunk(self, run: JobRun, start: int, size: int) -> int:
            if start == 10 and "failed_once" not in run.job.context:
                run.cursor["next"] = 999  # moved before failing
                run.result["half_done"] = True
                raise RuntimeError("half way")
            return super().process_chunk(run, start, size)

        def should_retry(self, run: JobRun, error: Exception) -> bool:
            return retry

    jobs.register(Sloppy)
    with freeze_time("2026-03-01 12:00:00") as clock:
        job = jobs.create("ledger", {"n": 15, "cursor": True})  # checks cursor == start
        jobs.run_next()
        stopped = jobs.retrieve(job.id)
        assert stopped.status == (Status.PROCESSING if retry else Status.FAILED)
        assert stopped.result["advancement_count"] == 10
        assert "half_done" not in stopped.result
        assert stopped.result["count"] == 15  # pre_process's output stays
        jobs.update(job.id, context={"failed_once": True})
        if not retry:
            jobs.retry(job.id)
        clock.tick(timedelta(seconds=1))
        jobs.run_next()
    done = jobs.retrieve(job.id)
    assert done.status == Status.COMPLETED, done.result
    assert [e["message"] for e in done.result["errors"]] == ["half way"]


def test_a_first_chunk_failure_keeps_what_pre_process_found(jobs: BatchJobs) -> None:
    job = jobs.create("ledger", {"n": 5, "fail_at": 0})  # one chunk: nothing saved before it
    jobs.run_until_idle(timeout=10)
    failed = jobs.retrieve(job.id)
    assert failed.status == Status.FAILED
    assert failed.result["count"] == 5 and failed.pre_processed_at is not None


@pytest.mark.parametrize("ending", ["completed", "failed", "canceled"])
def test_what_a_run_keeps_open_is_closed_however_it_ends(jobs: BatchJobs, ending: str) -> None:
    opened: list[Any] = []

    class Resource:
        closed = False

        def close(self) -> None:
            self.closed = True

    class Keeping(Ledger):
        def process_chunk(self, run: JobRun, start: int, size: int) -> int:
            if "resource" not in run.state:
                run.state["resource"] = run.closing(Resource())
                opened.append(run.state["resource"])
            assert not run.state["resource"].closed
            if start == 10 and ending == "failed":
                raise RuntimeError("boom")
            if start == 10 and ending == "canceled":
                jobs.cancel(run.job.id)
            return super().process_chunk(run, start, size)

    jobs.register(Keeping)
    job = jobs.create("ledger", {"n": 30})
    jobs.run_until_idle(timeout=10)
    assert jobs.retrieve(job.id).status == Status(ending)
    assert len(opened) == 1 and opened[0].closed


def test_canceling_a_job_nobody_runs_cleans_up_here(make_jobs: Any) -> None:
    cleaned: list[tuple[str, dict[str, Any]]] = []

    class Tidy(Ledger):
        def on_cancel(self, run: JobRun) -> None:
            cleaned.append((run.job.id, run.cursor))

    jobs = make_jobs(lease_seconds=60)
    jobs.register(Tidy)
    handed, held = (jobs.create("ledger", {"n": 100, "cursor": True}) for _ in range(2))
    jobs.runner.stopping.set()  # each hands its job over at once
    jobs.run_next()
    jobs.run_next()
    jobs.runner.stopping.clear()
    claim = jobs.runner.claim_next(ids=[held.id])
    assert claim is not None  # a live lease: its worker would clean up at its checkpoint
    never = jobs.create("ledger", {"n": 100})
    for job in (handed, held, never):
        jobs.cancel(job.id)
    assert cleaned == [(handed.id, {})]  # handed over before its first chunk


def test_on_cancel_runs_only_for_a_job_whose_processing_began(jobs: BatchJobs) -> None:
    cleaned: list[str] = []

    class CanceledEarly(Ledger):
        def pre_process(self, run: JobRun) -> None:
            super().pre_process(run)
            if run.job.context["cancel_in"] == "pre_process":
                jobs.cancel(run.job.id)

        def process_chunk(self, run: JobRun, start: int, size: int) -> int:
            if run.job.context["cancel_in"] == "chunk":
                jobs.cancel(run.job.id)
            return super().process_chunk(run, start, size)

        def on_cancel(self, run: JobRun) -> None:
            cleaned.append(run.job.id)

    jobs.register(CanceledEarly)
    # Two chunks: its checkpoint before the first chunk finds the cancel; it never processed.
    early = jobs.create("ledger", {"n": 20, "cancel_in": "pre_process"})
    # One chunk: it processed, and no commit said so before its last checkpoint found the cancel.
    late = jobs.create("ledger", {"n": 5, "cancel_in": "chunk"})
    jobs.run_until_idle(timeout=10)
    assert [jobs.retrieve(j.id).status for j in (early, late)] == [Status.CANCELED] * 2
    assert jobs.retrieve(early.id).processing_at is None
    assert cleaned == [late.id]
    assert jobs.store.holder(early.id) is None and jobs.store.holder(late.id) is None
    assert jobs.store.pending(["ledger"]) == (0, None)


@pytest.mark.usefixtures("short_jobs")
def test_a_long_job_gives_its_batch_back_to_other_workers(make_jobs: Any, tmp_path: Path) -> None:
    first, second = make_jobs(), make_jobs()
    blocked, release = threading.Event(), threading.Event()

    class Long(Ledger):
        def process_chunk(self, run: JobRun, start: int, size: int) -> int:
            if run.job.context["n"] > 10 and start == 10:
                blocked.set()
                release.wait(10)
            return super().process_chunk(run, start, size)

    first.register(Long)
    before = [first.create("ledger", {"n": 5}) for _ in range(3)]  # batches of 1, then 2
    long = first.create("ledger", {"n": 20})  # in a batch of 4 with 3 of the next
    shorts = [first.create("ledger", {"n": 5}) for _ in range(5)]
    runner = threading.Thread(target=first.runner.drain)
    runner.start()
    try:
        assert blocked.wait(5)
        # The long job's first checkpoint gave back the 3 jobs claimed with it.
        assert [first.store.holder(j.id) for j in shorts[:3]] == [None] * 3
        assert second.runner.drain() == 5
        assert all(second.retrieve(j.id).status == Status.COMPLETED for j in shorts)
    finally:
        release.set()
        runner.join(10)
    assert first.retrieve(long.id).status == Status.COMPLETED
    assert all(first.retrieve(j.id).status == Status.COMPLETED for j in before)


def test_stopping_mid_batch_saves_what_ran_and_gives_back_the_rest(jobs: BatchJobs) -> None:
    stops = [True]

    class Stops(Ledger):
        def process_chunk(self, run: JobRun, start: int, size: int) -> int:
            if stops:  # a shutdown while the batch's first job runs
                jobs.runner.stopping.set()
                stops.clear()
            return super().process_chunk(run, start, size)

    jobs.register(Stops)
    created = [jobs.create("ledger", {"n": 5}) for _ in range(4)]
    assert jobs.runner.drain() == 1
    jobs.runner.stopping.clear()
    statuses = [jobs.retrieve(j.id).status for j in created]
    assert statuses == [Status.COMPLETED] + [Status.CREATED] * 3
    assert jobs.runner.store.holder(created[1].id) is None  # released, not leased
    assert jobs.runner.drain() == 3


@pytest.mark.usefixtures("short_jobs")
def test_the_heartbeat_renews_jobs_waiting_in_a_batch(make_jobs: Any) -> None:
    jobs = make_jobs(lease_seconds=30)
    seen: list[int] = []

    class Beats(Ledger):
        def process_chunk(self, run: JobRun, start: int, size: int) -> int:
            seen.append(jobs.runner.renew_leases())
            return super().process_chunk(run, start, size)

    jobs.register(Beats)
    for _ in range(3):
        jobs.create("ledger", {"n": 5})
    assert jobs.runner.drain() == 3
    # Batches of 1 and 2: the running job, those waiting to start or to be saved.
    assert seen == [1, 2, 2]


@pytest.mark.backends("sqlite")  # counts SQLite's statements
def test_slow_jobs_are_claimed_one_at_a_time(
    jobs: BatchJobs, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("batchjobs.runner.claims.SHORT_JOB", 0.0)  # every job counts as slow
    for _ in range(5):
        jobs.create("ledger", {"n": 5})
    statements: list[str] = []
    jobs.store.db.conn.set_trace_callback(statements.append)
    assert jobs.runner.drain() == 5
    assert commits_of(statements) == 6  # the first claim, then one per job
    claims = [sql for sql in statements if sql.startswith("UPDATE batch_jobs SET owner")]
    assert claims and all("LIMIT 1) AND NOT EXISTS" in sql for sql in claims)


@pytest.mark.usefixtures("short_jobs")
def test_a_job_canceled_while_waiting_in_a_batch_never_starts(
    jobs: BatchJobs, tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger.txt"
    first = jobs.create("ledger", {"n": 1})  # a batch of 1; the next claim takes 2
    later: list[Any] = []

    class Cancels(Ledger):
        def process_chunk(self, run: JobRun, start: int, size: int) -> int:
            if later and run.job.id == later[0].id:
                jobs.cancel(later[1].id)  # the second waits in this batch, claimed by us
            return super().process_chunk(run, start, size)

    jobs.register(Cancels)
    later.extend(
        jobs.create("ledger", {"n": 5, "ledger": str(ledger), "tagged": True}) for _ in range(2)
    )
    assert jobs.runner.drain() == 2  # the first job, then the first of the batch of 2
    assert jobs.retrieve(first.id).status == Status.COMPLETED
    assert jobs.retrieve(later[0].id).status == Status.COMPLETED
    canceled = jobs.retrieve(later[1].id)
    assert canceled.status == Status.CANCELED and canceled.pre_processed_at is None
    assert all(line.startswith(later[0].id) for line in read_ledger(ledger))
    assert jobs.store.holder(later[1].id) is None  # not left leased


@pytest.mark.parametrize("wait", [True, False])
def test_jobs_run_here_after_the_workers_were_shut_down(jobs: BatchJobs, wait: bool) -> None:
    jobs.start()
    jobs.shutdown(wait=wait)
    job = jobs.create("ledger", {"n": 30})
    jobs.run_until_idle(timeout=5)  # the workers' stop is not this thread's
    assert jobs.retrieve(job.id).status == Status.COMPLETED
    again = jobs.create("ledger", {"n": 30})
    assert jobs.run_next() is not None
    assert jobs.retrieve(again.id).status == Status.COMPLETED


def test_run_runs_one_job_here_and_reports_its_progress(jobs: BatchJobs) -> None:
    other = jobs.create("ledger", {"n": 5})
    job = jobs.create("ledger", {"n": 35})
    seen: list[tuple[str, int]] = []
    done = jobs.run(
        job.id,
        on_progress=lambda j: seen.append((j.status.value, j.result.get("advancement_count", 0))),
    )
    assert done.status == Status.COMPLETED and done == jobs.retrieve(job.id)
    assert seen[-1] == ("completed", 35) and ("processing", 20) in seen
    assert jobs.retrieve(other.id).status == Status.CREATED  # only its own job


def test_run_stops_at_a_checkpoint_when_asked_and_hands_the_job_over(jobs: BatchJobs) -> None:
    stop = threading.Event()
    job = jobs.create("ledger", {"n": 100})

    def progress(current: Any) -> None:
        if current.result.get("advancement_count") == 20:
            stop.set()

    stopped = jobs.run(job.id, on_progress=progress, stop=stop)
    assert stopped.status == Status.PROCESSING and stopped.result["advancement_count"] == 20
    assert jobs.store.holder(job.id) is None
    assert jobs.run(job.id).status == Status.COMPLETED  # resumed from the checkpoint


def test_run_of_an_unknown_job_is_not_found(jobs: BatchJobs) -> None:
    from batchjobs import NotFoundError

    with pytest.raises(NotFoundError, match="batch_nope was not found"):
        jobs.run("batch_nope")


def test_wait_until_idle_gives_up_on_a_database_that_keeps_failing(make_jobs: Any) -> None:
    from batchjobs.errors import StoreReadOnlyError
    from batchjobs.testing import Faults

    jobs = make_jobs(poll_interval=0.02)
    job = jobs.create("ledger", {"n": 5})
    with Faults(jobs).read_only():
        jobs.start()
        with pytest.raises(StoreReadOnlyError, match="read-only"):
            jobs.wait_until_idle(timeout=10, give_up_after=0.2)
    assert jobs.wait_until_idle(timeout=10)
    assert jobs.retrieve(job.id).status == Status.COMPLETED
    jobs.shutdown()
    stop = threading.Event()
    jobs.create("ledger", {"n": 5})
    stop.set()
    assert jobs.wait_until_idle(stop=stop) is False  # no worker runs: it stops when asked


def test_start_takes_new_settings_and_checks_them(jobs: BatchJobs) -> None:
    with pytest.raises(ValueError, match="concurrency must be a positive integer, not 0"):
        jobs.start(concurrency=0)
    assert jobs.scheduler is None and jobs.concurrency == 2
    jobs.start(concurrency=3, poll_interval=0.5)
    assert (jobs.concurrency, jobs.poll_interval) == (3, 0.5)
    with pytest.raises(RuntimeError, match="shutdown"):
        jobs.start(concurrency=1)
    jobs.shutdown()


FORKS = """
import json, os, sys
from batchjobs import BatchJobs
from tests.strategies import Ledger

jobs = BatchJobs(sys.argv[1], lease_seconds=60)
jobs.register(Ledger)
first, second = jobs.create("ledger", {"n": 1}), jobs.create("ledger", {"n": 1})
ran = jobs.runner.run_next(ids=[first.id])  # this process has claimed: it shows it lives
pid = os.fork()
if pid == 0:  # the child claims with the runner it inherited, then dies holding the lease
    claim = jobs.runner.claim_next(ids=[second.id])
    print(json.dumps({"pid": os.getpid(), "owner": jobs.runner.owner,
                      "holder": jobs.store.holder(second.id).owner}), flush=True)
    os._exit(0)
os.waitpid(pid, 0)
taken = jobs.runner.claim_next(ids=[second.id])  # a dead holder of this host: taken at once
print(json.dumps({"pid": os.getpid(), "owner": jobs.runner.owner,
                  "ran": ran.status.value, "taken": taken is not None}), flush=True)
jobs.close()
"""


def test_a_process_forked_after_batch_jobs_was_built_holds_leases_under_its_own_name(
    tmp_path: Path,
) -> None:
    done = subprocess.run(
        [sys.executable, "-c", FORKS, str(tmp_path / "jobs.db")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    child, parent = (json.loads(line) for line in done.stdout.splitlines())
    assert parent["ran"] == "completed"
    assert child["holder"] == child["owner"] != parent["owner"]
    assert child["owner"].split(":")[1] == str(child["pid"])  # named after its own pid
    # The child died holding its lease: the parent sees a dead holder of its host,
    # not its own name, and takes the job over at once (its lease had 60 s to run).
    assert parent["taken"]

"""The lifecycle through the façade: transitions, messages, events, timestamps."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from freezegun import freeze_time

from batchjobs import (
    BatchJob,
    BatchJobError,
    BatchJobs,
    InvalidDataError,
    NotAllowedError,
    NotFoundError,
    Status,
    signals,
)

pytestmark = pytest.mark.backends("sqlite", "postgres")


def record_events(jobs: BatchJobs) -> list[tuple[str, str]]:
    seen: list[tuple[str, str]] = []
    for event in signals.EVENTS:
        jobs.subscribe(
            event, lambda sender, job, event=event, **kw: seen.append((event, job.status.value))
        )
    return seen


def test_full_lifecycle_sets_every_timestamp_and_emits_every_event(jobs: BatchJobs) -> None:
    seen = record_events(jobs)
    with freeze_time("2026-01-02 03:04:05"):
        job = jobs.create("words", {"words": ["a", "b", "c"]}, created_by="usr_1")
        assert job.status == Status.CREATED
        assert job.id.startswith("batch_") and len(job.id) == 32
        jobs.run_until_idle(timeout=10)
    done = jobs.retrieve(job.id)
    at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    assert done.status == Status.COMPLETED
    assert (done.created_at, done.pre_processed_at, done.confirmed_at) == (at, at, at)
    assert (done.processing_at, done.completed_at, done.updated_at) == (at, at, at)
    assert done.canceled_at is None and done.failed_at is None
    assert done.result["count"] == 3 and done.result["advancement_count"] == 3
    assert done.result["progress"] == 1.0
    assert done.result["stat_descriptors"][0]["message"] == "3 words"
    assert seen == [
        ("batch.created", "created"),
        ("batch.pre_processed", "pre_processed"),
        ("batch.confirmed", "confirmed"),
        ("batch.processing", "processing"),
        ("batch.updated", "processing"),  # count and stat_descriptors saved
        ("batch.updated", "processing"),  # checkpoint after chunk 1 (of 2)
        ("batch.updated", "processing"),  # the last chunk, saved with completion
        ("batch.completed", "completed"),
    ]


def test_to_dict_is_the_medusa_shape(jobs: BatchJobs) -> None:
    with freeze_time("2026-01-02 03:04:05"):
        job = jobs.create("words", {"words": []}, dry_run=True)
    data = job.to_dict()
    assert list(data) == [
        "id",
        "type",
        "status",
        "created_by",
        "dry_run",
        "context",
        "result",
        "created_at",
        "updated_at",
        "pre_processed_at",
        "confirmed_at",
        "processing_at",
        "completed_at",
        "canceled_at",
        "failed_at",
        "deleted_at",
        "paused_at",  # an extension: Medusa has no pause
    ]
    assert data["status"] == "created" and data["dry_run"] is True
    assert data["created_at"] == "2026-01-02T03:04:05+00:00"
    assert data["context"] == {"words": []} and data["result"] == {}


def test_dry_run_waits_in_pre_processed_until_confirmed(jobs: BatchJobs) -> None:
    job = jobs.create("words", {"words": ["x", "y", "z"]}, dry_run=True)
    jobs.run_until_idle(timeout=10)
    preview = jobs.retrieve(job.id)
    assert preview.status == Status.PRE_PROCESSED
    assert preview.confirmed_at is None
    assert preview.result["stat_descriptors"] == [
        {"key": "words", "name": "Words", "message": "3 words"}
    ]
    assert "shouted" not in preview.result
    confirmed = jobs.confirm(job.id)
    assert confirmed.status == Status.CONFIRMED and confirmed.confirmed_at is not None
    jobs.run_until_idle(timeout=10)
    done = jobs.retrieve(job.id)
    assert done.status == Status.COMPLETED
    assert done.result["shouted"] == ["X", "Y", "Z"]


def test_confirm_refuses_a_job_that_is_not_pre_processed(jobs: BatchJobs) -> None:
    job = jobs.create("words", {"words": ["a"]})
    with pytest.raises(NotAllowedError) as caught:
        jobs.confirm(job.id)
    assert caught.value.message == (
        "Cannot confirm processing for a batch job that is not pre processed"
    )
    assert caught.value.type == "not_allowed"
    assert jobs.retrieve(job.id).status == Status.CREATED


def test_unknown_id_is_not_found_everywhere(jobs: BatchJobs) -> None:
    for operation in (
        jobs.retrieve,
        jobs.confirm,
        jobs.cancel,
        jobs.retry,
        lambda id: jobs.update(id, result={"a": 1}),
    ):
        with pytest.raises(NotFoundError) as caught:
            operation("batch_nope")
        assert caught.value.message == "Batch job with id batch_nope was not found"
        assert caught.value.type == "not_found"
        assert isinstance(caught.value, BatchJobError)


def test_cancel_rules(jobs: BatchJobs) -> None:
    waiting = jobs.create("words", {"words": ["a"]}, dry_run=True)
    canceled = jobs.cancel(waiting.id)
    assert canceled.status == Status.CANCELED and canceled.canceled_at is not None
    assert jobs.cancel(waiting.id) == canceled  # canceling again changes nothing

    completed = jobs.create("words", {"words": ["a"]})
    failed = jobs.create("broken")
    jobs.run_until_idle(timeout=10)
    with pytest.raises(NotAllowedError, match="^Cannot cancel completed batch job$"):
        jobs.cancel(completed.id)
    with pytest.raises(NotAllowedError, match="^Cannot cancel failed batch job$"):
        jobs.cancel(failed.id)
    assert jobs.retrieve(completed.id).status == Status.COMPLETED
    assert jobs.retrieve(failed.id).status == Status.FAILED


def test_retry_refuses_a_job_that_is_not_failed(jobs: BatchJobs) -> None:
    job = jobs.create("words", {"words": ["a"]})
    with pytest.raises(NotAllowedError, match="^Cannot retry a batch job that is not failed$"):
        jobs.retry(job.id)
    assert jobs.retrieve(job.id).status == Status.CREATED


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        (
            ("nope", {}),
            {},
            "Unknown batch job type 'nope'; registered types: broken, csv-export, csv-import, "
            "ledger, uncounted, words",
        ),
        (("words", ["a"]), {}, "context must be a JSON object, not list"),
        (("words", {"words": [object()]}), {}, "context.words[0] is of type object, which JSON"),
        (("words", {"words": []}), {"dry_run": "yes"}, "dry_run must be a boolean"),
        (("words", {"words": []}), {"created_by": 7}, "created_by must be a string"),
        (("words", {"words": "abc"}), {}, "context.words must be a list of strings"),
        ((42, {}), {}, "type must be a string"),
        (("words", {"words": []}), {"key": ""}, "key must be 1 to 255 characters, not 0"),
        (("words", {"words": []}), {"key": "k" * 256}, "key must be 1 to 255 characters, not 256"),
        (("words", {"words": []}), {"key": 7}, "key must be a string, not int"),
        (("words", {"words": []}), {"key": "k", "created_by": 7}, "created_by must be a string"),
    ],
)
def test_bad_input_is_refused_and_writes_nothing(
    jobs: BatchJobs, args: tuple[Any, ...], kwargs: dict[str, Any], message: str
) -> None:
    created: list[BatchJob] = []
    jobs.subscribe("batch.created", lambda sender, job, **kw: created.append(job))
    with pytest.raises(InvalidDataError) as caught:
        jobs.create(*args, **kwargs)
    assert caught.value.message.startswith(message)
    assert caught.value.type == "invalid_data"
    assert jobs.store.count() == 0
    assert created == []


def test_a_key_names_one_job_of_its_creator(jobs: BatchJobs) -> None:
    created: list[BatchJob] = []
    jobs.subscribe("batch.created", lambda sender, job, **kw: created.append(job))
    job = jobs.create("words", {"words": ["a"]}, key="nightly-2026-12-01", created_by="usr_1")
    jobs.run_until_idle(timeout=10)
    # Run again (a script restarted): the same job, as it is now, and nothing new.
    again = jobs.create("words", {"words": ["b"]}, key="nightly-2026-12-01", created_by="usr_1")
    assert again == jobs.retrieve(job.id) and again.status == Status.COMPLETED
    assert [j.id for j in created] == [job.id] and jobs.store.count() == 1
    # Another creator's key, and no key at all, are other jobs.
    theirs = jobs.create("words", {"words": ["a"]}, key="nightly-2026-12-01", created_by="usr_2")
    assert theirs.id != job.id and jobs.create("words", {"words": ["a"]}).id != job.id
    assert jobs.store.count() == 3


def test_a_key_reused_for_another_type_is_refused(jobs: BatchJobs) -> None:
    job = jobs.create("words", {"words": ["a"]}, key="k1")
    with pytest.raises(InvalidDataError) as caught:
        jobs.create("ledger", {"n": 1}, key="k1")
    assert caught.value.message == f"key 'k1' belongs to {job.id}, a words job, not a ledger job"
    assert jobs.store.count() == 1


def test_a_found_key_returns_its_job_without_running_prepare(jobs: BatchJobs) -> None:
    job = jobs.create("words", {"words": ["a"]}, key="k1")
    # words' prepare() would refuse this context: it is not looked at.
    assert jobs.create("words", {"words": "not a list"}, key="k1") == job


def test_update_merges_context_and_result_shallowly(jobs: BatchJobs) -> None:
    job = jobs.create("words", {"words": ["a"], "opts": {"x": 1, "y": 2}}, dry_run=True)
    updates: list[BatchJob] = []
    jobs.subscribe("batch.updated", lambda sender, job, **kw: updates.append(job))
    updated = jobs.update(job.id, context={"opts": {"x": 9}}, result={"note": "hi"})
    assert updated.context == {"words": ["a"], "opts": {"x": 9}}
    assert updated.result == {"note": "hi"}
    assert jobs.retrieve(job.id).context == updated.context
    assert [u.id for u in updates] == [job.id]
    with pytest.raises(InvalidDataError, match="result must be a JSON object"):
        jobs.update(job.id, result=[1])  # type: ignore[arg-type]
    assert jobs.retrieve(job.id).result == {"note": "hi"}


def test_a_receiver_that_raises_is_logged_and_never_breaks_the_job(
    jobs: BatchJobs, caplog: pytest.LogCaptureFixture
) -> None:
    def explode(sender: Any, **kw: Any) -> None:
        raise RuntimeError("receiver bug")

    jobs.subscribe("batch.processing", explode)
    jobs.subscribe("batch.created", explode)
    job = jobs.create("words", {"words": ["a", "b", "c"]})
    jobs.run_until_idle(timeout=10)
    assert jobs.retrieve(job.id).status == Status.COMPLETED
    assert sum("receiver bug" in r.exc_text for r in caplog.records if r.exc_text) == 2


def test_signals_are_module_level_and_named_after_events(jobs: BatchJobs) -> None:
    assert signals.batch_completed.name == "batch.completed"
    got: list[str] = []

    @signals.batch_completed.connect_via(jobs)
    def on_done(sender: Any, job: BatchJob, **kw: Any) -> None:
        got.append(job.id)

    job = jobs.create("words", {"words": ["a"]})
    jobs.run_until_idle(timeout=10)
    assert got == [job.id]
    with pytest.raises(ValueError, match="unknown event 'batch.exploded'"):
        jobs.subscribe("batch.exploded", on_done)


def test_events_go_only_to_receivers_of_their_own_batchjobs(make_jobs: Any, tmp_path: Path) -> None:
    first, second = make_jobs(tmp_path / "a.db"), make_jobs(tmp_path / "b.db")
    seen: list[str] = []
    second.subscribe("batch.created", lambda sender, job, **kw: seen.append(job.id))
    first.create("words", {"words": []})
    assert seen == []
    job = second.create("words", {"words": []})
    assert seen == [job.id]


def test_strategy_without_count_ends_when_a_chunk_returns_zero(jobs: BatchJobs) -> None:
    job = jobs.create("uncounted", {"n": 7})
    jobs.run_until_idle(timeout=10)
    done = jobs.retrieve(job.id)
    assert done.status == Status.COMPLETED
    assert done.result["advancement_count"] == 7
    assert done.result["count"] == 7 and done.result["progress"] == 1.0


def test_context_chunk_size_overrides_the_strategy(jobs: BatchJobs) -> None:
    checkpoints: list[int] = []
    jobs.subscribe(
        "batch.updated",
        lambda sender, job, **kw: checkpoints.append(job.result["advancement_count"]),
    )
    job = jobs.create("ledger", {"n": 10, "chunk_size": 4})
    jobs.run_until_idle(timeout=10)
    assert checkpoints == [4, 8, 10]
    assert jobs.retrieve(job.id).status == Status.COMPLETED


def test_register_replaces_a_strategy_of_the_same_type(jobs: BatchJobs) -> None:
    from tests.strategies import Words

    @jobs.register
    class Quiet(Words):
        def process_chunk(self, run: Any, start: int, size: int) -> int:
            run.result["quiet"] = True
            return size

    assert type(jobs.strategy("words")) is Quiet
    job = jobs.create("words", {"words": ["a"]})
    jobs.run_until_idle(timeout=10)
    assert jobs.retrieve(job.id).result["quiet"] is True


def test_prepare_only_sees_checked_input(jobs: BatchJobs) -> None:
    from tests.strategies import Words

    seen: list[Any] = []

    class Recording(Words):
        def prepare(self, draft: Any) -> Any:
            seen.append(draft)
            draft.dry_run = "maybe"  # a strategy that breaks the draft is refused too
            return draft

    jobs.register(Recording)
    with pytest.raises(InvalidDataError, match="dry_run must be a boolean"):
        jobs.create("words", {"words": []}, dry_run="yes")  # type: ignore[arg-type]
    assert seen == []
    with pytest.raises(InvalidDataError, match="dry_run must be a boolean, not 'maybe'"):
        jobs.create("words", {"words": []})
    assert len(seen) == 1 and jobs.list_and_count()[1] == 0


def test_prune_deletes_old_resting_jobs_and_says_what(jobs: BatchJobs) -> None:
    from datetime import timedelta

    from freezegun import freeze_time

    with freeze_time("2026-01-01"):
        old = jobs.create("words", {"words": ["a"]})
        broken = jobs.create("broken")
        active = jobs.create("ledger", {"n": 5})
        jobs.runner.run_next(ids=[old.id])
        jobs.runner.run_next(ids=[broken.id])
    recent = jobs.create("words", {"words": ["b"]})
    jobs.runner.run_next(ids=[recent.id])
    would = jobs.prune(timedelta(days=1), dry_run=True)
    assert would.dry_run and [j.id for j in would.jobs] == [old.id, broken.id]
    assert jobs.list_and_count()[1] == 4
    pruned = jobs.prune(timedelta(days=1), statuses=["failed"])
    assert [j.id for j in pruned.jobs] == [broken.id] and pruned.files == ()
    assert jobs.prune(timedelta(days=1)).jobs[0].id == old.id
    assert {j.id for j in jobs.list_and_count()[0]} == {active.id, recent.id}


def test_prune_refuses_active_statuses_and_negative_ages(jobs: BatchJobs) -> None:
    from datetime import timedelta

    from batchjobs import InvalidDataError

    job = jobs.create("ledger", {"n": 5})
    with pytest.raises(InvalidDataError, match="only resting jobs are pruned .* not 'created'"):
        jobs.prune(timedelta(0), statuses=["created"])
    with pytest.raises(InvalidDataError, match="older_than must be a positive duration"):
        jobs.prune(timedelta(days=-1))
    assert jobs.retrieve(job.id).status == Status.CREATED

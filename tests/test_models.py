from __future__ import annotations

import dataclasses
from datetime import datetime, timezone

import pytest

from batchjobs import BatchJob, Status
from batchjobs.models import RESTING_STATUSES, new_job_id, utcnow


def test_ids_are_batch_ulids_sorted_by_creation() -> None:
    ids = [new_job_id() for _ in range(1000)]
    assert all(i.startswith("batch_") and len(i) == 32 for i in ids)
    assert ids == sorted(ids) and len(set(ids)) == 1000


def test_utcnow_is_timezone_aware_utc() -> None:
    assert utcnow().tzinfo is timezone.utc


def test_records_are_immutable() -> None:
    job = BatchJob(id="batch_1", type="t", status=Status.CREATED)
    with pytest.raises(dataclasses.FrozenInstanceError):
        job.status = Status.FAILED  # type: ignore[misc]
    assert job.replace(status=Status.FAILED).status == Status.FAILED
    assert job.status == Status.CREATED


def test_status_is_a_str_enum_with_resting_statuses() -> None:
    assert Status("completed") is Status.COMPLETED and Status.COMPLETED == "completed"
    assert {s.value for s in RESTING_STATUSES} == {
        "pre_processed",
        "completed",
        "canceled",
        "failed",
        "paused",
    }
    assert Status.PRE_PROCESSED.timestamp_field == "pre_processed_at"
    assert Status.PAUSED.timestamp_field == "paused_at"


def test_to_dict_gives_iso_timestamps() -> None:
    at = datetime(2026, 5, 6, 7, 8, 9, 123456, tzinfo=timezone.utc)
    data = BatchJob(id="batch_1", type="t", status=Status.COMPLETED, created_at=at).to_dict()
    assert data["created_at"] == "2026-05-06T07:08:09.123456+00:00"
    assert data["completed_at"] is None


def test_a_replaced_record_is_checked_as_a_new_one() -> None:
    job = BatchJob(id="batch_1", type="t", status=Status.CREATED)
    with pytest.raises(TypeError, match="unexpected keyword argument 'colour'"):
        job.replace(colour="red")


@pytest.mark.parametrize(
    ("status", "errors", "retryable"),
    [
        (Status.FAILED, [{"message": "down", "code": "ConnectionError"}], True),
        (Status.FAILED, [], True),
        (Status.FAILED, [{"message": "row 3: bad price", "code": "invalid_data"}], False),
        (Status.COMPLETED, [], False),
    ],
)
def test_a_failed_job_is_retryable_unless_its_input_was_refused(
    status: Status, errors: list[dict[str, str]], retryable: bool
) -> None:
    job = BatchJob(id="batch_1", type="t", status=status, result={"errors": errors})
    assert job.is_retryable is retryable

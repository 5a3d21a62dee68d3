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


def test_result_json_is_the_stored_text_until_the_result_changes() -> None:
    job = BatchJob(id="batch_1", type="t", status=Status.COMPLETED, result={"a": 1})
    assert job.result_json() == '{"a":1}'
    stored = job.with_result_json('{"a": 1}')
    assert stored.result_json() == '{"a": 1}'
    assert stored.replace(status=Status.FAILED).result_json() == '{"a": 1}'
    assert stored.replace(result={"b": 2}).result_json() == '{"b":2}'


def test_iso_format_gives_each_zone_its_own_text() -> None:
    from datetime import timedelta

    from batchjobs.models import iso_format

    noon = datetime(2026, 11, 28, 12, 0, 0, 5, tzinfo=timezone.utc)
    same_instant = noon.astimezone(timezone(timedelta(hours=2)))
    assert noon == same_instant
    assert iso_format(noon) == "2026-11-28T12:00:00.000005+00:00"  # now remembered
    assert iso_format(same_instant) == "2026-11-28T14:00:00.000005+02:00"
    assert iso_format(noon.replace(tzinfo=None)) == "2026-11-28T12:00:00.000005"

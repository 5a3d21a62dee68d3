"""What a store must read from event rows written before rows held several events."""

from __future__ import annotations

from datetime import datetime

from batchjobs.models import BatchJob, Status, new_job_id, utcnow
from batchjobs.store import Store


def check_old_event_rows(store: Store, at: datetime) -> None:
    """``store`` holds two old rows of one job (usr_1's, origin "old", result
    ``{"n": 1}``): created, then canceled ``at``. They read back as one event
    each, and new rows go on from their seqs."""
    events = store.events()
    assert [(e.seq, e.event, e.job.status) for e in events] == [
        (1, "batch.created", Status.CREATED),
        (2, "batch.canceled", Status.CANCELED),
    ]
    assert events[1].job.canceled_at == at and events[0].job.canceled_at is None
    assert {e.origin for e in events} == {"old"} and events[0].job.result == {"n": 1}
    assert store.events(after=1) == events[1:] and store.events(created_by="usr_1") == events
    now = utcnow()
    store.insert(
        BatchJob(id=new_job_id(), type="t", status=Status.CREATED, created_at=now, updated_at=now)
    )
    assert [e.seq for e in store.events(after=2)] == [3] and store.last_seq() == 3
    assert store.prune_events(before=utcnow(), limit=2) == 2
    assert [e.seq for e in store.events()] == [3]

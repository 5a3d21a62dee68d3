"""``checkpoint_events``, which every backend writes from, against its plain definition:
for any checkpoint, one event per step with the job as at that step, ``batch.updated``
where the result, context or cursor changed, and each event's differences from the
last job (what an outbox row stores) rebuilding that event's job exactly."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from batchjobs.models import BatchJob, Status
from batchjobs.store.base import UPDATED_EVENT, Checkpoint, Lease, checkpoint_events, status_event

T0 = datetime(2026, 12, 1, tzinfo=timezone.utc)
STEP_STATUSES = [
    Status.PRE_PROCESSED,
    Status.CONFIRMED,
    Status.PROCESSING,
    Status.COMPLETED,
    Status.FAILED,
]


def plainly(
    before: BatchJob, after: BatchJob, cp: Checkpoint
) -> list[tuple[str, BatchJob, datetime]]:
    """The events of ``cp`` as the contract words them, one step after another."""
    updated = bool(cp.result or cp.context or cp.cursor is not None)
    names: list[str | None] = [None] * len(cp.steps)
    if updated:
        final = bool(cp.steps) and cp.steps[-1][0] in (Status.COMPLETED, Status.FAILED)
        names.insert(len(names) - final, UPDATED_EVENT)
    steps = list(cp.steps)
    job = after.replace(
        status=before.status,
        **{status.timestamp_field: getattr(before, status.timestamp_field) for status, _ in steps},
    )
    if not steps:
        job = after
    events = []
    for name in names:
        if name is None:
            status, at = steps.pop(0)
            job = job.replace(status=status, **{status.timestamp_field: at})
            events.append((status_event(status), job, at))
        else:
            events.append((name, job, cp.now))
    return events


@settings(max_examples=300, deadline=None, database=None, derandomize=True)
@given(
    statuses=st.lists(st.sampled_from(STEP_STATUSES), max_size=5),
    stamped=st.lists(st.booleans(), min_size=len(STEP_STATUSES), max_size=len(STEP_STATUSES)),
    changed=st.sampled_from(["nothing", "result", "context", "cursor"]),
)
def test_the_events_of_a_checkpoint_are_its_steps_and_their_diffs_rebuild_each_job(
    statuses: list[Status], stamped: list[bool], changed: str
) -> None:
    # A job part-way through its life: some timestamps set earlier, some not.
    earlier_stamps = {
        status.timestamp_field: T0 + timedelta(seconds=i) if set_before else None
        for i, (status, set_before) in enumerate(zip(STEP_STATUSES, stamped, strict=True))
    }
    before = BatchJob(
        id="batch_1",
        type="t",
        status=Status.CREATED,
        result={"advancement_count": 1},
        created_at=T0,
        updated_at=T0,
        **earlier_stamps,
    )
    steps = tuple((status, T0 + timedelta(minutes=i + 1)) for i, status in enumerate(statuses))
    now = T0 + timedelta(hours=1)
    changes: dict[str, Any] = {"result": {}, "context": {}, "cursor": None}
    if changed == "cursor":
        changes["cursor"] = {"next": 2}
    elif changed != "nothing":
        changes[changed] = {"advancement_count": 2}
    cp = Checkpoint(Lease("batch_1", "tok"), before.status, now, steps, **changes)
    fields: dict[str, Any] = {status.timestamp_field: at for status, at in steps}
    if steps:
        fields["status"] = steps[-1][0]
    if changed == "result":
        fields["result"] = {"advancement_count": 2}
    after = before.replace(updated_at=now, **fields)
    earlier = {
        status.timestamp_field: getattr(before, status.timestamp_field) for status in statuses
    }

    events = checkpoint_events(after, cp, earlier)

    assert [(name, job, at) for name, job, at, _ in events] == plainly(before, after, cp)
    for _, job, _, differs in events:
        assert after.replace(**differs) == job
    if events:
        assert events[-1][1] == after

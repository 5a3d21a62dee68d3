"""An outbox row, on every backend: the events of one job in one commit.

A transaction's events are stored one row per job (per run of consecutive
writes of one job: in practice a transaction writes a job once). The row
holds the job as of its last event (``JOB_COLUMNS``), that event's name and
time, and ``seq``, that event's seq; ``steps`` is how many events the row
holds (the first one's seq is ``seq - steps + 1``: seqs stay one per
event), and ``earlier`` the events before the last, as compact JSON: for
each a list of its name, its time, then only the fields of its job that
differ from the last event's job, each name followed by its value (a
checkpoint's steps differ by their status and timestamps). A row of one
event (and every row written before rows held several) has ``steps = 1``
and no ``earlier``.

So a one-chunk job, six events, is two rows: its create's and its run's.
"""

from __future__ import annotations

import json
import operator
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any

from ..models import TIMESTAMP_FIELDS, BatchJob, Event, Status

__all__ = [
    "EVENT_COLUMNS",
    "JOB_COLUMNS",
    "Step",
    "earlier",
    "expand",
    "page",
    "prunable",
    "rows",
]

#: The columns of an event row that hold its job (as of its last event).
JOB_COLUMNS = (
    "id",
    "type",
    "status",
    "created_by",
    "dry_run",
    "context",
    "result",
    *TIMESTAMP_FIELDS,
)
#: An event row's columns after its ``seq`` (every backend's outbox table).
EVENT_COLUMNS = ("event", "at", "origin", *JOB_COLUMNS, "steps", "earlier")

#: One event of a write, noted in its transaction: its name, the job as of it, its
#: time, and the fields in which that job differs from the job of the write's last
#: event (``{}`` for the last: ``checkpoint_events`` knows them without comparing).
Step = tuple[str, BatchJob, datetime, Mapping[str, Any]]

#: A job's fields that may differ between the events of one row (not its id).
_FIELDS = tuple(name for name in JOB_COLUMNS if name != "id")
_values = operator.attrgetter(*_FIELDS)
#: Compact; no check for cycles (the values are plain: texts, numbers, JSON objects).
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False, check_circular=False)


def _parse_ts(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


#: How a field's JSON value is read back (the others are as JSON reads them).
_DECODERS: dict[str, Callable[[Any], Any]] = {
    "status": Status,
    **{name: _parse_ts for name in TIMESTAMP_FIELDS},
}


def rows(
    writes: Sequence[Sequence[Step]], texts: dict[Any, str | None]
) -> Iterator[tuple[int, Sequence[Step], str | None]]:
    """The rows of a transaction's ``writes`` (each the events of one job, oldest
    first), in order: for each, the index of its last write, its events and its
    ``earlier`` column. Consecutive writes of one job share a row.

    ``texts`` caches timestamps' ISO text across the rows of one commit.
    """
    count, start = len(writes), 0
    while start < count:
        steps = writes[start]
        stop = start + 1
        if stop < count and writes[stop][0][1].id == steps[0][1].id:
            merged = list(steps)
            while stop < count and writes[stop][0][1].id == steps[0][1].id:
                merged += writes[stop]
                stop += 1
            yield stop - 1, merged, _compared(merged, texts)
        else:
            yield start, steps, earlier(steps, texts)
        start = stop


def _json_value(value: Any, texts: dict[Any, str | None]) -> Any:
    """``value`` as JSON holds it: a timestamp as its ISO text (formatted once a
    commit, through ``texts``); the rest as it is (a ``Status`` is text)."""
    if isinstance(value, datetime):
        text = texts.get(value)
        if text is None:
            text = texts[value] = value.isoformat()
        return text
    return value


def earlier(steps: Sequence[Step], texts: dict[Any, str | None]) -> str | None:
    """The ``earlier`` column of one write's events, from the differences they carry:
    for each event but the last, ``[name, at, field, value, field, value...]``."""
    if len(steps) < 2:
        return None
    encoded = []
    for name, _, at, changed in steps[:-1]:
        step = [name, texts.get(at) or _json_value(at, texts)]
        for field, value in changed.items():
            step.append(field)
            step.append(value if value is None else _json_value(value, texts))
        encoded.append(step)
    return _ENCODER.encode(encoded)


def _compared(steps: Sequence[Step], texts: dict[Any, str | None]) -> str:
    """The ``earlier`` column of several writes' events, each job compared with the last."""
    last = steps[-1][1]
    final = _values(last)
    encoded = []
    for name, job, at, _ in steps[:-1]:
        step = [name, _json_value(at, texts)]
        if job is not last:
            for field, value, now in zip(_FIELDS, _values(job), final, strict=True):
                if value is not now and value != now:
                    step.append(field)
                    step.append(_json_value(value, texts))
        encoded.append(step)
    return _ENCODER.encode(encoded)


def expand(
    seq: int,
    steps: int,
    earlier: str | None,
    event: str,
    job: BatchJob,
    at: datetime,
    origin: str | None,
    *,
    after: int = 0,
) -> list[Event]:
    """The events of a row (its last event ``event`` of ``job`` at ``at``, with seq
    ``seq``), oldest first, leaving out those at or below seq ``after``."""
    last = Event(seq, event, job, at, origin)
    if steps < 2 or not earlier or seq - 1 <= after:
        return [last]
    first = seq - steps + 1
    events = []
    for offset, (name, when, *changed) in enumerate(json.loads(earlier)):
        if first + offset <= after:
            continue
        changes = {
            field: _DECODERS[field](value) if field in _DECODERS else value
            for field, value in zip(changed[::2], changed[1::2], strict=True)
        }
        as_of = job.replace(**changes) if changes else job
        events.append(Event(first + offset, name, as_of, datetime.fromisoformat(when), origin))
    events.append(last)
    return events


def page(rows: Iterable[list[Event]], limit: int) -> list[Event]:
    """The first ``limit`` events of ``rows`` (each row's events, as ``expand`` gives them),
    reading no more rows than they take."""
    events: list[Event] = []
    for expanded in rows:
        events += expanded
        if len(events) >= limit:
            return events[:limit]
    return events


def prunable(
    rows: Iterable[tuple[int, datetime, int]], *, before: datetime, limit: int
) -> tuple[int | None, int]:
    """Of the oldest rows, ``(seq, at, steps)`` in seq order, those to prune: up to the
    first dated at or after ``before``, and until ``limit`` events are taken (a row goes
    whole). Returns the last such row's seq (``None``: none) and how many events they hold."""
    through, taken = None, 0
    for seq, at, steps in rows:
        if taken >= limit or at >= before:
            break
        through, taken = seq, taken + steps
    return through, taken

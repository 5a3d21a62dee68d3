"""Moving every job and schedule from one database to another (SQLite to PostgreSQL).

``migrate("jobs.db", "postgresql://host/db")`` copies the jobs page by page,
each page in one transaction, with their checkpoints' cursors, so an active
job resumes on the new database where it stopped on the old one. It never
changes the source, and skips what the target already has: a migration cut
short is finished by running it again.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import NotAllowedError
from .models import utcnow
from .store import open_store

__all__ = ["MIGRATE_PAGE", "Migration", "migrate"]

#: Jobs read, and written in one transaction, at a time.
MIGRATE_PAGE = 500


@dataclass(frozen=True)
class Migration:
    """What ``migrate`` did: jobs and schedules read from the source, and how many of
    each the target did not have yet (so were written)."""

    jobs: int
    jobs_written: int
    schedules: int
    schedules_written: int


def migrate(source: str | Path, target: str | Path, *, page: int = MIGRATE_PAGE) -> Migration:
    """Copy every job (with its checkpoint) and schedule of ``source`` into ``target``.

    Both are what ``BatchJobs(db)`` takes: a SQLite path, ``sqlite:///…``,
    ``postgresql://…``. Stop the workers on ``source`` first: a job one of
    them holds is refused with ``NotAllowedError``, before anything is
    written. Jobs and schedules already in ``target`` stay as they are.
    """
    if str(source) == str(target):
        raise NotAllowedError("Cannot migrate a database into itself")
    origin = open_store(source)
    try:
        now = utcnow()
        after: str | None = None
        total = 0
        while batch := origin.dump(after=after, limit=page):
            for stored in batch:
                if stored.leased_until is not None and stored.leased_until > now:
                    raise NotAllowedError(
                        f"Batch job {stored.job.id} is held by a worker until "
                        f"{stored.leased_until.isoformat()}: stop the workers on "
                        f"{origin.location} first"
                    )
            total += len(batch)
            after = batch[-1].job.id
        destination = open_store(target)
        try:
            written, after = 0, None
            while batch := origin.dump(after=after, limit=page):
                written += destination.load(batch)
                after = batch[-1].job.id
            schedules = origin.list_schedules()
            made = sum(
                destination.save_schedule(s, expect_revision=None) is not None for s in schedules
            )
        finally:
            destination.close()
    finally:
        origin.close()
    return Migration(total, written, len(schedules), made)

"""Moving every job and schedule from one database to another (SQLite to PostgreSQL).

``migrate("jobs.db", "postgresql://host/db")`` copies the jobs page by page,
each page in one transaction, with their checkpoints' cursors, so an active
job resumes on the new database where it stopped on the old one. It never
changes the source's jobs (an older batchjobs database is brought up to date
first, as any open does; another program's database is refused), and skips what
the target already has: a migration cut short is finished by running it again.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .errors import NotAllowedError, StoreUnreachableError
from .models import utcnow
from .store import check_location, open_store, sqlite_path

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
    ``postgresql://…`` (``ValueError`` otherwise, as ``check_location``). A SQLite
    ``source`` must exist (``StoreUnreachableError``: none is made), and hold batch jobs'
    tables (``StoreCorruptError``: none are made in another app's database; an older
    batchjobs database is brought up to date first, as any open does). Stop the workers
    on ``source`` first: a job one of them holds is refused with ``NotAllowedError``,
    before anything is written. Jobs and schedules already in ``target`` stay as they are.
    """
    check_location(source)
    check_location(target)
    if _same(source, target):
        raise NotAllowedError("Cannot migrate a database into itself")
    file = sqlite_path(source)
    if file is not None and not file.is_file():
        raise StoreUnreachableError(
            f"No SQLite database at {file}: nothing to migrate from", location=str(file)
        )
    origin = open_store(source, create=False)  # another app's database stays as it is
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


def _same(source: str | Path, target: str | Path) -> bool:
    """Whether ``source`` and ``target`` name one database: one SQLite file however its
    path is spelled (links included), or one URL (``postgres://`` or ``postgresql://``)."""
    files = sqlite_path(source), sqlite_path(target)
    if files[0] is not None and files[1] is not None:
        if files[0].exists() and files[1].exists():
            return os.path.samefile(files[0], files[1])
        return files[0].resolve() == files[1].resolve()
    return _url(source) == _url(target)


def _url(location: str | Path) -> str:
    text = str(location)
    return "postgresql://" + text[len("postgres://") :] if text.startswith("postgres://") else text

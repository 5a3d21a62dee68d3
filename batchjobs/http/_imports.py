"""The dashboard's CSV import wizard, over library calls: upload, then a dry run to preview.

The wizard's steps are a file uploaded into the caller's part of the file
store (``FileStore.upload``), a ``csv-import`` job created with its key as a
dry run (``BatchJobs.create``), whose pre-processing is the preview (rows to
create and update in ``stat_descriptors``, invalid rows in ``result.errors``),
and the confirmation (``BatchJobs.confirm``) on the job's page.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import IO

from ..app import BatchJobs
from ..errors import InvalidDataError
from ..models import BatchJob

#: The job type the wizard creates.
IMPORT_TYPE = "csv-import"


def import_tables(jobs: BatchJobs) -> list[tuple[str, str]] | None:
    """The ``(database, table)`` pairs an import may write, ``None`` when no
    ``csv-import`` is registered; a strategy without ``tables()`` offers none."""
    if IMPORT_TYPE not in jobs.registry.types:
        return None
    tables: Callable[[], list[tuple[str, str]]] | None = getattr(
        jobs.strategy(IMPORT_TYPE), "tables", None
    )
    return list(tables()) if callable(tables) else []


def choice_value(database: str, table: str) -> str:
    """How a table is named in the wizard's form: ``database.table``."""
    return f"{database}.{table}"


def chosen_table(value: str, tables: list[tuple[str, str]]) -> tuple[str, str]:
    """The ``(database, table)`` that ``value`` names among ``tables``; ``InvalidDataError``
    when it names none (or, with dots in names, more than one)."""
    found = [pair for pair in tables if choice_value(*pair) == value]
    if not value:
        raise InvalidDataError("Choose the table to import into.")
    if len(found) != 1:
        raise InvalidDataError(f"{value!r} is not a table this application lets you import into.")
    return found[0]


def start_import(
    jobs: BatchJobs,
    user: str,
    *,
    filename: str | None,
    source: IO[bytes],
    database: str,
    table: str,
    skip_invalid: bool,
) -> BatchJob:
    """Upload ``source`` as ``user``'s file and create a dry-run import of it into
    ``database.table``; the file is deleted again when the job cannot be created."""
    files = jobs.files.for_user(user)
    key = files.upload(filename, source)
    context = {
        "database": database,
        "table": table,
        "file_key": key,
        "on_error": "skip" if skip_invalid else "fail",
    }
    try:
        return jobs.create(IMPORT_TYPE, context, dry_run=True, created_by=user)
    except BaseException:
        files.delete(key)
        raise

"""The one error hierarchy of batchjobs.

Each error carries a Medusa-compatible ``type`` and a ``message``; the CLI and
the HTTP API turn them into exit codes and status codes at their boundary.
"""

from __future__ import annotations

__all__ = [
    "BatchJobError",
    "EventsPrunedError",
    "InvalidDataError",
    "MissingContextKeyError",
    "NotAllowedError",
    "NotFoundError",
    "StoreClosedError",
    "StoreCorruptError",
    "StoreError",
    "StoreLockedError",
    "StoreReadOnlyError",
    "StoreUnreachableError",
]

#: Longest id quoted whole in a message; longer ones (no id is) are cut.
_ID_SHOWN = 64


def _shown(id: object) -> str:
    """An id as a message quotes it: printable as UTF-8, not longer than ``_ID_SHOWN``."""
    text = str(id)
    if len(text) > _ID_SHOWN:
        text = f"{text[:_ID_SHOWN]}… ({len(text)} characters)"
    # A command line argument that is not UTF-8 holds lone surrogates: show its bytes.
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate no byte decodes to
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


class BatchJobError(Exception):
    """Base class of every error batchjobs raises on purpose."""

    type = "unknown_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFoundError(BatchJobError):
    """No batch job has the given id."""

    type = "not_found"

    def __init__(self, message: str, *, id: str | None = None) -> None:
        super().__init__(message)
        self.id = id

    @classmethod
    def for_id(cls, id: str) -> NotFoundError:
        """The error for an unknown batch job id."""
        return cls(f"Batch job with id {_shown(id)} was not found", id=id)


class NotAllowedError(BatchJobError):
    """The job's status (or its owner) does not allow the operation."""

    type = "not_allowed"


class InvalidDataError(BatchJobError):
    """The input is malformed: unknown type, bad context, bad field."""

    type = "invalid_data"


class MissingContextKeyError(InvalidDataError, KeyError):
    """A strategy read a key its job's context does not have (``run.job.context[key]``).

    The input's fault, not a passing one: the job fails without a retry hint,
    since running it again reads the same context. A ``KeyError`` still, for
    strategies that catch one.
    """

    def __init__(self, key: object) -> None:
        super().__init__(f"The job's context has no {_shown(repr(key))}")
        self.key = key

    def __str__(self) -> str:
        return self.message


class StoreError(BatchJobError):
    """The database failed: the store names it and what went wrong."""

    type = "database_error"

    def __init__(self, message: str, *, location: str | None = None) -> None:
        super().__init__(message)
        self.location = location


class StoreReadOnlyError(StoreError):
    """The database cannot be written to (a read-only file, folder or disk)."""


class StoreUnreachableError(StoreError):
    """The database cannot be opened or reached (missing folder, I/O error, server down)."""


class StoreCorruptError(StoreError):
    """The file is not a batchjobs database, or is damaged."""

    @classmethod
    def not_ours(cls, location: str, holds: str) -> StoreCorruptError:
        """The error for the database at ``location`` that is not a batchjobs one, refused
        before anything was written to it; ``holds`` says what gave it away."""
        return cls(
            f"The database {location} {holds}: it is not a batchjobs database (nothing was "
            "written to it)",
            location=location,
        )


class StoreLockedError(StoreError):
    """Another connection held the database's lock for longer than the store waits."""


class StoreClosedError(StoreError):
    """The store was closed: ``BatchJobs.close()`` ran before this call."""


class EventsPrunedError(BatchJobError):
    """The events asked for are older than the outbox keeps: they were pruned."""

    type = "events_pruned"

    def __init__(self, after: int, oldest: int) -> None:
        super().__init__(
            f"Events after seq {after} were pruned: the oldest event kept is seq {oldest}; "
            f"read the jobs themselves again, then follow from seq {oldest - 1}"
        )
        self.after = after
        #: The oldest seq still kept: ``events(after=oldest - 1)`` reads from it.
        self.oldest = oldest

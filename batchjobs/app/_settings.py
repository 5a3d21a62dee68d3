"""A ``BatchJobs``'s settings: their defaults, their checks, and the name it goes by."""

from __future__ import annotations

import os
import secrets
import socket
from datetime import timedelta
from pathlib import Path
from typing import Any

DEFAULT_DB = "batchjobs.db"
#: The file store of a database that is not a file (PostgreSQL), in the working
#: directory. Workers on several machines need one they all see: pass ``files_dir``.
DEFAULT_FILES_DIR = "batchjobs-files"
DEFAULT_CONCURRENCY = 2
DEFAULT_POLL_INTERVAL = 1.0
DEFAULT_CHANNEL_PREFIX = "batchjobs"


def new_origin() -> str:
    """A name for a ``BatchJobs`` on its events and messages: host, pid, and a random part."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def check_settings(**settings: Any) -> Any:
    """``ValueError`` for a setting out of range; returns the last one's value."""
    value = None
    for name, value in settings.items():
        if name in ("concurrency", "max_attempts"):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, not {value!r}")
        elif not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{name} must be a positive number of seconds, not {value!r}")
    return value


def check_retention(value: timedelta | float | None) -> timedelta | None:
    """``event_retention`` as a ``timedelta`` (``None``: keep every event); ``ValueError``
    unless it is positive."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = timedelta(seconds=value)
    if value is not None and (not isinstance(value, timedelta) or value <= timedelta(0)):
        raise ValueError(
            "event_retention must be a positive timedelta or number of seconds, or None "
            f"(keep every event), not {value!r}"
        )
    return value


def default_files_dir(db_path: Path | None) -> Path:
    """Where the job files go by default: beside the SQLite file ``db_path``, or
    ``DEFAULT_FILES_DIR`` for a database that is not a file."""
    if db_path is None:
        return Path(DEFAULT_FILES_DIR)
    return db_path.with_name(f"{db_path.stem}-files")

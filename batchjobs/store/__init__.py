"""Where batch jobs are kept: the store protocol (``base``) and its implementations.

``open_store(url_or_path)`` picks the implementation: a path or
``sqlite:///path`` is SQLite (the embedded default).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .base import (
    DATE_OPERATORS,
    FILTER_NAMES,
    ORDER_FIELDS,
    Checkpoint,
    Claim,
    ClaimRequest,
    Holder,
    Lease,
    Store,
)
from .sqlite import DURABILITY_LEVELS, SQLITE_VERSION, SQLiteStore

__all__ = [
    "DATE_OPERATORS",
    "DURABILITY_LEVELS",
    "FILTER_NAMES",
    "ORDER_FIELDS",
    "SQLITE_VERSION",
    "Checkpoint",
    "Claim",
    "ClaimRequest",
    "Holder",
    "Lease",
    "SQLiteStore",
    "Store",
    "open_store",
    "sqlite_path",
]

SQLITE_SCHEME = "sqlite:///"


def _split(url_or_path: str | Path) -> tuple[Path | None, str]:
    text = str(url_or_path)
    if text.startswith(SQLITE_SCHEME):
        path, _, query = text[len(SQLITE_SCHEME) :].partition("?")
        return Path(path), query
    if "://" in text:
        return None, ""
    return Path(text), ""


def sqlite_path(url_or_path: str | Path) -> Path | None:
    """The SQLite file ``url_or_path`` names (a path or ``sqlite:///path``), or ``None``
    for a URL of another database."""
    return _split(url_or_path)[0]


def open_store(url_or_path: str | Path, **options: Any) -> Store:
    """The store for ``url_or_path``: a file path or ``sqlite:///path`` (SQLite).

    ``sqlite:////abs/path`` is an absolute path, ``sqlite:///rel/path`` a
    relative one; ``sqlite:///path?mode=ro`` opens it read-only (every write
    raises ``StoreReadOnlyError``). ``options`` go to the implementation
    (SQLite: ``durability``, ``busy_timeout``). ``ValueError`` for a URL of a
    database this version cannot open.
    """
    path, query = _split(url_or_path)
    if path is None:
        scheme = str(url_or_path).split("://", 1)[0]
        raise ValueError(f"{scheme}:// databases are not supported; use a path or sqlite:///PATH")
    if query not in ("", "mode=ro", "mode=rw"):
        raise ValueError(f"{url_or_path}: the only option of a SQLite URL is mode=ro")
    return SQLiteStore(path, read_only=query == "mode=ro", **options)

"""Where batch jobs are kept: the store protocol (``base``) and its implementations.

``open_store(url_or_path)`` picks the implementation: a path or
``sqlite:///path`` is SQLite (the embedded default); ``postgresql://`` (or
``postgres://``) is PostgreSQL, with the ``batchjobs[postgres]`` extra.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ..errors import StoreError
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
    StoredJob,
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
    "StoredJob",
    "check_location",
    "is_postgres_url",
    "open_store",
    "sqlite_path",
]

SQLITE_SCHEME = "sqlite:///"
#: URL schemes of PostgreSQL (libpq takes both).
POSTGRES_SCHEMES = ("postgresql://", "postgres://")
#: What a PostgreSQL URL needs installed.
POSTGRES_EXTRA = "pip install 'batchjobs[postgres]'"
#: libpq's connection parameter key words (PostgreSQL 18's): a key=value connection
#: string (``host=db dbname=jobs``) starts with one of them, then ``=``. As a path it
#: would name a SQLite file after it, password and all: any case is refused (libpq's
#: own is lower case; ``sqlite:///NAME`` opens a file of such a name).
_LIBPQ_KEYWORDS = (
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "password",
    "passfile",
    "require_auth",
    "channel_binding",
    "connect_timeout",
    "client_encoding",
    "options",
    "application_name",
    "fallback_application_name",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_count",
    "tcp_user_timeout",
    "replication",
    "gssencmode",
    "sslmode",
    "sslnegotiation",
    "requiressl",
    "sslcompression",
    "sslcert",
    "sslkey",
    "sslpassword",
    "sslcertmode",
    "sslrootcert",
    "sslcrl",
    "sslcrldir",
    "sslsni",
    "requirepeer",
    "ssl_min_protocol_version",
    "ssl_max_protocol_version",
    "krbsrvname",
    "gsslib",
    "gssdelegation",
    "service",
    "target_session_attrs",
    "load_balance_hosts",
    "min_protocol_version",
    "max_protocol_version",
    "sslkeylogfile",
    "scram_client_key",
    "scram_server_key",
    "oauth_issuer",
    "oauth_client_id",
    "oauth_client_secret",
    "oauth_scope",
)
_LIBPQ_STRING = re.compile(rf"\s*(?:{'|'.join(_LIBPQ_KEYWORDS)})\s*=", re.IGNORECASE)
#: What a URL's scheme may be (RFC 3986): shown in an error only if it is one.
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")


def is_postgres_url(url_or_path: str | Path) -> bool:
    """Whether ``url_or_path`` names a PostgreSQL database."""
    return str(url_or_path).startswith(POSTGRES_SCHEMES)


def check_location(url_or_path: str | Path) -> None:
    """Raise ``ValueError`` unless ``url_or_path`` names a database ``open_store`` can
    open; nothing is opened or written. Refused: a URL of another kind of database, a
    SQLite URL with an option other than ``mode=ro``/``mode=rw``, and a libpq key=value
    string (``host=db dbname=jobs``, a PostgreSQL database given as psycopg takes it,
    which as a path would make a SQLite file of that name: give it as a URL)."""
    if is_postgres_url(url_or_path):
        return
    if not str(url_or_path).strip():
        raise ValueError("is empty: name a SQLite file or a postgresql:// URL")
    if isinstance(url_or_path, str) and _LIBPQ_STRING.match(url_or_path):
        # Not shown: such a string often carries a password.
        raise ValueError(
            "a libpq key=value connection string is not taken: give PostgreSQL a URL, "
            "postgresql://USER@HOST:PORT/DBNAME (for a SQLite file of such a name, "
            "sqlite:///NAME)"
        )
    path, query = _split(url_or_path)
    if path is None:
        scheme = str(url_or_path).split("://", 1)[0]
        kind = f"{scheme}:// databases" if _SCHEME.fullmatch(scheme) else "Databases of this kind"
        raise ValueError(  # the scheme shown only if it is one: else it may carry a secret
            f"{kind} are not supported; use a path, sqlite:///PATH or postgresql://..."
        )
    if query not in ("", "mode=ro", "mode=rw"):
        raise ValueError(f"{url_or_path}: the only option of a SQLite URL is mode=ro")


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


def open_store(
    url_or_path: str | Path,
    *,
    durability: str = "normal",
    concurrency: int | None = None,
    create: bool = True,
    **options: Any,
) -> Store:
    """The store for ``url_or_path``: a file path or ``sqlite:///path`` (SQLite), or a
    ``postgresql://`` / ``postgres://`` URL (PostgreSQL).

    ``sqlite:////abs/path`` is an absolute path, ``sqlite:///rel/path`` a
    relative one; ``sqlite:///path?mode=ro`` opens it read-only (every write
    raises ``StoreReadOnlyError``). ``durability`` (``normal``/``full``) sets SQLite's
    ``synchronous``; PostgreSQL commits as its server is configured.
    ``concurrency`` (the worker threads that will use the store) sizes
    PostgreSQL's connection pool. Without ``create``, a database that holds no batch
    jobs' tables is refused (``StoreCorruptError``) before anything is written to it.
    ``options`` go to the implementation (SQLite: ``busy_timeout``; PostgreSQL:
    ``pool_size``, ``retry_for``).
    ``ValueError`` for a database this version cannot open (``check_location``);
    ``StoreError`` naming the extra when PostgreSQL's driver is not installed.
    """
    if durability not in DURABILITY_LEVELS:
        raise ValueError(
            f"durability must be one of {', '.join(DURABILITY_LEVELS)}, not {durability!r}"
        )
    check_location(url_or_path)
    if is_postgres_url(url_or_path):
        try:
            from .postgres import PostgresStore
        except ImportError as error:
            raise StoreError(
                f"PostgreSQL databases need the postgres extra ({POSTGRES_EXTRA}): {error}"
            ) from None
        store = PostgresStore(str(url_or_path), create=create, **options)
        if concurrency is not None and "pool_size" not in options:
            store.provision(concurrency)
        return store
    path, query = _split(url_or_path)
    assert path is not None  # checked
    read_only = query == "mode=ro"
    return SQLiteStore(path, durability=durability, read_only=read_only, create=create, **options)

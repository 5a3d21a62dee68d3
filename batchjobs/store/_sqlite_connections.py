"""The SQLite store's connections: one per thread, write transactions, errors at the boundary.

Also what ``batchjobs.testing`` drives: a read-only switch, a lock held
elsewhere, commits that fail. Each is applied the way SQLite itself would
fail (``PRAGMA query_only``, another connection's lock, a rolled-back commit).
"""

from __future__ import annotations

import functools
import os
import sqlite3
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any, TypeVar
from urllib.parse import unquote

import sqlite_utils

from ..errors import (
    StoreClosedError,
    StoreCorruptError,
    StoreError,
    StoreLockedError,
    StoreReadOnlyError,
    StoreUnreachableError,
)


class _ThreadConnection:
    """One thread's connection, closed when the thread ends (its thread-local goes)."""

    def __init__(self, db: sqlite_utils.Database) -> None:
        self.db = db
        #: The fault settings as last applied to this connection.
        self.settings: tuple[bool, float] = (False, 0.0)
        # Connections.close may reach this object through its weak set while the ending
        # thread runs __del__: two closes of one connection at once crash Python 3.10's sqlite3.
        self._closing = threading.Lock()

    def close(self) -> None:
        with self._closing, suppress(sqlite3.ProgrammingError):
            self.db.conn.close()

    def __del__(self) -> None:
        try:  # noqa: SIM105 - may run at interpreter exit, when contextlib is gone
            with self._closing:
                self.db.conn.close()
        except Exception:
            pass


#: Every ``Connections`` of this process, for the fork hook.
_EVERY: weakref.WeakSet[Connections] = weakref.WeakSet()


class Connections:
    """The connections of one store to one file, one per thread, opened on first use."""

    def __init__(self, path: str, *, synchronous: str, busy_timeout: float) -> None:
        self.path = path
        self.uri = path.startswith("file:")
        #: The file, for messages.
        self.location = unquote(path.removeprefix("file:").split("?", 1)[0]) if self.uri else path
        self.synchronous = synchronous
        self.busy_timeout = busy_timeout
        self.closed = False
        self._local = threading.local()
        self._open: weakref.WeakSet[_ThreadConnection] = weakref.WeakSet()
        self._lock = threading.Lock()
        #: Called before a write transaction commits with what it noted (``pending``);
        #: its answer goes to ``after_commit`` once the commit succeeded.
        self.before_commit: Callable[[sqlite3.Connection, list[Any]], Any] | None = None
        self.after_commit: Callable[[Any], None] | None = None
        # Fault injection, applied to each connection when it is next used.
        self.read_only = False
        self.fault_timeout = 0.0
        self.failing_commits = 0
        #: The forking thread's connection, in a forked child: kept, never used or
        #: closed (it is the parent's; SQLite connections must not cross a fork). The
        #: other threads' connections are closed as Python clears those threads in the
        #: child, before this hook runs: none was inside SQLite at the fork (``boundary``).
        self._inherited: list[_ThreadConnection] = []
        _EVERY.add(self)

    def _after_fork(self) -> None:
        """In a forked child: forget the parent's connections; each thread opens its own."""
        self._inherited.extend(self._open)
        self._local = threading.local()
        self._open = weakref.WeakSet()
        self._lock = threading.Lock()

    @property
    def db(self) -> sqlite_utils.Database:
        """This thread's connection."""
        held = getattr(self._local, "held", None)
        if held is None:
            if self.closed:
                raise StoreClosedError(f"The database {self.location} is closed")
            # isolation_level=None: we open every transaction ourselves.
            conn = sqlite3.connect(
                self.path,
                timeout=self.busy_timeout,
                isolation_level=None,
                check_same_thread=False,
                uri=self.uri,
            )
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout * 1000)}")
            conn.execute(f"PRAGMA synchronous={self.synchronous}")
            held = _ThreadConnection(sqlite_utils.Database(conn, execute_plugins=False))
            with self._lock:
                self._open.add(held)
            self._local.held = held
        settings = (self.read_only, self.fault_timeout)
        if held.settings != settings:
            conn = held.db.conn
            conn.execute(f"PRAGMA query_only={int(self.read_only)}")
            timeout = self.fault_timeout or self.busy_timeout
            conn.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
            held.settings = settings
        return held.db

    @property
    def pending(self) -> list[Any]:
        """What the current write transaction noted for ``before_commit`` (this thread's)."""
        pending: list[Any] | None = getattr(self._local, "pending", None)
        if pending is None:
            raise RuntimeError("noted outside a write transaction")
        return pending

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction, its lock taken up front (``BEGIN IMMEDIATE``).

        Inside an open transaction it joins that one. Before the commit,
        ``before_commit`` writes what the transaction noted in ``pending``;
        after it, ``after_commit`` gets its answer. A rolled-back transaction
        reaches neither.
        """
        conn = self.db.conn
        if conn.in_transaction:
            yield conn
            return
        conn.execute("BEGIN IMMEDIATE")
        pending: list[Any] = []
        self._local.pending = pending
        written = None
        try:
            yield conn
            if pending and self.before_commit is not None:
                written = self.before_commit(conn, pending)
            if self.failing_commits:
                self.failing_commits -= 1
                raise sqlite3.OperationalError("disk I/O error (injected by batchjobs.testing)")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        finally:
            self._local.pending = None
        try:
            conn.execute("COMMIT")
        except BaseException:
            # A COMMIT that fails may leave the transaction open (SQLITE_BUSY, for
            # one): the next write would join it, and the lock would stay held.
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        if written and self.after_commit is not None:
            self.after_commit(written)

    def statement(self, sql: str, params: Sequence[Any]) -> tuple[list[sqlite3.Row], int]:
        """Run one writing statement; its rows (``RETURNING``) and how many rows it changed.

        Alone it is its own transaction (a writing statement takes the write
        lock before it reads: as guarded as ``BEGIN IMMEDIATE``, in one round
        trip); inside an open transaction it is part of that one.
        """
        conn = self.db.conn
        if not conn.in_transaction and self.failing_commits:
            self.failing_commits -= 1
            raise sqlite3.OperationalError("disk I/O error (injected by batchjobs.testing)")
        cursor = conn.execute(sql, params)
        rows = cursor.fetchall()  # all of them: the statement, and so its commit, ends here
        return rows, cursor.rowcount

    def close(self) -> None:
        """Close every thread's connection; later use raises ``StoreClosedError``."""
        with self._lock:
            self.closed = True
            held = list(self._open)
            self._open = weakref.WeakSet()
        for connection in held:
            connection.close()
        self._local = threading.local()

    @property
    def count(self) -> int:
        """How many connections are open."""
        with self._lock:
            return len(self._open)

    @contextmanager
    def lock_held(self, timeout: float) -> Iterator[None]:
        """Hold the write lock from another connection; ours wait ``timeout`` seconds for it."""
        other = sqlite3.connect(self.path, isolation_level=None, uri=self.uri)
        try:
            other.execute("BEGIN EXCLUSIVE")
            self.fault_timeout = timeout
            yield
        finally:
            self.fault_timeout = 0.0
            other.close()

    def error(self, error: sqlite3.Error) -> StoreError:
        """The ``StoreError`` for ``error``, naming the file and the problem."""
        where = self.location
        name = getattr(error, "sqlite_errorname", "") or ""
        text = str(error)
        if self.closed or "closed database" in text:
            return StoreClosedError(f"The database {where} is closed", location=where)
        if name.startswith("SQLITE_READONLY") or "readonly" in text:
            return StoreReadOnlyError(
                f"Cannot write to the database {where}: it is read-only", location=where
            )
        if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "locked" in text:
            return StoreLockedError(
                f"The database {where} is locked: another connection held it for more than "
                f"{self.fault_timeout or self.busy_timeout:g} seconds",
                location=where,
            )
        if name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")) or "not a database" in text:
            return StoreCorruptError(
                f"The database {where} is damaged or is not a database: {text}", location=where
            )
        if name.startswith("SQLITE_FULL"):
            return StoreError(
                f"Cannot write to the database {where}: the disk is full", location=where
            )
        if name.startswith(("SQLITE_CANTOPEN", "SQLITE_IOERR", "SQLITE_PERM")) or "open" in text:
            return StoreUnreachableError(
                f"Cannot open the database {where}: {text}", location=where
            )
        return StoreError(f"The database {where} failed: {text}", location=where)


F = TypeVar("F", bound=Callable[..., Any])


class _ForkGate:
    """Lets a fork wait until no other thread is inside a store call.

    A forked child inherits SQLite's mutexes as the parent's threads held them: a
    thread inside SQLite at the fork left the child waiting for good on the first
    connection it opens, or on closing that thread's connection. A fork waits for
    such calls to end (new ones wait for the fork) for ``FORK_WAIT`` seconds at
    most: a call that waits on the forking thread itself cannot hold it up for good
    (event receivers run inside the call that committed their event). About 2 µs a
    store call.
    """

    def __init__(self) -> None:
        self._changed = threading.Condition(threading.Lock())
        self._inside = 0
        self._forking = False
        self._depth = threading.local()  # a store call may make another

    def enter(self) -> None:
        depth = getattr(self._depth, "n", 0)
        if depth == 0:
            with self._changed:
                self._changed.wait_for(lambda: not self._forking, FORK_WAIT)
                self._inside += 1
        self._depth.n = depth + 1

    def leave(self) -> None:
        self._depth.n -= 1
        if self._depth.n == 0:
            with self._changed:
                self._inside -= 1
                self._changed.notify_all()

    def before_fork(self) -> None:
        own = 1 if getattr(self._depth, "n", 0) else 0
        with self._changed:
            self._forking = True
            self._changed.wait_for(lambda: self._inside <= own, FORK_WAIT)

    def after_fork_in_parent(self) -> None:
        with self._changed:
            self._forking = False
            self._changed.notify_all()

    def after_fork_in_child(self) -> None:
        # Only the forking thread goes on: its own call, if it is in one, is all.
        self._changed = threading.Condition(threading.Lock())
        self._inside = 1 if getattr(self._depth, "n", 0) else 0
        self._forking = False


#: Seconds a fork waits at most for the other threads' store calls to end.
FORK_WAIT = 5.0
_GATE = _ForkGate()


def boundary(method: F) -> F:
    """Turn ``sqlite3`` errors raised by a store's ``method`` into ``StoreError``s; a
    fork waits until the call has ended (``_ForkGate``)."""

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        _GATE.enter()
        try:
            return method(self, *args, **kwargs)
        except sqlite3.Error as error:
            raise self._connections.error(error) from error
        finally:
            _GATE.leave()

    return wrapper  # type: ignore[return-value]


def _after_fork_in_child() -> None:
    _GATE.after_fork_in_child()
    for connections in list(_EVERY):
        connections._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_GATE.before_fork,
        after_in_parent=_GATE.after_fork_in_parent,
        after_in_child=_after_fork_in_child,
    )

"""The PostgreSQL store's connections: a pool, short transactions retried across lost
connections, wake-ups by ``LISTEN``, and psycopg errors turned into ``StoreError``s.

A write transaction learns its transaction id in its first round trip
(``BEGIN; SELECT pg_current_xact_id()``). When the connection is lost while
its ``COMMIT`` is under way nobody knows whether it committed; the store asks
the server (``pg_xact_status``) once it is reachable again, and either keeps
the answer it had read before the ``COMMIT`` or runs the work again. So a lost
connection neither loses a checkpoint nor applies one twice.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import random
import re
import select
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from typing import Any, TypeVar

import psycopg
import psycopg_pool
from psycopg import errors as pg_errors
from psycopg import sql

from ..errors import (
    StoreClosedError,
    StoreCorruptError,
    StoreError,
    StoreLockedError,
    StoreReadOnlyError,
    StoreUnreachableError,
)
from ._postgres_schema import TABLE

log = logging.getLogger("batchjobs.store")

T = TypeVar("T")

#: How long a store keeps retrying a lost connection before it gives up.
DEFAULT_RETRY_FOR = 30.0
#: The first pause between retries; it doubles up to ``RETRY_DELAY_MAX``.
RETRY_DELAY = 0.05
RETRY_DELAY_MAX = 2.0
#: Seconds a write waits for a row or table lock before the store gives up.
DEFAULT_LOCK_TIMEOUT = 60.0
#: Seconds to open a connection before the server counts as unreachable.
CONNECT_TIMEOUT = 10
#: The ``NOTIFY`` channel that says "a job may be runnable" (databases do not share it;
#: the tables of another schema of one database have a channel of their own, ``channel_for``).
CHANNEL = "batchjobs_runnable"
#: A schema name that goes into a channel's name as it is.
_PLAIN_SCHEMA = re.compile(r"[a-z_][a-z0-9_]*")
#: SQLSTATEs after which the work is run again: the connection or the server went
#: away, or the transaction lost a serialization race or a deadlock (nothing committed).
_RETRY_STATES = frozenset({"57P01", "57P02", "57P03", "40001", "40P01"})


class _Unknown(Exception):
    """The connection was lost while a ``COMMIT`` was under way. If it committed, the
    answer is ``result``, or what ``recover`` reads (the commit's own answers lost)."""

    def __init__(
        self,
        xid: str,
        result: Any,
        recover: Callable[[psycopg.Connection[Any], str], Any] | None = None,
    ) -> None:
        super().__init__(xid)
        self.xid = xid
        self.result = result
        self.recover = recover


#: What a pipelined write's work returns: reads its answers once the ``COMMIT``'s
#: round trip is back; and, if that round trip was lost but the transaction committed,
#: reads them again on another connection.
#: (The second is given the transaction's id.)
Finish = tuple[Callable[[], T], Callable[[psycopg.Connection[Any], str], T]]


class InjectedFault(psycopg.DatabaseError):
    """A commit made to fail by ``fail_commits`` (fault injection)."""


def _retryable(error: BaseException) -> bool:
    if isinstance(error, (psycopg_pool.PoolTimeout, psycopg.InterfaceError)):
        return not isinstance(error, psycopg_pool.PoolClosed)
    if not isinstance(error, psycopg.OperationalError):
        return False
    state = error.sqlstate or ""
    return state.startswith("08") or state in _RETRY_STATES or not state


def channel_for(base: str, schema: str) -> str:
    """The ``NOTIFY`` channel ``base`` of the tables in ``schema``: ``base`` itself in
    ``public`` (as every earlier version names it), else ``base:schema``, or a digest of
    the schema where its name is not plain or would not fit (an identifier's 63 bytes).
    Installs in two schemas of one database then wake only their own workers."""
    if schema == "public":
        return base
    name = f"{base}:{schema}"
    if _PLAIN_SCHEMA.fullmatch(schema) and len(name) <= 63:
        return name
    return f"{base}:{hashlib.sha256(schema.encode()).hexdigest()[:24]}"


def tables_schema(conn: psycopg.Connection[Any]) -> str:
    """The schema of the jobs' table ``conn`` finds through its search_path (where the
    store's tables are, not the path's first schema: one made later, such as the
    ``"$user"`` one, moves neither the tables nor their channels); else the schema new
    tables would be made in."""
    row = conn.execute(
        "SELECT coalesce((SELECT n.nspname FROM pg_class c JOIN pg_namespace n "
        "ON n.oid = c.relnamespace WHERE c.oid = to_regclass(%s)), current_schema())",
        [TABLE],
        prepare=False,
    ).fetchone()
    return str(row[0]) if row and row[0] else "public"


def redact(url: str) -> str:
    """``url`` without its password, for messages."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return url.split("@")[-1]
    user, host = info.get("user"), info.get("host") or "localhost"
    port, name = info.get("port"), info.get("dbname") or ""
    return f"postgresql://{f'{user}@' if user else ''}{host}{f':{port}' if port else ''}/{name}"


def given_options(url: str) -> str:
    """The server options ``url`` sets (``?options=-csearch_path%3Djobs``), or else
    ``PGOPTIONS``: ours are added after them, and would otherwise replace them."""
    try:
        options = psycopg.conninfo.conninfo_to_dict(url).get("options")
    except psycopg.ProgrammingError:
        options = None  # connecting reports the bad URL
    return str(options or os.environ.get("PGOPTIONS", "")).strip()


#: Every ``Database`` of this process, for the fork hook.
_EVERY: weakref.WeakSet[Database] = weakref.WeakSet()


class Database:
    """One store's way to a PostgreSQL database: a pool of connections and the
    transactions run on them, retried while the server is away."""

    def __init__(
        self,
        url: str,
        *,
        pool_size: int,
        retry_for: float = DEFAULT_RETRY_FOR,
        lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
    ) -> None:
        self.url = url
        self.location = redact(url)
        self.retry_for = retry_for
        self._checkout_timeout = max(retry_for, 1.0)
        self.lock_timeout = lock_timeout
        self.closed = False
        ms = int(lock_timeout * 1000)
        self.kwargs: dict[str, Any] = {
            "autocommit": True,  # each transaction is opened and ended by us
            "options": " ".join(
                filter(None, [given_options(url), f"-c timezone=UTC -c lock_timeout={ms}"])
            ),
            "connect_timeout": CONNECT_TIMEOUT,
        }
        self.pool_size = max(pool_size, 1)
        self.pool = self._new_pool()
        #: The schema of the store's tables, as the store's first connection found it.
        self.schema = "public"
        #: Pools a forked child inherited: kept, never used or closed (their
        #: connections are the parent's: closing one would end the parent's session).
        self._inherited: list[psycopg_pool.ConnectionPool] = []
        _EVERY.add(self)
        # Fault injection (batchjobs.testing), read at the start of each transaction.
        self.read_only = False
        self.fault_timeout = 0.0
        self.failing_commits = 0
        self._fault_lock = threading.Lock()

    def _new_pool(self, max_size: int | None = None) -> psycopg_pool.ConnectionPool:
        return psycopg_pool.ConnectionPool(
            self.url,
            kwargs=self.kwargs,
            min_size=1,
            max_size=max_size or self.pool_size,
            open=False,
            name="batchjobs",
            reconnect_timeout=max(self.retry_for, 1.0),
        )

    def _after_fork(self) -> None:
        """In a forked child: a pool of its own, opened if the parent's was."""
        inherited = self.pool
        self._inherited.append(inherited)
        self._fault_lock = threading.Lock()
        self.pool = self._new_pool(inherited.max_size)
        if not inherited.closed:
            self.open()

    def channel(self, base: str = CHANNEL) -> str:
        """The ``NOTIFY`` channel ``base`` of this database's schema (``channel_for``)."""
        return channel_for(base, self.schema)

    def open(self) -> None:
        """Start the pool (in the background: the first transaction waits for it)."""
        self.pool.open(wait=False)

    def connect(self) -> psycopg.Connection[Any]:
        """A connection of its own, outside the pool (migrations, ``LISTEN``)."""
        return psycopg.connect(self.url, **self.kwargs)

    def close(self) -> None:
        """Close the pool; later transactions raise ``StoreClosedError``."""
        self.closed = True
        self.pool.close()

    # -- transactions --------------------------------------------------------

    def read(self, work: Callable[[psycopg.Connection[Any]], T]) -> T:
        """Run ``work`` (reads, each statement its own snapshot unless it opens a
        transaction) on a pooled connection, retried while the server is away."""
        return self._retrying(lambda: self._read_once(work))

    def write(self, work: Callable[[psycopg.Connection[Any], set[str]], T]) -> T:
        """Run ``work`` in one transaction and commit it; retried while the server is
        away, never applied twice.

        ``work`` adds to the set it is given the types of the jobs it made
        runnable: the ``COMMIT`` itself sends a ``NOTIFY`` for each.
        """
        return self._retrying(lambda: self._write_once(work))

    def write_pipelined(self, work: Callable[[psycopg.Connection[Any], set[str]], Finish[T]]) -> T:
        """As ``write``, in two round trips for the whole transaction: the ``BEGIN`` goes
        with ``work``'s first statements (sent in pipeline mode, so the first answer
        ``work`` fetches brings them all), and the ``COMMIT``, with its ``NOTIFY``s,
        with the statements ``work`` sent after its last fetch. ``work`` returns the
        way to read those last answers (called after the ``COMMIT``), and the way to
        read them again if the ``COMMIT``'s answer was lost though it committed.
        No statement waits on the client between the last fetch and the ``COMMIT``:
        a row lock taken there is held for the server's time alone.
        """
        return self._retrying(lambda: self._pipelined_once(work))

    def _pipelined_once(self, work: Callable[[psycopg.Connection[Any], set[str]], Finish[T]]) -> T:
        with self._connection() as conn:
            committing = False
            try:
                with conn.pipeline():
                    conn.execute("BEGIN READ ONLY" if self.read_only else "BEGIN", prepare=False)
                    if self.fault_timeout:
                        timeout = int(self.fault_timeout * 1000)
                        conn.execute(f"SET LOCAL lock_timeout = {timeout}", prepare=False)
                    began = conn.execute("SELECT pg_current_xact_id()::text", prepare=False)
                    wake: set[str] = set()
                    finish, recover = work(conn, wake)
                    (xid,) = began.fetchone()  # type: ignore[misc]
                    if self._take_failing_commit():
                        raise InjectedFault("the commit failed (injected by batchjobs.testing)")
                    for kind in sorted(wake):
                        conn.execute("SELECT pg_notify(%s, %s)", [self.channel(), kind])
                    conn.execute("COMMIT", prepare=False)
                    committing = True
                # Out of the pipeline: the COMMIT's round trip is back.
            except BaseException as error:
                lost = conn.broken or (isinstance(error, Exception) and _retryable(error))
                if not conn.broken:
                    with suppress(psycopg.Error):
                        conn.execute("ROLLBACK")
                if committing and lost:
                    raise _Unknown(xid, None, recover) from error
                raise
            return finish()

    def _read_once(self, work: Callable[[psycopg.Connection[Any]], T]) -> T:
        with self._connection() as conn:
            try:
                return work(conn)
            finally:
                if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                    with suppress(psycopg.Error):
                        conn.execute("ROLLBACK")

    def _write_once(self, work: Callable[[psycopg.Connection[Any], set[str]], T]) -> T:
        begin = "BEGIN READ ONLY" if self.read_only else "BEGIN"
        if self.fault_timeout:
            begin += f"; SET LOCAL lock_timeout = {int(self.fault_timeout * 1000)}"
        with self._connection() as conn:
            # One round trip, as psycopg's own BEGIN: the transaction id comes with it.
            cur = conn.execute(f"{begin}; SELECT pg_current_xact_id()::text", prepare=False)
            while cur.nextset():
                pass
            (xid,) = cur.fetchone()  # type: ignore[misc]
            try:
                wake: set[str] = set()
                result = work(conn, wake)
                if self._take_failing_commit():
                    raise InjectedFault("the commit failed (injected by batchjobs.testing)")
            except BaseException:
                if not conn.broken:
                    with suppress(psycopg.Error):
                        conn.execute("ROLLBACK")
                raise
            # One round trip: the notifications go with the COMMIT.
            commit = sql.SQL("; ").join(
                [
                    *(
                        sql.SQL("NOTIFY {}, {}").format(
                            sql.Identifier(self.channel()), sql.Literal(k)
                        )
                        for k in sorted(wake)
                    ),
                    sql.SQL("COMMIT"),
                ]
            )
            try:
                if wake:
                    conn.execute(commit, prepare=False)
                else:
                    conn.commit()  # psycopg's own, cheapest way to send COMMIT
            except psycopg.Error as error:
                if _retryable(error) or conn.broken:
                    raise _Unknown(xid, result) from error
                if not conn.broken:
                    with suppress(psycopg.Error):
                        conn.execute("ROLLBACK")
                raise
            return result

    def _take_failing_commit(self) -> bool:
        with self._fault_lock:
            if self.failing_commits <= 0:
                return False
            self.failing_commits -= 1
            return True

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[Any]]:
        if self.closed:
            raise StoreClosedError(
                f"The database {self.location} is closed", location=self.location
            )
        # getconn/putconn, not the pool's own context manager: that one also runs
        # psycopg's connection exit (a commit, a no-op here), on every call.
        conn = self.pool.getconn(timeout=self._checkout_timeout)
        try:
            yield conn
        finally:
            self.pool.putconn(conn)

    def statement(
        self,
        run: Callable[[psycopg.Connection[Any]], T],
        recover: Callable[[psycopg.Connection[Any]], T | None],
    ) -> T:
        """Run one guarded statement in its own transaction: one round trip.

        When the connection is lost while it runs, nobody knows whether it
        committed, nor whether the server is still running it: ``recover`` (a
        read on a new connection) finds its effect and answers what it
        returned, or ``None`` when it did not commit, and the statement runs
        again. A statement run again whose guard refuses it (``None``) may have
        been committed meanwhile by the lost run: ``recover`` looks again. So
        ``run`` must write nothing when its own effect is already there. While
        a fault is injected, the statement runs as ``write`` runs it, so the
        faults apply alike.
        """
        if self.read_only or self.fault_timeout or self.failing_commits:
            return self.write(lambda conn, wake: run(conn))
        lost = False

        def attempt() -> T:
            nonlocal lost
            try:
                with self._connection() as conn:
                    done = run(conn)
            except Exception as error:
                if not _retryable(error) or self.closed:
                    raise
                lost = True
                found = self._retrying(lambda: self._read_once(recover))
                if found is None:
                    raise
                return found
            if done is None and lost:
                return self._retrying(lambda: self._read_once(recover))  # type: ignore[return-value]
            return done

        return self._retrying(attempt)

    def _retrying(self, attempt: Callable[[], T]) -> T:
        deadline = time.monotonic() + self.retry_for
        delay = RETRY_DELAY
        while True:
            try:
                return attempt()
            except _Unknown as unknown:
                committed = self._committed(unknown.xid, deadline)
                if committed and unknown.recover is not None:
                    return self._recovered(unknown)
                if committed:
                    return unknown.result  # type: ignore[no-any-return]
                last: BaseException = unknown.__cause__ or unknown
            except Exception as error:
                if self.closed or not _retryable(error):
                    raise self.error(error) from error
                last = error
            if time.monotonic() + delay > deadline:
                raise self.error(last) from last
            log.warning("lost the connection to %s (%s); retrying", self.location, last)
            time.sleep(delay * (0.5 + random.random() / 2))
            delay = min(delay * 2, RETRY_DELAY_MAX)

    def _recovered(self, unknown: _Unknown) -> Any:
        """What a committed transaction whose answer was lost answered: read again."""
        recover, xid = unknown.recover, unknown.xid
        assert recover is not None
        return self._retrying(lambda: self._read_once(lambda conn: recover(conn, xid)))

    def _committed(self, xid: str, deadline: float) -> bool:
        """Whether transaction ``xid`` committed, asked until the server answers."""
        delay = RETRY_DELAY
        while True:
            try:
                with self._connection() as conn:
                    (status,) = conn.execute(  # type: ignore[misc]
                        "SELECT pg_xact_status(%s::xid8)", [xid]
                    ).fetchone()
                if status != "in progress":
                    return bool(status == "committed")
            except Exception as error:
                if self.closed or not _retryable(error) or time.monotonic() > deadline:
                    raise self.error(error) from error
            time.sleep(delay)
            delay = min(delay * 2, RETRY_DELAY_MAX)

    # -- fault injection -------------------------------------------------------

    @contextmanager
    def lock_held(self, timeout: float, tables: Iterable[str]) -> Iterator[None]:
        """Lock ``tables`` against writes from another connection; ours wait ``timeout``."""
        other = self.connect()
        try:
            other.execute("BEGIN")
            for table in tables:
                other.execute(
                    sql.SQL("LOCK TABLE {} IN EXCLUSIVE MODE").format(sql.Identifier(table))
                )
            self.fault_timeout = timeout
            yield
        finally:
            self.fault_timeout = 0.0
            other.close()

    # -- errors ------------------------------------------------------------------

    def error(self, error: BaseException) -> StoreError:
        """The ``StoreError`` for ``error``, naming the database and the problem."""
        where = self.location
        if isinstance(error, StoreError):
            return error
        if self.closed or isinstance(error, psycopg_pool.PoolClosed):
            return StoreClosedError(f"The database {where} is closed", location=where)
        text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if isinstance(error, InjectedFault):
            return StoreError(f"The database {where} failed: {text}", location=where)
        if isinstance(error, pg_errors.ReadOnlySqlTransaction):
            return StoreReadOnlyError(
                f"Cannot write to the database {where}: it is read-only ({text})", location=where
            )
        if isinstance(error, pg_errors.InsufficientPrivilege):
            return StoreReadOnlyError(
                f"Cannot write to the database {where}: permission denied ({text})",
                location=where,
            )
        if isinstance(error, pg_errors.LockNotAvailable):
            timeout = self.fault_timeout or self.lock_timeout
            return StoreLockedError(
                f"The database {where} is locked: another connection held it for more than "
                f"{timeout:g} seconds",
                location=where,
            )
        if isinstance(error, (pg_errors.UndefinedTable, pg_errors.UndefinedColumn)):
            return StoreCorruptError(
                f"The database {where} is not a batchjobs database: {text}", location=where
            )
        if isinstance(error, pg_errors.InvalidSchemaName):
            return StoreError(
                f"The database {where} has no schema to keep batch jobs in ({text}): create "
                "the schema its search_path names first (CREATE SCHEMA ...)",
                location=where,
            )
        if isinstance(error, pg_errors.DiskFull):
            return StoreError(
                f"Cannot write to the database {where}: the disk is full", location=where
            )
        if _retryable(error):
            return StoreUnreachableError(
                f"Cannot reach the database {where}: {text}", location=where
            )
        return StoreError(f"The database {where} failed: {text}", location=where)


F = TypeVar("F", bound=Callable[..., Any])


def boundary(method: F) -> F:
    """Turn psycopg errors raised by a store's ``method`` into ``StoreError``s."""

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except (psycopg.Error, psycopg_pool.PoolTimeout) as error:
            raise self._database.error(error) from error

    return wrapper  # type: ignore[return-value]


class Listener:
    """A thread that ``LISTEN``s on its own connection and calls ``callback`` on
    every notification, and once after each reconnection (notifications sent
    while it was away are lost; the callback makes up for them). ``channel`` is
    the channel's base name: the one of the connection's schema is listened to."""

    def __init__(
        self, database: Database, callback: Callable[[], None], *, channel: str = CHANNEL
    ) -> None:
        self.database = database
        self.callback = callback
        self.channel = channel
        self.ready = threading.Event()
        self._stop_read, self._stop_write = os.pipe()
        self._stopped = False
        # The thread closes the pipe as it ends, which a ``stop`` may race: once
        # closed, its descriptor numbers may name another file of this process.
        self._pipe_lock = threading.Lock()
        self._pipe_open = True
        self._thread = threading.Thread(target=self._run, name="batchjobs-listen", daemon=True)

    def start(self, timeout: float = CONNECT_TIMEOUT) -> None:
        """Start listening; returns once the ``LISTEN`` is in place (or ``timeout``)."""
        self._thread.start()
        self.ready.wait(timeout)

    def stop(self) -> None:
        """Stop listening and close the connection (returns at once)."""
        self._stopped = True
        with self._pipe_lock, suppress(OSError):
            if self._pipe_open:
                os.write(self._stop_write, b"x")

    def _run(self) -> None:
        delay = RETRY_DELAY
        first = True
        try:
            while not self._stopped:
                try:
                    with self.database.connect() as conn:
                        channel = channel_for(self.channel, tables_schema(conn))
                        conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
                        self.ready.set()
                        delay = RETRY_DELAY
                        if not first:
                            self._call()
                        first = False
                        self._listen(conn)
                except psycopg.Error as error:
                    if self._stopped:
                        break
                    log.warning(
                        "wake-ups from %s lost (%s); reconnecting", self.database.location, error
                    )
                    self.ready.set()
                    first = False
                    with suppress(OSError):
                        select.select([self._stop_read], [], [], delay)
                    delay = min(delay * 2, RETRY_DELAY_MAX)
        finally:
            with self._pipe_lock:
                self._pipe_open = False
                for fd in (self._stop_read, self._stop_write):
                    with suppress(OSError):
                        os.close(fd)

    def _listen(self, conn: psycopg.Connection[Any]) -> None:
        while not self._stopped:
            readable, _, _ = select.select([conn.fileno(), self._stop_read], [], [])
            if self._stop_read in readable:
                return
            got = False
            for _ in conn.notifies(timeout=0):
                got = True
            if got:
                self._call()
            elif conn.broken or conn.closed:
                raise psycopg.OperationalError("the connection was closed")

    def _call(self) -> None:
        try:
            self.callback()
        except Exception:
            log.exception("a wake-up receiver failed")


def _after_fork() -> None:
    for database in list(_EVERY):
        database._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)

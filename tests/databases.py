"""PostgreSQL test databases made ahead of the tests and dropped behind them.

Every ``DROP DATABASE`` makes the server run a checkpoint and waits for it; the
checkpoint writes out and syncs what every database wrote since the last one. So one
thread per test process makes the next databases while the tests run, and others drop
the used ones beside it: a test waits only when it outruns the making, never for a
drop. Databases are copied from their template file by file (``STRATEGY FILE_COPY``:
written and synced by the copy itself), not page by page through the server's
buffers and WAL (the default), which left every checkpoint, and so every drop, the
new databases' pages to write and hundreds of their files to sync: under the suite's
load a drop then took seconds, and drops made beside the copies piled up. Every test
still gets a fresh database of its own, dropped (its connections ended) once the test
is done; none is ever handed out twice.
"""

from __future__ import annotations

import os
import queue
import secrets
import threading

import psycopg

#: Databases of each kind kept ready ahead of the tests that will ask for them.
AHEAD = 2
#: Threads (each with a connection of its own) dropping the used databases.
DROPPERS = 2
_STOP = None


class Databases:
    """Fresh databases on the server at ``admin_url``, each a copy of a template (or
    empty), handed out once; the used ones and the ones left ready at ``close`` are
    dropped."""

    def __init__(self, admin_url: str) -> None:
        self._admin_url = admin_url
        self._ready: dict[str, queue.Queue[str | Exception]] = {}
        self._to_make: queue.Queue[str | None] = queue.Queue()  # templates
        self._to_drop: queue.Queue[str | None] = queue.Queue()  # databases
        self._lock = threading.Lock()
        self._closing = False
        self._failed: list[Exception] = []  # drops that failed, raised by ``close``
        self._maker = threading.Thread(target=self._make, name="test-databases", daemon=True)
        self._maker.start()
        self._droppers = [
            threading.Thread(target=self._drop, name="test-databases-drop", daemon=True)
            for _ in range(DROPPERS)
        ]
        for dropper in self._droppers:
            dropper.start()

    def url(self, name: str) -> str:
        """The URL of database ``name`` on the server."""
        return self._admin_url.rsplit("/", 1)[0] + f"/{name}"

    def take(self, template: str = "") -> str:
        """The name of a fresh database copied from ``template`` (empty if ``""``)."""
        with self._lock:
            ready = self._ready.get(template)
            if ready is None:
                ready = self._ready[template] = queue.Queue()
                for _ in range(AHEAD):
                    self._to_make.put(template)
        got = ready.get()
        self._to_make.put(template)  # one more for the next test
        if isinstance(got, Exception):
            raise got
        return got

    def drop(self, name: str) -> None:
        """Drop database ``name`` (and end its connections) soon."""
        self._to_drop.put(name)

    def close(self) -> None:
        """Drop the used databases and the ones still ready; wait for it."""
        self._closing = True  # no more databases made
        self._to_make.put(_STOP)
        self._maker.join()
        for ready in self._ready.values():
            for got in ready.queue:
                if isinstance(got, str):
                    self._to_drop.put(got)
        for _ in self._droppers:
            self._to_drop.put(_STOP)
        for dropper in self._droppers:
            dropper.join()
        if self._failed:
            raise self._failed[0]

    def _make(self) -> None:
        conn: psycopg.Connection | None = None
        while (template := self._to_make.get()) is not _STOP:
            if self._closing:
                continue
            try:
                if conn is None or conn.closed:
                    conn = psycopg.connect(self._admin_url, autocommit=True)
                name = f"batchjobs_test_{os.getpid()}_{secrets.token_hex(4)}"
                copy = f" TEMPLATE {template}" if template else ""
                if conn.info.server_version >= 150000:  # before 15, the only way
                    copy += " STRATEGY FILE_COPY"
                conn.execute(f"CREATE DATABASE {name}{copy}")
                self._ready[template].put(name)
            except Exception as error:
                if conn is not None:
                    conn.close()
                self._ready[template].put(error)  # the test waiting for it fails
        if conn is not None:
            conn.close()

    def _drop(self) -> None:
        conn: psycopg.Connection | None = None
        while (name := self._to_drop.get()) is not _STOP:
            try:
                if conn is None or conn.closed:
                    conn = psycopg.connect(self._admin_url, autocommit=True)
                conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            except Exception as error:
                if conn is not None:
                    conn.close()
                self._failed.append(error)
        if conn is not None:
            conn.close()

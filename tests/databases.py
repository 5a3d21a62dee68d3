"""PostgreSQL test databases made ahead of the tests and dropped behind them.

``CREATE DATABASE`` and ``DROP DATABASE`` each wait on the server's disk for a few
hundred milliseconds. One thread per test process makes the next databases while the
tests run and drops the used ones after, so that a test only waits when it outruns
the thread. Every test still gets a fresh database of its own, dropped (its
connections ended) once the test is done; none is ever handed out twice.
"""

from __future__ import annotations

import os
import queue
import secrets
import threading

import psycopg

#: Databases of each kind kept ready ahead of the tests that will ask for them.
AHEAD = 2
# Work for the thread, done in the order asked: the drops are not left to pile up
# for the end of the session, where every test process would wait for them.
_MAKE, _DROP, _STOP = range(3)


class Databases:
    """Fresh databases on the server at ``admin_url``, each a copy of a template (or
    empty), handed out once; the used ones and the ones left ready at ``close`` are
    dropped."""

    def __init__(self, admin_url: str) -> None:
        self._admin_url = admin_url
        self._ready: dict[str, queue.Queue[str | Exception]] = {}
        self._work: queue.Queue[tuple[int, str]] = queue.Queue()
        self._lock = threading.Lock()
        self._closing = False
        self._failed: list[Exception] = []  # drops that failed, raised by ``close``
        self._thread = threading.Thread(target=self._run, name="test-databases", daemon=True)
        self._thread.start()

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
                    self._put(_MAKE, template)
        got = ready.get()
        self._put(_MAKE, template)  # one more for the next test
        if isinstance(got, Exception):
            raise got
        return got

    def drop(self, name: str) -> None:
        """Drop database ``name`` (and end its connections) soon."""
        self._put(_DROP, name)

    def close(self) -> None:
        """Drop the used databases and the ones still ready; wait for it."""
        self._closing = True  # no more databases made
        self._put(_STOP, "")
        self._thread.join()
        left = [got for ready in self._ready.values() for got in ready.queue]
        # At the same time: each drop mostly waits on the server.
        droppers = [threading.Thread(target=self._drop_now, args=(name,)) for name in left]
        for dropper in droppers:
            dropper.start()
        for dropper in droppers:
            dropper.join()
        if self._failed:
            raise self._failed[0]

    def _drop_now(self, name: str | Exception) -> None:
        if isinstance(name, str):
            try:
                with psycopg.connect(self._admin_url, autocommit=True) as conn:
                    conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            except Exception as error:
                self._failed.append(error)

    def _put(self, what: int, argument: str) -> None:
        self._work.put((what, argument))

    def _run(self) -> None:
        conn: psycopg.Connection | None = None
        while True:
            what, argument = self._work.get()
            if what == _STOP:
                break
            if what == _MAKE and self._closing:
                continue
            try:
                if conn is None or conn.closed:
                    conn = psycopg.connect(self._admin_url, autocommit=True)
                if what == _MAKE:
                    name = f"batchjobs_test_{os.getpid()}_{secrets.token_hex(4)}"
                    copy = f" TEMPLATE {argument}" if argument else ""
                    conn.execute(f"CREATE DATABASE {name}{copy}")
                    self._ready[argument].put(name)
                else:
                    conn.execute(f"DROP DATABASE IF EXISTS {argument} WITH (FORCE)")
            except Exception as error:
                if conn is not None:
                    conn.close()
                if what == _MAKE:
                    self._ready[argument].put(error)  # the test waiting for it fails
                else:
                    self._failed.append(error)
        if conn is not None:
            conn.close()

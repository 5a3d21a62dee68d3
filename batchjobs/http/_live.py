"""Live updates for the dashboard: a feed of changed jobs, and the Server-Sent Events it makes.

A ``JobFeed`` says which jobs changed; ``SignalFeed`` hears this process's
blinker signals (and so the events a Redis relay turns into signals). Another
source, such as a durable events table, only has to implement ``JobFeed``:
the stream below does not care where changes come from, and re-reads the jobs
it watches from the store every ``poll_seconds`` anyway, so changes made by
other processes reach the page even when no event does.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import closing
from typing import Any, Protocol

from .. import signals
from ..app import BatchJobs
from ..models import BatchJob

#: Changed jobs a watch keeps between two reads; past that it asks for a full re-read.
WATCH_BACKLOG = 10_000
#: Seconds between two reads of the watched jobs from the store (and keep-alive comments).
POLL_SECONDS = 2.0
#: Seconds a stream lasts; the browser's EventSource then reconnects by itself.
STREAM_SECONDS = 300.0
#: Milliseconds the browser waits before reconnecting.
RETRY_MS = 2000


class FeedWatch(Protocol):
    """One reader's view of a feed: the jobs changed since it last asked."""

    def changes(self, timeout: float) -> list[BatchJob] | None:
        """The latest record of each job changed since the last call, oldest change first.

        Waits up to ``timeout`` seconds for one; ``[]`` when none came, and
        ``None`` once the feed is closed. A watch that fell behind returns
        ``[]`` with ``overflowed`` set: the reader re-reads what it shows.
        """

    @property
    def overflowed(self) -> bool:
        """Whether changes were dropped since the last call (read it after ``changes``)."""

    def close(self) -> None:
        """Stop watching."""


class JobFeed(Protocol):
    """A source of job changes that any number of streams watch at once."""

    def watch(self) -> FeedWatch:
        """A new watch, seeing every change from now on."""

    def close(self) -> None:
        """End every watch (their ``changes`` return ``None``), e.g. before a server stops."""


class _SignalWatch:
    def __init__(self, feed: SignalFeed) -> None:
        self._feed = feed
        self._ready = threading.Condition()
        self._latest: dict[str, BatchJob] = {}  # insertion order: oldest change first
        self._overflowed = False
        self.closed = False

    def push(self, job: BatchJob) -> None:
        with self._ready:
            self._latest.pop(job.id, None)
            if len(self._latest) >= WATCH_BACKLOG:
                self._latest.clear()
                self._overflowed = True
            self._latest[job.id] = job
            self._ready.notify_all()

    def end(self) -> None:
        with self._ready:
            self.closed = True
            self._ready.notify_all()

    def changes(self, timeout: float) -> list[BatchJob] | None:
        with self._ready:
            self._ready.wait_for(lambda: self._latest or self.closed or self._overflowed, timeout)
            if self.closed:
                return None
            changed = list(self._latest.values())
            self._latest.clear()
            return changed

    @property
    def overflowed(self) -> bool:
        with self._ready:
            overflowed, self._overflowed = self._overflowed, False
            return overflowed

    def close(self) -> None:
        self._feed._forget(self)


class SignalFeed:
    """A ``JobFeed`` from the blinker signals of one ``BatchJobs``, in this process.

    Connected to the signals while at least one watch is open; a receiver
    only copies a reference into each watch, so a job never waits for a page.
    """

    def __init__(self, jobs: BatchJobs) -> None:
        self.jobs = jobs
        self._lock = threading.Lock()
        self._watches: list[_SignalWatch] = []
        self._closed = False

    def watch(self) -> _SignalWatch:
        """A new watch; already ended when the feed is closed."""
        watch = _SignalWatch(self)
        with self._lock:
            if self._closed:
                watch.end()
                return watch
            if not self._watches:
                for event in signals.EVENTS:
                    signals.signal_for(event).connect(self._receive, sender=self.jobs)
            self._watches.append(watch)
        return watch

    def _receive(self, sender: Any, *, job: BatchJob, **extra: Any) -> None:
        for watch in self._watches[:]:  # a copy: watches come and go in other threads
            watch.push(job)

    def _forget(self, watch: _SignalWatch) -> None:
        with self._lock:
            if watch in self._watches:
                self._watches.remove(watch)
                if not self._watches:
                    self._disconnect()

    def _disconnect(self) -> None:
        for event in signals.EVENTS:
            signals.signal_for(event).disconnect(self._receive, sender=self.jobs)

    def close(self) -> None:
        """End every open watch and refuse new ones."""
        with self._lock:
            self._closed = True
            watches, self._watches = self._watches, []
            if watches:
                self._disconnect()
        for watch in watches:
            watch.end()


def sse(event: str, data: Any) -> str:
    """One Server-Sent Event, its data as JSON on one line."""
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def stream_jobs(
    feed: JobFeed,
    *,
    ids: Iterable[str],
    visible: Callable[[BatchJob], bool],
    load: Callable[[list[str]], list[BatchJob]],
    view: Callable[[BatchJob], dict[str, Any]],
    announce_new: bool = False,
    poll_seconds: float = POLL_SECONDS,
    lifetime: float = STREAM_SECONDS,
) -> Iterator[str]:
    """The events of a page watching ``ids``: ``job`` (a view) whenever one changes.

    Starts with the current view of each; ``new`` (``{"id"}``) for a job
    ``visible`` to the reader that is not watched, when ``announce_new``;
    ``end`` once every watched job rests (and nothing new is awaited), after
    which the browser should not reconnect.
    """
    watched = list(dict.fromkeys(ids))
    seen: dict[str, tuple[bool, Any, Any]] = {}
    announced: set[str] = set()
    deadline = time.monotonic() + lifetime
    with closing(feed.watch()) as watch:
        yield f"retry: {RETRY_MS}\n\n"
        pending = load(watched)
        # Jobs that are gone, or not the reader's, are not waited for.
        watched_ids = {job.id for job in pending}
        while True:
            for job in pending:
                if job.id in watched_ids:
                    mark = (job.is_resting, job.status, job.updated_at)
                    if seen.get(job.id) != mark:
                        seen[job.id] = mark
                        yield sse("job", view(job))
                elif announce_new and job.id not in announced and visible(job):
                    announced.add(job.id)
                    yield sse("new", {"id": job.id})
            if not announce_new and all(mark[0] for mark in seen.values()):
                yield sse("end", {})
                return
            if time.monotonic() >= deadline:
                return
            changed = watch.changes(timeout=poll_seconds)
            if changed is None:
                return
            if changed and not watch.overflowed:
                pending = [job for job in changed if job.id in watched_ids or visible(job)]
            else:
                # Nothing heard (another process may have moved them) or too much.
                pending = load(list(watched_ids))
                yield ": still here\n\n"

"""Wake-ups from other processes: the listeners a mirror keeps for its ``BatchJobs``."""

from __future__ import annotations

from collections.abc import Callable

from ._connection import _Outages
from ._subscription import DEFAULT_PATTERN, EventListener

#: Events a worker wakes up for: a job became claimable.
WAKE_EVENTS = ("batch.created", "batch.confirmed")


class WakeListeners:
    """Listeners on the messages of every process but ``origin``: one wakes the
    workers (``listen``), others the readers of the outbox (``watch``).

    Each also calls back after every reconnection, for the messages missed
    meanwhile; they report to ``outages``, shared with the publisher.
    """

    def __init__(self, url: str, *, prefix: str, origin: str, outages: _Outages) -> None:
        self.url = url
        self.prefix = prefix
        #: Whose messages are skipped: this process's own.
        self.origin = origin
        self._outages = outages
        self._workers: EventListener | None = None
        self._readers: list[EventListener] = []

    def listen(self, wake: Callable[[], None], timeout: float | None = None) -> bool:
        """Call ``wake()`` whenever another process creates or confirms a job, in place
        of the listener of an earlier ``listen``; returns as ``EventListener.start``."""
        self.stop_listening()
        self._workers = self._listener(lambda event: wake(), WAKE_EVENTS, wake)
        return self._workers.start(timeout)

    def watch(self, callback: Callable[[], None], timeout: float | None = None) -> bool:
        """Call ``callback()`` on every other process's event, until ``close``."""
        listener = self._listener(lambda event: callback(), None, callback)
        self._readers.append(listener)
        return listener.start(timeout)

    def _listener(
        self,
        callback: Callable[..., None],
        events: tuple[str, ...] | None,
        on_connect: Callable[[], None],
    ) -> EventListener:
        return EventListener(
            self.url,
            callback,
            prefix=self.prefix,
            events=events,
            pattern=None if events else DEFAULT_PATTERN,
            ignore_origin=self.origin,
            on_connect=on_connect,
            _outages=self._outages,
        )

    def stop_listening(self) -> None:
        """Stop the listener started by ``listen``, if any."""
        if self._workers is not None:
            self._workers.stop()
            self._workers = None

    def close(self) -> None:
        """Stop every listener."""
        self.stop_listening()
        for listener in self._readers:
            listener.stop()
        self._readers = []

    def reset_after_fork(self, origin: str) -> None:
        """In a forked child: skip the child's messages; the parent's listeners do not
        run here, and stopping them is the parent's business."""
        self.origin = origin
        self._workers = None
        self._readers = []

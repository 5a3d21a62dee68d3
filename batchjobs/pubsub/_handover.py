"""The hand-over: this process's committed events, passed to the publisher in memory."""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

from ..models import Event


class Handover:
    """The events of this process's commits, for the publisher to take in seq order.

    Committing threads ``offer`` each commit's events (cheap, never blocks);
    the publisher ``take``s those that continue its cursor exactly. What it
    cannot take from here (a commit refused when full, a gap: another
    process's events in between) it reads from the outbox.
    """

    def __init__(self) -> None:
        #: One list per commit, as offered, and those taken from there that wait
        #: for their turn, by seq.
        self._handed: deque[Sequence[Event]] = deque()
        self._waiting: list[Event] = []
        #: The last seq waiting when ``take`` last looked (0: none was waiting).
        self.newest = 0

    @property
    def pending(self) -> bool:
        """Whether any event was offered and not yet taken or forgotten."""
        return bool(self._handed or self._waiting)

    @property
    def waiting(self) -> bool:
        """Whether events taken from the commits wait for their turn (after a gap)."""
        return bool(self._waiting)

    def offer(self, events: Sequence[Event], *, limit: int) -> bool:
        """Hand over one commit's ``events``; False (not kept) when ``limit`` commits wait."""
        if len(self._handed) >= limit:
            return False
        self._handed.append(events)
        return True

    def take(self, expect: int, *, size: int, keep: int) -> list[Event] | None:
        """The events from seq ``expect`` on that follow each other (at most ``size``),
        or None if none does (a gap: the outbox has what is missing).

        Events before ``expect`` were published already (read from the
        outbox) and are dropped; beyond ``keep`` waiting, all are (the outbox
        has them all).
        """
        waiting = self._waiting
        while self._handed:
            events = self._handed.popleft()
            if waiting and events[0].seq < waiting[-1].seq:
                waiting.extend(events)
                waiting.sort(key=lambda event: event.seq)  # offered by threads out of order
            else:
                waiting.extend(events)
        if len(waiting) > keep:
            waiting.clear()  # Redis away for a while
        self.newest = waiting[-1].seq if waiting else 0
        skipped = 0
        taken: list[Event] = []
        for event in waiting:
            if event.seq < expect:
                skipped += 1
                continue
            if event.seq != expect or len(taken) == size:
                break
            taken.append(event)
            expect += 1
        del waiting[: skipped + len(taken)]
        if not taken and waiting:
            return None
        return taken or None

    def forget(self, published: int) -> None:
        """Drop the events up to seq ``published`` (published already, from the outbox)."""
        waiting = self._waiting
        while self._handed:
            waiting.extend(self._handed.popleft())
        self._waiting = sorted(
            (event for event in waiting if event.seq > published), key=lambda event: event.seq
        )

"""The mirror's cursor: its position in the outbox, a row of the database leased to one process."""

from __future__ import annotations

import time
from datetime import timedelta

from ..models import utcnow
from ..store import Store

#: How long the cursor stays leased to the process publishing (renewed each time
#: its position is written).
CURSOR_LEASE = timedelta(seconds=10)
#: Seconds between two writes of the cursor's position while publishing: what a
#: process that dies mid-stream leaves to be published again (a write transaction
#: per round would compete with the jobs' own for the database's write lock).
STORE_SECONDS = 0.5


class CursorLease:
    """One owner's hold on the cursor ``name`` of ``store``, and the position it reached.

    ``take`` leases the cursor (one guarded write: another owner's live lease
    refuses it); ``write`` stores ``seq`` and renews the lease, or gives it
    up. A cursor that does not exist yet is made at ``start``.
    """

    def __init__(self, store: Store, name: str, *, owner: str, start: int) -> None:
        self.store = store
        self.name = name
        self.owner = owner
        self.start = start
        #: The last seq published (or the cursor's, as taken).
        self.seq = 0
        #: Whether ``owner`` holds the lease.
        self.holding = False
        #: When the position was last written (monotonic).
        self.written_at = 0.0

    @property
    def write_due(self) -> bool:
        """Whether ``STORE_SECONDS`` passed since the position was last written."""
        return time.monotonic() - self.written_at >= STORE_SECONDS

    def take(self) -> bool:
        """Lease the cursor and read its position; whether ``owner`` holds it now."""
        now = utcnow()
        self.seq, self.holding = self.store.take_cursor(
            self.name, owner=self.owner, now=now, until=now + CURSOR_LEASE, start=self.start
        )
        self.written_at = time.monotonic()
        return self.holding

    def write(self, *, keep: bool) -> bool:
        """Write the position, renewing the lease if ``keep``, else giving it up.

        False (nothing written) if ``owner`` no longer holds the cursor.
        """
        until = utcnow() + CURSOR_LEASE if keep else None
        held = self.store.move_cursor(self.name, owner=self.owner, seq=self.seq, until=until)
        if held:
            self.written_at = time.monotonic()
        self.holding = held and keep
        return held

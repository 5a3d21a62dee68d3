"""The leases a runner holds: one small state machine per claim, and the heartbeat.

Every claim's lease goes through these states, and ends in exactly one of
the last three (``Leases.release`` in a ``finally`` sees to it)::

    HELD ──▶ RUNNING ──▶ DEFERRED ──▶ COMMITTED    its final checkpoint released it
      │         │           │
      ├─────────┼───────────┴──────▶ RELEASED      given back (the store is told, if it can be)
      │         ├──────────────────▶ LOST          a guard failed: canceled, paused, taken over
      └─────────┴──────────────────▶ ABANDONED     the worker is dying: left to expire

``HELD``: claimed in a batch, not started (given back by the heartbeat behind a
long job: ``claims.GIVE_BACK_AFTER``). ``RUNNING``: its job runs here.
``DEFERRED``: its job is done, its final checkpoint waits for the batch's one
commit. ``ABANDONED``: the thread is leaving with a ``BaseException`` that is
not an ``Exception`` (``SystemExit``, ``KeyboardInterrupt``, a simulated crash):
as after a ``kill -9``, the lease expires and the takeover counts an attempt,
so a poison job cannot kill workers forever (``max_attempts``).
Only live leases (the first three) are renewed by the heartbeat; a
lease that ended is never renewed again, so whatever happens to the store,
it expires by itself at worst and another worker takes the job.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta

from ..errors import StoreError
from ..models import utcnow
from ..store import Lease, Store

__all__ = ["HeldLease", "Heartbeat", "LeaseState", "Leases"]

log = logging.getLogger("batchjobs.runner")


class LeaseState(enum.Enum):
    """Where one claim's lease is."""

    HELD = "held"
    RUNNING = "running"
    DEFERRED = "deferred"
    COMMITTED = "committed"
    RELEASED = "released"
    LOST = "lost"
    ABANDONED = "abandoned"


_LIVE = frozenset({LeaseState.HELD, LeaseState.RUNNING, LeaseState.DEFERRED})
_ENDS = {LeaseState.RELEASED, LeaseState.LOST, LeaseState.ABANDONED}
_MOVES = {
    LeaseState.HELD: {LeaseState.RUNNING, *_ENDS},
    LeaseState.RUNNING: {LeaseState.DEFERRED, LeaseState.COMMITTED, *_ENDS},
    LeaseState.DEFERRED: {LeaseState.COMMITTED, *_ENDS},
}


class HeldLease:
    """One claim's lease and its state."""

    __slots__ = ("lease", "started", "state")

    def __init__(self, lease: Lease) -> None:
        self.lease = lease
        self.state = LeaseState.HELD
        #: When its job started running here (monotonic), or ``None``.
        self.started: float | None = None

    def __repr__(self) -> str:
        return f"<HeldLease {self.lease.id} {self.state.value}>"

    @property
    def live(self) -> bool:
        """Whether the lease is still ours to renew, commit or give back."""
        return self.state in _LIVE


class Leases:
    """The leases one runner holds. Thread-safe: the heartbeat reads them from its thread."""

    def __init__(self, store: Store, duration: timedelta) -> None:
        self.store = store
        self.duration = duration
        self._held: dict[str, HeldLease] = {}
        self._lock = threading.Lock()

    def forget(self) -> None:
        """In a forked child: the leases held at the fork are the parent's, which renews
        and ends them; this process holds none of them."""
        self._lock = threading.Lock()  # another thread may have held it at the fork
        self._held = {}

    def hold(self, lease: Lease) -> HeldLease:
        """Start tracking a new claim's lease (``HELD``)."""
        held = HeldLease(lease)
        with self._lock:
            self._held[lease.id] = held
        return held

    def move(self, held: HeldLease, to: LeaseState) -> None:
        """Move ``held`` to ``to``; a move the machine does not have is a bug, and raises."""
        with self._lock:
            if to not in _MOVES.get(held.state, ()):
                raise RuntimeError(f"lease of {held.lease.id}: {held.state.value} → {to.value}")
            held.state = to
            if to == LeaseState.RUNNING:
                held.started = time.monotonic()
            elif to not in _LIVE and self._held.get(held.lease.id) is held:
                del self._held[held.lease.id]

    def release(self, helds: Iterable[HeldLease]) -> None:
        """End every live one of ``helds`` as ``RELEASED``, telling the store if it can.

        Never raises: a store that cannot be told gets a warning, and the
        lease, no longer renewed, expires by itself.
        """
        live = [held for held in helds if held.live]
        if not live:
            return
        try:
            self.store.release([held.lease for held in live])
        except StoreError as error:
            log.warning(
                "could not give back %d lease(s) (%s); they expire within %s",
                len(live),
                error.message,
                self.duration,
            )
        finally:
            for held in live:
                if held.live:
                    self.move(held, LeaseState.RELEASED)

    def live(self) -> list[HeldLease]:
        """The live leases."""
        with self._lock:
            return list(self._held.values())

    def running(self) -> list[str]:
        """Ids of the jobs running here now."""
        return [h.lease.id for h in self.live() if h.state == LeaseState.RUNNING]

    def newest_start(self) -> float | None:
        """When the most recently started of the jobs running here started (monotonic)."""
        return max((h.started for h in self.live() if h.started is not None), default=None)

    def renew(self, now: datetime | None = None) -> int:
        """Extend every live lease by the lease's duration; returns how many are still held."""
        leases = [held.lease for held in self.live()]
        if not leases:
            return 0
        return len(self.store.renew(leases, (now or utcnow()) + self.duration))


class Heartbeat:
    """A thread that calls ``beat`` every ``interval`` seconds while the context lasts.

    A failing beat is logged once until one succeeds again (a database
    outage is one line, not one a second).
    """

    def __init__(self, beat: Callable[[], object], interval: float) -> None:
        self.beat = beat
        self.interval = max(interval, 0.01)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="batchjobs-heartbeat", daemon=True)
        self._failing = False

    def step(self) -> None:
        """One beat, its failure logged (once per outage)."""
        try:
            self.beat()
        except StoreError as error:
            if not self._failing:
                log.warning("could not renew leases: %s", error.message)
            self._failing = True
        else:
            self._failing = False

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.step()

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

"""Who holds a lease, and whether that holder is still alive on this host.

A runner names itself on its leases as ``host:pid:token``, the token made of
its process's token (fresh for every process, so a reused pid never passes
for an earlier process) and one of its own. Before its first claim, the
process takes an exclusive ``flock`` on a file named after its token, in a
directory of this user on this host (``holders_dir()``), and keeps it while
it lives. The kernel drops that lock when the process ends, however it ends
(``kill -9`` included), and not before, whichever pid comes next. So a
holder on this host whose file is there and not locked is dead: its leases
count as expired at once (and the claim that takes one is still the store's
one guarded write). Anything else stays with the lease's time: another
host, a file that is not there (another container's temp directory, another
user's, a platform without ``flock``), a lock that is held.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import secrets
import socket
import stat
import tempfile
import threading
import time
from collections.abc import Iterable
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: leases expire by time only
    fcntl = None  # type: ignore[assignment]

__all__ = ["STALE_AFTER", "Presence", "holders_dir", "parse_owner", "this_process"]

log = logging.getLogger("batchjobs.runner")

#: Seconds after which the file a dead process left (untouched since) is swept away.
STALE_AFTER = 24 * 3600.0
#: Seconds between two touches of a live process's file (the sweep reads its mtime).
TOUCH_EVERY = 600.0
_SUFFIX = ".holder"
_HEX = frozenset("0123456789abcdef")


def parse_owner(owner: str) -> tuple[str, int, str] | None:
    """``(host, pid, process token)`` of a runner's name on its leases, else ``None``."""
    parts = owner.rsplit(":", 2)
    if len(parts) != 3:
        return None
    host, pid, token = parts
    process = token.partition("-")[0]
    if not host or not pid.isdigit() or not process or not set(process) <= _HEX:
        return None
    return host, int(pid), process


def holders_dir() -> Path | None:
    """This user's directory of holder files on this host, made if need be; ``None``
    where it cannot be trusted or made (then leases expire by time only)."""
    if fcntl is None or not hasattr(os, "getuid"):  # pragma: no cover - not POSIX
        return None
    path = Path(tempfile.gettempdir()) / f"batchjobs-{os.getuid()}"
    try:
        path.mkdir(mode=0o700, exist_ok=True)
        info = path.lstat()
    except OSError:
        return None
    # Made by someone else first, or a link: not ours to trust.
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        return None
    return path


def _lock_free(path: Path) -> bool | None:
    """Whether nobody holds ``path``'s lock: True, False, or ``None`` (no such file)."""
    assert fcntl is not None
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        return None
    except OSError:
        return False  # unreadable: taken as alive
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    else:
        return True
    finally:
        os.close(fd)  # and so our lock, if we took it


class Presence:
    """A process's sign of life on this host: its file, locked while it lives.

    ``owner()`` names a new runner of this process; ``hold()`` makes and
    locks the file (before the first claim); ``gone(owners)`` says which
    runners' names are of processes of this host that are no longer alive.
    """

    def __init__(self, directory: Path | None = None) -> None:
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.token = secrets.token_hex(8)
        self._directory = directory
        self._fd: int | None = None
        self._touched = 0.0
        self._lock = threading.Lock()
        #: Runners of this process that may hold leases (``hold``, not ``done``).
        self._runners = 0
        #: Owners found dead: a process never comes back, so they stay so.
        self._dead: set[str] = set()

    def owner(self) -> str:
        """A new runner's name on its leases: ``host:pid:token``."""
        return f"{self.host}:{self.pid}:{self.token}-{secrets.token_hex(4)}"

    def _path(self, owner: str) -> Path | None:
        parsed = parse_owner(owner)
        if parsed is None or parsed[0] != self.host or self._directory is None:
            return None
        return self._directory / f"{parsed[2]}{_SUFFIX}"

    @property
    def held(self) -> bool:
        """Whether this process's file is made and locked."""
        return self._fd is not None

    def hold(self) -> None:
        """Make and lock this process's file if not done yet (sweeping stale ones away).

        Never raises: without its file, this process's leases expire by time.
        """
        with self._lock:
            self._runners += 1
            if self._fd is not None or fcntl is None:
                return
            if self._directory is None:
                self._directory = holders_dir()
            path = self._path(f"{self.host}:{self.pid}:{self.token}")
            if path is None:
                return
            self._sweep(path.parent)
            locked = False
            try:
                flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
                fd = os.open(path, flags, 0o600)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    locked = True
                finally:
                    if not locked:
                        # Made just now (O_EXCL): ours to remove. Left unlocked, it
                        # would say this live process died, and others take its leases.
                        with contextlib.suppress(OSError):
                            path.unlink()
                        os.close(fd)
            except OSError as error:
                log.warning("no holder file (%s): leases left by a crash expire by time", error)
                return
            self._fd = fd
            self._touched = time.monotonic()

    def done(self) -> None:
        """A runner that called ``hold`` holds no lease any more (it was closed)."""
        with self._lock:
            self._runners = max(self._runners - 1, 0)

    def touch(self) -> None:
        """Mark the file as alive now (at most every ``TOUCH_EVERY`` seconds)."""
        fd = self._fd
        if fd is None or time.monotonic() - self._touched < TOUCH_EVERY:
            return
        self._touched = time.monotonic()
        with contextlib.suppress(OSError):  # only the sweep reads it
            os.utime(fd)

    def close(self) -> None:
        """At exit: remove the file if every runner was closed, else leave it to
        say this process died (its leases are then taken over at once)."""
        with self._lock:
            fd, self._fd = self._fd, None
            if fd is None:
                return
            try:
                if self._runners == 0 and self._directory is not None:
                    (self._directory / f"{self.token}{_SUFFIX}").unlink(missing_ok=True)
            finally:
                os.close(fd)  # the lock goes with the last descriptor

    def forget(self) -> None:
        """In a forked child: let go of the parent's descriptor, keeping its lock."""
        self._lock = threading.Lock()  # another thread may have held it at the fork
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # the parent's descriptor still holds the lock

    def forked(self) -> Presence:
        """In a forked child: this process's own ``Presence`` in the same directory
        (the parent's descriptor let go of here; the parent keeps its file and lock)."""
        self.forget()
        return Presence(self._directory)

    def gone(self, owners: Iterable[str]) -> tuple[str, ...]:
        """Those of ``owners`` that are runners of dead processes of this host."""
        found = []
        for owner in owners:
            if owner not in self._dead:
                path = self._path(owner)
                if path is None or path.name == f"{self.token}{_SUFFIX}" or not _lock_free(path):
                    continue
                self._dead.add(owner)
            found.append(owner)
        return tuple(found)

    def _sweep(self, directory: Path) -> None:
        """Remove the files of dead processes untouched for ``STALE_AFTER`` seconds."""
        cutoff = time.time() - STALE_AFTER
        try:
            paths = [p for p in directory.iterdir() if p.name.endswith(_SUFFIX)]
        except OSError:
            return
        for path in paths:
            try:
                if path.lstat().st_mtime < cutoff and _lock_free(path):
                    path.unlink(missing_ok=True)
            except OSError:
                continue


_process: Presence | None = None
_process_lock = threading.Lock()


def this_process() -> Presence:
    """This process's ``Presence``, made at the first call (a forked child makes its own)."""
    global _process
    with _process_lock:
        if _process is None or _process.pid != os.getpid():
            _process = Presence()
            atexit.register(_process.close)
        return _process


def _after_fork() -> None:
    global _process, _process_lock
    _process_lock = threading.Lock()
    if _process is not None:
        _process.forget()
    _process = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)

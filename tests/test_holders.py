"""Whether a lease's holder is alive: real processes, their holder files and locks."""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from batchjobs.runner.holders import STALE_AFTER, Presence, holders_dir, parse_owner

ROOT = Path(__file__).resolve().parent.parent
HOLD = """
import sys
from pathlib import Path
from batchjobs.runner.holders import Presence
presence = Presence(Path(sys.argv[1]))
owner = presence.owner()
presence.hold()
if sys.argv[2] == "done":
    presence.done()
print(owner, flush=True)
sys.stdin.readline()
presence.close()
"""


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[Callable[..., tuple[subprocess.Popen[str], str]]]:
    """Start a process that holds a presence in ``tmp_path``; returns it and a runner's owner."""
    procs: list[subprocess.Popen[str]] = []

    def start(mode: str = "holds") -> tuple[subprocess.Popen[str], str]:
        proc = subprocess.Popen(
            [sys.executable, "-c", HOLD, str(tmp_path), mode],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        procs.append(proc)
        assert proc.stdout is not None
        return proc, proc.stdout.readline().strip()

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                stream.close()


def test_an_owner_names_its_host_its_pid_and_its_process_token(tmp_path: Path) -> None:
    presence = Presence(tmp_path)
    one, two = presence.owner(), presence.owner()
    assert one != two  # a name per runner...
    ours = (socket.gethostname(), os.getpid(), presence.token)
    assert parse_owner(one) == parse_owner(two) == ours
    assert parse_owner("w1") is None and parse_owner("h:12:") is None
    assert parse_owner("h:x:abc") is None and parse_owner("h:12:not-hex") is None
    assert parse_owner("a:b:12:abc-0f") == ("a:b", 12, "abc")  # an odd host name still parses


def test_a_live_process_is_never_gone_and_a_killed_one_is(
    tmp_path: Path, holder: Callable[..., tuple[subprocess.Popen[str], str]]
) -> None:
    proc, owner = holder()
    watcher = Presence(tmp_path)
    assert watcher.gone([owner]) == ()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert watcher.gone([owner, "w1"]) == (owner,)
    assert Presence(tmp_path).gone([owner]) == (owner,)  # any other process sees it too


def test_a_process_that_ended_with_its_runners_closed_leaves_no_sign(
    tmp_path: Path, holder: Callable[..., tuple[subprocess.Popen[str], str]]
) -> None:
    proc, owner = holder("done")
    assert proc.communicate("\n")[0] == ""
    assert list(tmp_path.iterdir()) == []  # its leases, if any, expire by time
    assert Presence(tmp_path).gone([owner]) == ()


def test_a_process_that_ended_with_a_runner_open_is_gone(
    tmp_path: Path, holder: Callable[..., tuple[subprocess.Popen[str], str]]
) -> None:
    proc, owner = holder("holds")
    proc.communicate("\n")
    assert Presence(tmp_path).gone([owner]) == (owner,)


def test_this_process_and_other_hosts_are_never_gone(tmp_path: Path) -> None:
    presence = Presence(tmp_path)
    presence.hold()
    try:
        other = Presence(tmp_path)  # another runner's view, in this same process
        assert other.gone([presence.owner()]) == ()
        stranger = f"elsewhere.example:{os.getpid()}:{presence.token}-00"
        assert other.gone([stranger]) == ()
        # A token with no file here: another container's, another user's, long gone.
        assert other.gone([f"{socket.gethostname()}:1:0123456789abcdef-00"]) == ()
    finally:
        presence.done()
        presence.close()
    assert list(tmp_path.iterdir()) == []


def test_holding_sweeps_away_old_files_of_dead_processes_only(
    tmp_path: Path, holder: Callable[..., tuple[subprocess.Popen[str], str]]
) -> None:
    live, _ = holder()
    dead, _ = holder()
    dead.kill()
    dead.wait()
    fresh_dead, _ = holder()
    fresh_dead.kill()
    fresh_dead.wait()
    files = sorted(tmp_path.iterdir(), key=lambda p: p.stat().st_mtime)
    assert len(files) == 3
    old = time.time() - STALE_AFTER - 60
    live_file = next(p for p in files if _locked(p))
    dead_files = [p for p in files if p != live_file]
    os.utime(live_file, (old, old))
    os.utime(dead_files[0], (old, old))
    presence = Presence(tmp_path)
    presence.hold()
    try:
        left = set(tmp_path.iterdir())
        assert live_file in left and dead_files[1] in left and dead_files[0] not in left
    finally:
        presence.done()
        presence.close()


def test_a_file_that_cannot_be_locked_is_removed_and_its_descriptor_closed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import fcntl

    def no_locks(fd: int, operation: int) -> None:  # as a file system without flock answers
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    presence = Presence(tmp_path)
    descriptors = len(os.listdir("/proc/self/fd"))
    with monkeypatch.context() as patch:
        patch.setattr(fcntl, "flock", no_locks)
        presence.hold()
    assert not presence.held and "no holder file" in caplog.text
    assert len(os.listdir("/proc/self/fd")) == descriptors  # nothing left open
    # No unlocked file left to say this live process died (others would take its leases).
    assert list(tmp_path.iterdir()) == []
    assert Presence(tmp_path).gone([presence.owner()]) == ()
    try:
        presence.hold()  # the next runner's hold makes and locks the file
        assert presence.held and _locked(tmp_path / f"{presence.token}.holder")
    finally:
        presence.done()
        presence.done()
        presence.close()
    assert list(tmp_path.iterdir()) == []


def _locked(path: Path) -> bool:
    import fcntl

    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)


def test_the_holders_directory_is_this_user_s_alone() -> None:
    path = holders_dir()
    assert path is not None
    info = path.lstat()
    assert info.st_uid == os.getuid() and info.st_mode & 0o777 == 0o700

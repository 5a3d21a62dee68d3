"""The Redis mirror: every event on pub/sub, wake-ups across processes, no harm when Redis fails.

Tests marked ``redis`` use the shared server (``redis_url``) with a channel
prefix of their own, or private ``redis-server`` processes they kill and
restart.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner

import batchjobs.pubsub._mirror as mirror_module
from batchjobs import BatchJob, BatchJobs, Status, signals
from batchjobs.cli import cli
from batchjobs.models import Event, utcnow
from batchjobs.pubsub import (
    CURSOR_LEASE,
    STORE_SECONDS,
    EventListener,
    RedisMirror,
    RemoteEvent,
    Subscription,
    check_url,
    relay_to_signals,
)
from batchjobs.store import SQLiteStore
from tests.strategies import read_ledger

ROOT = Path(__file__).resolve().parent.parent
DESIGN_KEYS = {"event", "id", "type", "status", "result", "at"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _mirror_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "batchjobs.pubsub"
        and r.levelno == logging.WARNING
        and "mirror" in r.getMessage()
    ]


def _until(condition: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Wait until ``condition()`` is truthy; its value."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)
    return value


def _next_event(
    sub: Subscription, match: Callable[[RemoteEvent], bool], timeout: float = 10.0
) -> RemoteEvent:
    """The first event from ``sub`` that ``match``es."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        event = sub.get(timeout=0.1)
        if event is not None and match(event):
            return event
    raise AssertionError("the event did not arrive in time")


def _record_events(jobs: BatchJobs) -> list[tuple[str, BatchJob]]:
    """Every local event of ``jobs``, in order."""
    seen: list[tuple[str, BatchJob]] = []
    for event in signals.EVENTS:
        jobs.subscribe(event, lambda sender, *, job, _e=event, **extra: seen.append((_e, job)))
    return seen


@pytest.fixture
def prefix() -> str:
    """A channel prefix of the test's own."""
    return f"test-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def unreachable_url() -> str:
    """A Redis URL nobody listens on."""
    return f"redis://127.0.0.1:{_free_port()}/0"


class RedisServer:
    """A private ``redis-server`` on a free port, to kill and restart."""

    def __init__(self, binary: str, workdir: Path, *options: str) -> None:
        self.binary = binary
        self.workdir = workdir
        self.options = options
        self.port = _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[str] | None = None
        self._drain: threading.Thread | None = None

    def start(self) -> None:
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1"]
        args += ["--save", "", "--appendonly", "no", "--dir", str(self.workdir), *self.options]
        process = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        assert process.stdout is not None
        for line in process.stdout:
            if "Ready to accept connections" in line:
                break
        else:
            raise RuntimeError(f"redis-server on port {self.port} did not start")
        # Keep reading its log so that a full pipe never blocks it.
        self._drain = threading.Thread(target=process.stdout.read, daemon=True)
        self._drain.start()
        self.process = process

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            assert self._drain is not None and self.process.stdout is not None
            self._drain.join()
            self.process.stdout.close()
            self.process = None


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    """Start private Redis servers; killed after the test."""
    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is not installed in CI")
        pytest.skip("redis-server is not installed")
    servers: list[RedisServer] = []

    def make(*options: str) -> RedisServer:
        server = RedisServer(binary, tmp_path, *options)
        server.start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.kill()


# -- the message ------------------------------------------------------------------


@pytest.mark.redis
def test_every_lifecycle_event_arrives_in_order_as_json(
    make_jobs: Callable[..., BatchJobs], redis_url: str, prefix: str
) -> None:
    client = redis.Redis.from_url(redis_url)
    listener = client.pubsub()
    listener.psubscribe(f"{prefix}:*")
    assert listener.get_message(timeout=5)["type"] == "psubscribe"
    jobs = make_jobs(redis_url=redis_url, channel_prefix=prefix)
    local = _record_events(jobs)
    first = jobs.create("words", {"words": list("abcde")})
    dry = jobs.create("words", {"words": ["x"]}, dry_run=True)
    jobs.run_until_idle(timeout=10)
    jobs.confirm(dry.id)
    jobs.run_until_idle(timeout=10)
    jobs.cancel(jobs.create("words", {"words": []}).id)

    received = []
    while len(received) < len(local):
        message = listener.get_message(timeout=5)
        assert message is not None, f"only {len(received)} of {len(local)} events arrived"
        received.append(message)
    listener.close()
    client.close()

    assert [m["channel"].decode() for m in received] == [f"{prefix}:{e}" for e, _ in local]
    for message, (event, job) in zip(received, local, strict=True):
        data = json.loads(message["data"])
        assert DESIGN_KEYS <= set(data) <= DESIGN_KEYS | {"origin", "seq"}
        assert data["event"] == event
        assert (data["id"], data["type"], data["status"]) == (job.id, job.type, job.status.value)
        assert data["result"] == job.result
        assert data["origin"] == jobs.origin
        assert data["at"].endswith("+00:00")
    seqs = [json.loads(m["data"])["seq"] for m in received]
    assert seqs == list(range(1, len(local) + 1))  # in seq order, none missing
    events_of_first = [e for e, job in local if job.id == first.id]
    assert events_of_first[:4] == [
        "batch.created",
        "batch.pre_processed",
        "batch.confirmed",
        "batch.processing",
    ]
    assert events_of_first[-1] == "batch.completed"
    # Subscribers may hear a message before the publisher has read Redis's reply.
    _until(lambda: jobs.mirror.stats.published == len(local))


@pytest.mark.redis
def test_each_message_has_the_result_as_it_was_at_its_event(
    make_jobs: Callable[..., BatchJobs], redis_url: str, prefix: str
) -> None:
    jobs = make_jobs(redis_url=redis_url, channel_prefix=prefix)
    job = jobs.create("words", {"words": []})
    with Subscription(redis_url, prefix=prefix, pattern="batch.updated") as sub:
        assert sub.connect()
        jobs.update(job.id, result={"count": 1})
        jobs.update(job.id, result={"note": "later"})
        first, second = (_next_event(sub, lambda e: True) for _ in range(2))
    assert (first.result, first.seq) == ({"count": 1}, 2)
    assert (second.result, second.seq) == ({"count": 1, "note": "later"}, 3)


def test_the_mirror_writes_the_keys_the_listeners_read() -> None:
    from batchjobs.pubsub import MESSAGE_KEYS, message

    job = BatchJob(id='batch_"1"', type="wörds", status=Status.COMPLETED, result={"n": [1]})
    at = utcnow()
    data = message(Event(41, "batch.completed", job, at, "host:1:ab"))
    parsed = json.loads(data)
    assert tuple(parsed) == MESSAGE_KEYS  # in that order
    event = RemoteEvent.parse("batchjobs:batch.completed", data)
    assert event is not None and event.to_dict() == parsed
    assert (event.id, event.type, event.status, event.result, event.seq) == (
        'batch_"1"',
        "wörds",
        "completed",
        {"n": [1]},
        41,
    )
    assert event.origin == "host:1:ab" and event.at == at.isoformat()


def _commit(*seqs: int) -> list[Event]:
    """One commit's events, of one job, with these seqs."""
    job = BatchJob(id="batch_1", type="words", status=Status.CREATED)
    return [Event(seq, "batch.updated", job, utcnow()) for seq in seqs]


def test_the_hand_over_gives_the_events_that_continue_the_cursor_in_seq_order() -> None:
    from batchjobs.pubsub._handover import Handover

    handover = Handover()
    assert handover.offer(_commit(3, 4), limit=2) and handover.offer(_commit(1, 2), limit=2)
    assert not handover.offer(_commit(5), limit=2)  # full: left to the outbox
    taken = handover.take(1, size=3, keep=100)  # commits noted out of order come sorted
    assert [e.seq for e in taken or []] == [1, 2, 3]
    assert handover.newest == 4 and handover.pending and handover.waiting
    assert [e.seq for e in handover.take(4, size=3, keep=100) or []] == [4]
    assert not handover.pending
    handover.offer(_commit(6, 7), limit=2)
    assert handover.take(5, size=3, keep=100) is None  # seq 5 is missing: a gap
    assert handover.waiting  # 6 and 7 wait for their turn
    assert [e.seq for e in handover.take(6, size=3, keep=100) or []] == [6, 7]


def test_the_hand_over_drops_what_was_published_from_the_outbox_or_waits_too_long() -> None:
    from batchjobs.pubsub._handover import Handover

    handover = Handover()
    handover.offer(_commit(1, 2, 3), limit=10)
    assert [e.seq for e in handover.take(3, size=10, keep=100) or []] == [3]  # 1, 2 dropped
    handover.offer(_commit(4, 5, 6), limit=10)
    handover.forget(5)
    assert [e.seq for e in handover.take(6, size=10, keep=100) or []] == [6]
    handover.offer(_commit(8, 9, 10), limit=10)
    assert handover.take(7, size=10, keep=2) is None  # more than keep wait: all dropped
    assert not handover.pending and handover.newest == 0


@pytest.mark.redis
def test_events_committed_while_redis_is_away_are_published_in_order_once_it_is_back(
    redis_server: Callable[..., RedisServer], prefix: str, db_path: Path
) -> None:
    server = redis_server()
    server.kill()
    store = SQLiteStore(db_path)
    mirror = RedisMirror(store, server.url, prefix=prefix, origin="test")
    jobs_before = [BatchJob(id=f"batch_{i}", type="t", status=Status.CREATED) for i in range(3)]
    for job in jobs_before:
        store.insert(job.replace(created_at=utcnow(), updated_at=utcnow()))
    assert mirror.publish_pending() is False  # Redis away: the cursor stays
    assert mirror.stats.down and mirror.stats.behind == 3
    server.start()
    with Subscription(server.url, prefix=prefix) as sub:
        assert sub.connect()
        store.insert(BatchJob(id="batch_9", type="t", status=Status.CREATED, created_at=utcnow()))
        assert mirror.publish_pending() is True
        received = [_next_event(sub, lambda e: True) for _ in range(4)]
    assert [(e.seq, e.id) for e in received] == [
        (1, "batch_0"),
        (2, "batch_1"),
        (3, "batch_2"),
        (4, "batch_9"),
    ]
    assert (mirror.stats.published, mirror.stats.behind, mirror.stats.down) == (4, 0, False)
    again = RedisMirror(store, server.url, prefix=prefix, origin="another process")
    assert again.publish_pending() is True and again.stats.published == 0  # the cursor is shared
    again.close()
    mirror.close()
    store.close()


def test_remote_events_are_never_mirrored_back(
    make_jobs: Callable[..., BatchJobs], unreachable_url: str
) -> None:
    jobs = make_jobs(redis_url=unreachable_url)
    job = BatchJob(id="batch_remote", type="words", status=Status.COMPLETED)
    signals.emit("batch.completed", jobs, job, seq=7, remote=True)
    assert jobs.last_seq() == 0  # only commits write events; the mirror reads only those
    assert jobs.mirror.stats.published == 0


# -- the publisher: the hand-over, the cursor -----------------------------------------


@pytest.mark.redis
@pytest.mark.backends("sqlite", "postgres")
def test_events_of_another_process_between_those_handed_over_go_out_in_seq_order(
    make_jobs: Callable[..., BatchJobs], redis_url: str, prefix: str
) -> None:
    mirrored = make_jobs(redis_url=redis_url, channel_prefix=prefix)
    # Another process on the same database, without a mirror: its events reach the
    # publisher only through the outbox, between those handed over in memory.
    other = make_jobs()
    with Subscription(redis_url, prefix=prefix) as sub:
        assert sub.connect()
        ids = []
        for _ in range(15):
            ids.append(mirrored.create("words", {"words": []}).id)
            ids.append(other.create("words", {"words": []}).id)
            ids.append(other.create("words", {"words": []}).id)
        mirrored.update(ids[0], result={"note": "last"})
        received = [_next_event(sub, lambda e: True) for _ in range(len(ids) + 1)]
    assert [e.seq for e in received] == list(range(1, len(ids) + 2))  # in order, no gap
    assert [e.id for e in received] == [*ids, ids[0]]
    assert [e.origin for e in received[:3]] == [mirrored.origin, other.origin, other.origin]
    assert received[-1].result == {"note": "last"}
    _until(lambda: mirrored.mirror.stats.published == len(ids) + 1)


@pytest.mark.redis
@pytest.mark.backends("sqlite", "postgres")
def test_the_process_holding_the_cursor_publishes_another_process_events_meanwhile(
    make_jobs: Callable[..., BatchJobs],
    redis_url: str,
    prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(mirror_module, "IDLE_SECONDS", 60)  # here keeps the cursor throughout
    here = make_jobs(redis_url=redis_url, channel_prefix=prefix)
    there = make_jobs(redis_url=redis_url, channel_prefix=prefix)
    with Subscription(redis_url, prefix=prefix) as sub:
        assert sub.connect()
        first = here.create("words", {"words": []})
        assert _next_event(sub, lambda e: True).id == first.id
        second = there.create("words", {"words": []})  # finds the cursor taken
        event = _next_event(sub, lambda e: True)
    assert (event.seq, event.id, event.origin) == (2, second.id, there.origin)
    _until(lambda: here.mirror.stats.published == 2)
    assert there.mirror.stats.published == 0


@pytest.mark.redis
def test_commits_beyond_what_the_hand_over_holds_are_read_from_the_outbox(
    make_jobs: Callable[..., BatchJobs],
    redis_url: str,
    prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(mirror_module, "HANDOFF_LIMIT", 0)  # every commit left to the outbox
    monkeypatch.setattr(mirror_module, "IDLE_SECONDS", 60)  # no idle look to fall back on
    jobs = make_jobs(redis_url=redis_url, channel_prefix=prefix)
    with Subscription(redis_url, prefix=prefix) as sub:
        assert sub.connect()
        ids = [jobs.create("words", {"words": []}).id for _ in range(10)]
        received = [_next_event(sub, lambda e: True) for _ in ids]
    assert [(e.seq, e.id) for e in received] == list(enumerate(ids, start=1))


@pytest.mark.redis
@pytest.mark.backends("sqlite", "postgres")
def test_an_idle_publisher_writes_its_position_and_gives_the_cursor_up(
    make_jobs: Callable[..., BatchJobs], redis_url: str, prefix: str
) -> None:
    jobs = make_jobs(redis_url=redis_url, channel_prefix=prefix)
    for _ in range(5):
        jobs.create("words", {"words": ["a"]})
    last = jobs.last_seq()
    _until(lambda: jobs.mirror.stats.published == last)
    # Another process's mirror waits while this one publishes (it keeps the cursor
    # while events keep coming), then takes over from where it stopped: nothing twice.
    again = RedisMirror(jobs.store, redis_url, prefix=prefix, origin="another process")
    assert _until(lambda: again.publish_pending() is True)
    assert again.stats.published == 0
    jobs.create("words", {"words": []})  # this process takes the cursor back
    _until(lambda: jobs.mirror.stats.published == last + 1)
    again.close()


PUBLISHER = """
import sys
from batchjobs import BatchJobs
from tests.strategies import ALL

db, url, prefix = sys.argv[1:4]
jobs = BatchJobs(db, redis_url=url, channel_prefix=prefix)
for strategy in ALL:
    jobs.register(strategy)
jobs.create("ledger", {"n": 1_000_000, "sleep": 0.002})
jobs.run_until_idle()
"""


@pytest.mark.redis
def test_a_publisher_killed_mid_stream_leaves_what_it_published_since_its_last_write(
    redis_url: str, prefix: str, db_path: Path
) -> None:
    with Subscription(redis_url, prefix=prefix) as sub:
        assert sub.connect()
        child = subprocess.Popen(
            [sys.executable, "-c", PUBLISHER, str(db_path), redis_url, prefix], cwd=ROOT
        )
        heard: list[RemoteEvent] = []
        try:
            # Long enough for the publisher to write its position while it keeps publishing.
            while not heard or heard[-1].seq < 2 * STORE_SECONDS / 0.002:
                event = sub.get(timeout=10)
                assert event is not None, "the publisher process went quiet"
                heard.append(event)
        finally:
            child.kill()
            child.wait()
        while (event := sub.get(timeout=0.5)) is not None:
            heard.append(event)
        store = SQLiteStore(db_path)
        again = RedisMirror(store, redis_url, prefix=prefix, origin="another process")
        # The dead process's lease has not expired: the cursor stays where it last wrote it,
        # which it did while it kept publishing (it never went idle).
        now = utcnow()
        stored, held = store.take_cursor(
            again.cursor, owner="probe", now=now, until=now + CURSOR_LEASE, start=0
        )
        assert not held and 0 < stored <= heard[-1].seq
        # Once the lease has expired, another process takes over from that position.
        later = now + CURSOR_LEASE
        taken = store.take_cursor(again.cursor, owner="probe", now=later, until=later, start=0)
        assert taken == (stored, True)
        assert store.move_cursor(again.cursor, owner="probe", seq=stored)
        _until(lambda: again.publish_pending() is True)
        republished = []
        while (event := sub.get(timeout=0.5)) is not None:
            republished.append(event)
    last = store.last_seq()
    assert [e.seq for e in heard] == list(range(1, len(heard) + 1))
    assert [e.seq for e in republished] == list(range(stored + 1, last + 1))  # in order
    # At least once: what the dead process published after its last write goes out again.
    assert {e.seq for e in heard} | {e.seq for e in republished} == set(range(1, last + 1))
    again.close()
    store.close()


# -- failures ------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["notaurl", "redis://usr:secret@localhost:port/0"])
def test_a_malformed_url_is_refused_at_once_without_its_credentials(url: str) -> None:
    with pytest.raises(ValueError, match="is not a Redis URL") as refused:
        check_url(url)
    assert "secret" not in str(refused.value)
    assert str(refused.value).startswith(repr(url.replace("usr:secret@", "")))
    with pytest.raises(ValueError, match="is not a Redis URL"):
        Subscription(url)


def test_jobs_run_when_redis_is_unreachable_from_the_start(
    make_jobs: Callable[..., BatchJobs], unreachable_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    jobs = make_jobs(redis_url=unreachable_url, poll_interval=0.05)
    ids = [jobs.create("words", {"words": list("abcdef")}).id for _ in range(5)]
    began = time.monotonic()
    jobs.start()
    assert time.monotonic() - began < 2.0
    for id in ids:
        assert jobs.wait(id, timeout=10).status == Status.COMPLETED
    jobs.close()
    stats = jobs.mirror.stats
    assert stats.published == 0
    assert stats.outages == 1
    assert len(_mirror_warnings(caplog)) == 1


@pytest.mark.redis
def test_jobs_outlive_a_redis_restart_and_publishing_resumes(
    make_jobs: Callable[..., BatchJobs],
    redis_server: Callable[..., RedisServer],
    prefix: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="batchjobs.pubsub")
    server = redis_server()
    sub = Subscription(server.url, prefix=prefix)
    assert sub.connect()
    jobs = make_jobs(redis_url=server.url, channel_prefix=prefix, poll_interval=0.05)
    local = _record_events(jobs)
    ledger = tmp_path / "ledger"
    job = jobs.create("ledger", {"n": 300, "sleep": 0.02, "ledger": str(ledger)})
    jobs.start()
    _next_event(sub, lambda e: e.event == "batch.updated" and e.id == job.id)

    server.kill()
    assert jobs.wait(job.id, timeout=20).status == Status.COMPLETED
    assert read_ledger(ledger) == [str(i) for i in range(300)]
    assert jobs.mirror.stats.down

    server.start()
    heard = []
    _until(lambda: (event := sub.get(timeout=0.05)) and heard.append(event) or sub.connected)
    second = jobs.create("words", {"words": ["a"]})
    heard.append(_next_event(sub, lambda e: e.event == "batch.completed" and e.id == second.id))
    sub.close()
    mirror = jobs.mirror
    _until(
        lambda: (
            (mirror.stats.published, mirror.stats.behind, mirror.stats.down)
            == (len(local), 0, False)
        )
    )
    stats = mirror.stats
    assert (stats.behind, stats.outages, stats.down) == (0, 1, False)
    seqs = [event.seq for event in heard]
    assert seqs == sorted(seqs) and seqs[-1] == jobs.last_seq()  # resumed in order
    assert len(_mirror_warnings(caplog)) == 1
    assert any("is back" in r.getMessage() and "mirror" in r.getMessage() for r in caplog.records)


@pytest.mark.redis
def test_a_slow_redis_never_slows_a_job(
    make_jobs: Callable[..., BatchJobs], redis_server: Callable[..., RedisServer], prefix: str
) -> None:
    server = redis_server()
    sub = Subscription(server.url, prefix=prefix, pattern="batch.completed")
    assert sub.connect()
    jobs = make_jobs(redis_url=server.url, channel_prefix=prefix)
    job = jobs.create("ledger", {"n": 200})
    with redis.Redis.from_url(server.url) as client:
        client.client_pause(1000, all=True)
    began = time.monotonic()
    jobs.run_until_idle(timeout=10)
    assert time.monotonic() - began < 0.5
    assert _next_event(sub, lambda e: e.id == job.id).status == "completed"
    sub.close()


class SilentServer:
    """Accepts connections and reads what comes, never answering: Redis stuck."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"redis://127.0.0.1:{self._listener.getsockname()[1]}/0"
        self.accepted = 0
        self.received = threading.Event()
        self.hung_up = threading.Event()  # the client closed its end
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        with self._listener:
            while True:
                try:
                    conn, _ = self._listener.accept()
                except OSError:
                    return
                self.accepted += 1
                with conn:
                    while conn.recv(65536):
                        self.received.set()
                self.hung_up.set()

    def close(self) -> None:
        self._listener.close()


def test_close_releases_the_connection_even_when_redis_does_not_answer(
    make_jobs: Callable[..., BatchJobs], caplog: pytest.LogCaptureFixture
) -> None:
    server = SilentServer()
    jobs = make_jobs(redis_url=server.url)
    jobs.create("words", {"words": ["a"]})
    assert server.received.wait(5)
    began = time.monotonic()
    jobs.mirror.close(timeout=0.1)
    assert time.monotonic() - began < 0.5
    assert server.hung_up.wait(0.5)  # not after the 2 s socket timeout
    time.sleep(0.1)
    server.close()
    assert (server.accepted, jobs.mirror.stats.published) == (1, 0)
    assert jobs.mirror.stats.behind == 1  # still in the outbox, for the next mirror
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.redis
def test_a_server_that_refuses_scripts_gets_a_pipeline_of_publishes(
    make_jobs: Callable[..., BatchJobs],
    redis_server: Callable[..., RedisServer],
    prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="batchjobs.pubsub")
    server = redis_server("--rename-command", "EVAL", "")
    sub = Subscription(server.url, prefix=prefix)
    assert sub.connect()
    jobs = make_jobs(redis_url=server.url, channel_prefix=prefix)
    local = _record_events(jobs)
    job = jobs.create("words", {"words": list("abcde")})
    jobs.run_until_idle(timeout=10)
    received = [_next_event(sub, lambda e: True) for _ in local]
    sub.close()
    assert [(e.event, e.id) for e in received] == [(event, job.id) for event, _ in local]
    _until(lambda: jobs.mirror.stats.published == len(local))
    assert not _mirror_warnings(caplog)
    assert any("refused the publishing script" in r.getMessage() for r in caplog.records)


# -- following -------------------------------------------------------------------


@pytest.mark.redis
def test_a_subscription_filters_by_pattern_and_origin(
    make_jobs: Callable[..., BatchJobs], redis_url: str, prefix: str
) -> None:
    ours = make_jobs(redis_url=redis_url, channel_prefix=prefix)
    theirs = make_jobs(redis_url=redis_url, channel_prefix=prefix)
    with Subscription(
        redis_url, prefix=prefix, pattern="batch.c*", ignore_origin=ours.mirror.origin
    ) as sub:
        assert sub.connect()
        with redis.Redis.from_url(redis_url) as client:
            client.publish(f"{prefix}:batch.created", b"not json")
        ours.create("words", {"words": ["a"]})
        ours.run_until_idle(timeout=10)
        job = theirs.create("words", {"words": ["b"]})
        theirs.run_until_idle(timeout=10)
        events = []
        for event in sub:
            events.append((event.event, event.id))
            if event.event == "batch.completed":
                break
    assert events == [
        ("batch.created", job.id),
        ("batch.confirmed", job.id),
        ("batch.completed", job.id),
    ]


@pytest.mark.redis
def test_a_listener_re_emits_remote_events_as_signals(
    make_jobs: Callable[..., BatchJobs], redis_url: str, prefix: str
) -> None:
    here = make_jobs(redis_url=redis_url, channel_prefix=prefix)
    there = make_jobs(redis_url=redis_url, channel_prefix=prefix)
    got: list[tuple[Any, BatchJob, bool]] = []
    completed = threading.Event()

    @there.subscribe("batch.completed")
    def on_completed(sender: Any, *, job: BatchJob, seq: int, remote: bool = False) -> None:
        got.append((sender, job, seq, remote))
        completed.set()

    listener = EventListener(redis_url, relay_to_signals(there), prefix=prefix)
    assert listener.start()
    try:
        job = here.create("words", {"words": ["a"]})
        here.run_until_idle(timeout=10)
        assert completed.wait(10)
    finally:
        listener.stop()
    completed_seq = here.events(job_id=job.id)[-1].seq
    assert got == [(there, here.retrieve(job.id), completed_seq, True)]
    assert there.mirror.stats.published == 0


@pytest.mark.redis
def test_a_listener_stopped_can_start_again(redis_url: str, prefix: str) -> None:
    heard: list[str] = []
    listener = EventListener(redis_url, lambda event: heard.append(event.id), prefix=prefix)

    def threads() -> int:
        return sum(t.name == "batchjobs-redis-listener" for t in threading.enumerate())

    others = threads()

    def publish(id: str) -> None:
        message = json.dumps({"event": "batch.created", "id": id, "type": "words"})
        with redis.Redis.from_url(redis_url) as client:
            client.publish(f"{prefix}:batch.created", message)

    assert listener.start()
    publish("batch_1")
    _until(lambda: heard == ["batch_1"])
    listener.stop()
    publish("batch_2")  # nobody listens
    assert listener.start()
    assert listener.start()  # already running: the same thread
    assert threads() == others + 1
    publish("batch_3")
    _until(lambda: "batch_3" in heard)
    listener.stop()
    assert heard == ["batch_1", "batch_3"]
    assert threads() == others


# -- wake-ups across processes ---------------------------------------------------

WORKER = """
import sys
from batchjobs import BatchJobs
from tests.strategies import ALL

db, url, prefix = sys.argv[1:4]
with BatchJobs(db, redis_url=url, channel_prefix=prefix, poll_interval=30) as jobs:
    for strategy in ALL:
        jobs.register(strategy)
    jobs.start()
    print("ready", flush=True)
    sys.stdin.readline()
"""


@pytest.mark.slow
@pytest.mark.redis
def test_a_worker_in_another_process_picks_a_job_up_within_a_second(
    make_jobs: Callable[..., BatchJobs], redis_url: str, prefix: str, db_path: Path
) -> None:
    here = make_jobs(redis_url=redis_url, channel_prefix=prefix)
    with subprocess.Popen(
        [sys.executable, "-c", WORKER, str(db_path), redis_url, prefix],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as worker:
        assert worker.stdin is not None and worker.stdout is not None
        try:
            assert worker.stdout.readline().strip() == "ready"
            for _ in range(3):
                began = time.monotonic()
                job = here.create("words", {"words": ["a", "b"]})
                assert here.wait(job.id, timeout=5).status == Status.COMPLETED
                assert time.monotonic() - began < 1.0
        finally:
            worker.stdin.write("\n")
            worker.stdin.flush()
            assert worker.wait(timeout=10) == 0


# -- batchjobs events --------------------------------------------------------------


@pytest.fixture
def tail() -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """Start ``batchjobs events`` in a subprocess, returned once it follows the channels;
    those still running after the test are killed."""
    started: list[subprocess.Popen[str]] = []

    def start(db: Path, url: str, prefix: str, *options: str) -> subprocess.Popen[str]:
        process = subprocess.Popen(
            [sys.executable, "-m", "batchjobs.cli", "--db", str(db), "--redis", url]
            + ["events", "--redis", "--prefix", prefix, *options],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        started.append(process)
        assert process.stderr is not None
        assert process.stderr.readline().startswith(f"Following {prefix}:")
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
        process.communicate()


@pytest.mark.redis
def test_the_events_command_tails_the_mirror(
    make_jobs: Callable[..., BatchJobs],
    redis_url: str,
    prefix: str,
    db_path: Path,
    tail: Callable[..., subprocess.Popen[str]],
) -> None:
    lines = tail(db_path, redis_url, prefix, "--pattern", "batch.c*")
    as_json = tail(db_path, redis_url, prefix, "--json", "--count", "3")
    jobs = make_jobs(redis_url=redis_url, channel_prefix=prefix)
    job = jobs.create("words", {"words": ["a", "b"]})
    jobs.run_until_idle(timeout=10)
    with lines, as_json:
        assert lines.stdout is not None and lines.stderr is not None
        seen = [lines.stdout.readline().split() for _ in range(3)]
        lines.send_signal(signal.SIGINT)
        assert lines.wait(timeout=10) == 130  # interrupted
        assert lines.stderr.read().strip() == "Stopped."
        out, _ = as_json.communicate(timeout=10)
        assert as_json.returncode == 0
    assert [line[1:5] for line in seen] == [
        ["batch.created", job.id, "words", "created"],
        ["batch.confirmed", job.id, "words", "confirmed"],
        ["batch.completed", job.id, "words", "completed"],
    ]
    assert seen[2][5:] == ["2/2"]
    messages = [json.loads(line) for line in out.splitlines()]
    assert [m["event"] for m in messages] == [
        "batch.created",
        "batch.pre_processed",
        "batch.confirmed",
    ]
    assert {m["id"] for m in messages} == {job.id}
    assert set(messages[0]) == DESIGN_KEYS | {"origin", "seq"}


def test_the_events_command_needs_a_reachable_redis(db_path: Path, unreachable_url: str) -> None:
    runner = CliRunner()
    result = runner.invoke(cli, ["--db", str(db_path), "events", "--redis"])
    assert result.exit_code == 2
    assert "events --redis needs Redis" in result.output
    result = runner.invoke(
        cli, ["--db", str(db_path), "--redis", unreachable_url, "events", "--redis"]
    )
    assert result.exit_code == 2
    assert f"Cannot reach Redis at {unreachable_url}" in result.output


@pytest.mark.redis
def test_a_subscriber_cut_off_for_falling_behind_says_so_and_resubscribes(
    own_redis: Callable[..., str], caplog: pytest.LogCaptureFixture
) -> None:
    # A server of the test's own, with a small pub/sub buffer: the shared one's is 32 MB.
    url = own_redis("--client-output-buffer-limit", "pubsub 64kb 32kb 60")
    subscription = Subscription(url, pattern="batch.*")
    publisher = redis.Redis.from_url(url)
    try:
        assert subscription.connect(report=False), subscription.last_error
        message = json.dumps({"event": "batch.updated", "id": "batch_1", "x": "a" * 1000})
        for _ in range(200):  # 200 kB that the subscriber does not read: past the limit
            publisher.publish("batchjobs:batch.updated", message)
        caplog.set_level(logging.WARNING, logger="batchjobs.pubsub")
        deadline = time.monotonic() + 10
        while subscription.lost == 0:  # what was buffered before the cut, then the cut
            assert time.monotonic() < deadline, "Redis never cut the subscriber"
            subscription.get(timeout=0.1)
        assert "closed this subscriber for falling behind" in caplog.text
        assert "events published until it is back are lost" in caplog.text
        assert subscription.connected  # subscribed again at once
        publisher.publish(
            "batchjobs:batch.completed", json.dumps({"event": "batch.completed", "id": "batch_2"})
        )
        event = subscription.get(timeout=5)
        while event is not None and event.id != "batch_2":
            event = subscription.get(timeout=5)
        assert event is not None and event.event == "batch.completed"
    finally:
        publisher.close()
        subscription.close()

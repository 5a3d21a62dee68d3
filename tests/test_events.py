"""The outbox from the outside: receivers' seq, events(), follow(), retention, the CLI and HTTP.

The store's side (what each write writes, pruning, cursors) is the contract
in test_store.py; the Redis mirror's is in test_pubsub.py.
"""

from __future__ import annotations

import http.client
import json
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from batchjobs import BatchJobs, signals
from batchjobs.cli import cli
from batchjobs.errors import EventsPrunedError
from batchjobs.http import AdminServer, create_app
from batchjobs.models import Event, utcnow

ROOT = Path(__file__).resolve().parent.parent
TOKENS = {"t1": "usr_1", "t2": "usr_2"}


def _run(jobs: BatchJobs, *words: str, created_by: str | None = None) -> str:
    job = jobs.create("words", {"words": list(words)}, created_by=created_by)
    jobs.run_until_idle(timeout=10)
    return job.id


# -- receivers and reads ------------------------------------------------------------


def test_receivers_get_each_event_once_with_its_seq_as_in_the_outbox(jobs: BatchJobs) -> None:
    heard: list[tuple[int, str, Any]] = []
    for name in signals.EVENTS:
        jobs.subscribe(
            name, lambda sender, *, job, seq, _n=name, **extra: heard.append((seq, _n, job))
        )
    _run(jobs, "a", "b", "c")
    jobs.cancel(jobs.create("words", {"words": []}).id)
    outbox = jobs.events()
    assert [(e.seq, e.event, e.job) for e in outbox] == heard
    assert [seq for seq, _, _ in heard] == list(range(1, len(heard) + 1))
    assert outbox[-1].event == "batch.canceled" and jobs.last_seq() == len(heard)


def test_events_are_read_by_job_and_by_user_and_refused_once_pruned(jobs: BatchJobs) -> None:
    mine = _run(jobs, "a", created_by="usr_1")
    theirs = _run(jobs, "b", created_by="usr_2")
    assert {e.job.id for e in jobs.events(created_by="usr_1")} == {mine}
    assert {e.job.created_by for e in jobs.events(job_id=theirs)} == {"usr_2"}
    assert jobs.prune_events(utcnow() + timedelta(days=8)) == jobs.last_seq()
    with pytest.raises(EventsPrunedError) as pruned:
        jobs.events(after=0)
    assert pruned.value.oldest == jobs.last_seq() + 1
    assert jobs.events() == [] and jobs.events(after=jobs.last_seq()) == []


@pytest.mark.parametrize("retention", [0, -1, "7d", timedelta(0)])
def test_a_bad_retention_is_refused(db_path: Path, retention: Any) -> None:
    with pytest.raises(ValueError, match="event_retention must be a positive"):
        BatchJobs(db_path, event_retention=retention)
    assert not db_path.exists()


def test_retention_keeps_the_window_and_none_keeps_everything(
    make_jobs: Callable[..., BatchJobs],
) -> None:
    jobs = make_jobs(event_retention=3600)
    _run(jobs, "a")
    assert jobs.prune_events(utcnow() + timedelta(minutes=59)) == 0
    assert jobs.prune_events(utcnow() + timedelta(minutes=61)) == 6
    forever = make_jobs(event_retention=None)
    _run(forever, "b")
    assert forever.prune_events(utcnow() + timedelta(days=3650)) == 0


# -- follow ---------------------------------------------------------------------------


def test_follow_wakes_on_a_commit_of_this_process_and_ends_when_closed(
    make_jobs: Callable[..., BatchJobs],
) -> None:
    jobs = make_jobs(poll_interval=30)  # a poll would come too late: only the wake-up counts
    feed = jobs.follow()
    assert feed.read(timeout=0.05) == []
    got: list[Event] = []
    reader = threading.Thread(target=lambda: got.extend(feed.read()))
    reader.start()
    began = time.monotonic()
    job = jobs.create("words", {"words": ["a"]})
    reader.join(timeout=5)
    assert time.monotonic() - began < 1.0
    assert [(e.event, e.job.id) for e in got] == [("batch.created", job.id)]
    everything: list[Event] = []
    follower = threading.Thread(target=lambda: everything.extend(jobs.follow(after=0)))
    follower.start()
    jobs.run_until_idle(timeout=10)
    deadline = time.monotonic() + 5
    while not (everything and everything[-1].event == "batch.completed"):
        assert time.monotonic() < deadline, "the follower did not see the job complete"
        time.sleep(0.01)
    jobs.close()
    follower.join(timeout=5)
    assert not follower.is_alive()  # closing ended the iteration
    assert [e.seq for e in everything] == list(range(1, everything[-1].seq + 1))


@pytest.mark.backends("sqlite", "postgres")
def test_follow_in_another_instance_gets_every_event_in_order(
    make_jobs: Callable[..., BatchJobs], backend: str
) -> None:
    # On PostgreSQL a commit's NOTIFY wakes the other instance's feed at once;
    # on SQLite (no Redis here) its poll finds the events.
    poll = 30 if backend == "postgres" else 0.05
    writer, reader = make_jobs(), make_jobs(poll_interval=poll)
    feed = reader.follow()
    got: list[Event] = []
    follower = threading.Thread(target=lambda: got.extend(feed.read(timeout=10)))
    follower.start()
    began = time.monotonic()
    job = writer.create("words", {"words": ["a"]})
    follower.join(timeout=15)
    assert time.monotonic() - began < 5
    assert [(e.seq, e.event, e.job.id) for e in got] == [(1, "batch.created", job.id)]
    writer.run_until_idle(timeout=10)
    rest = reader.events(after=1)
    assert [e.seq for e in rest] == list(range(2, 7))
    assert rest[-1].event == "batch.completed" and rest[-1].job == writer.retrieve(job.id)


def test_follow_refuses_a_pruned_position_at_once(jobs: BatchJobs) -> None:
    _run(jobs, "a")
    jobs.prune_events(utcnow() + timedelta(days=8))
    with pytest.raises(EventsPrunedError):
        jobs.follow(after=2)


# -- the CLI ------------------------------------------------------------------------


def test_the_events_command_prints_the_outbox_after_a_seq(jobs: BatchJobs, db_path: Path) -> None:
    job = _run(jobs, "a", "b")
    runner = CliRunner()
    lines = runner.invoke(cli, ["--db", str(db_path), "events"])
    assert lines.exit_code == 0, lines.output
    assert [line.split()[0] for line in lines.output.splitlines()] == [str(i) for i in range(1, 7)]
    assert lines.output.splitlines()[-1].split()[2:6] == [
        "batch.completed",
        job,
        "words",
        "completed",
    ]
    as_json = runner.invoke(cli, ["--db", str(db_path), "events", "--after", "4", "--json"])
    assert [json.loads(line)["seq"] for line in as_json.output.splitlines()] == [5, 6]
    assert json.loads(as_json.output.splitlines()[-1])["batch_job"] == jobs.retrieve(job).to_dict()
    jobs.prune_events(utcnow() + timedelta(days=8))
    pruned = runner.invoke(cli, ["--db", str(db_path), "events", "--after", "2"])
    assert pruned.exit_code == 2
    assert "Events after seq 2 were pruned: the oldest event kept is seq 7" in pruned.output


CONSUMER_KILLS = 20
CONSUMER_JOBS = 500
PRODUCER_PAUSE = 0.03


def _start_consumer(db: Path, after: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "batchjobs", "--db", str(db), "events", "--follow", "--json"]
        + ["--after", str(after)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )


def _complete_lines(text: str) -> Iterator[dict[str, Any]]:
    """The JSON lines a killed consumer finished printing (its last may be cut)."""
    for line in text.splitlines(keepends=True):
        if line.endswith("\n"):
            yield json.loads(line)


@pytest.mark.slow
def test_a_consumer_killed_and_restarted_prints_every_event_once_in_order(
    make_jobs: Callable[..., BatchJobs], db_path: Path
) -> None:
    jobs = make_jobs(poll_interval=0.05)
    printed: list[dict[str, Any]] = []
    done = threading.Event()

    def produce() -> None:
        try:
            jobs.start()
            for _ in range(CONSUMER_JOBS):
                jobs.create("words", {"words": ["a", "b", "c"]})
                time.sleep(PRODUCER_PAUSE)  # a run long enough for every kill to land in it
            jobs.run_until_idle(timeout=120)
        finally:
            done.set()

    producer = threading.Thread(target=produce)
    producer.start()
    rng = random.Random(15)
    after = 0
    kills = 0
    while True:
        consumer = _start_consumer(db_path, after)
        last = done.is_set()
        if not last:
            time.sleep(rng.uniform(0.05, 0.3))
        if last or kills >= CONSUMER_KILLS:
            # The last run: everything is committed; let it catch up, then stop it.
            producer.join()
            total = jobs.last_seq()
            assert consumer.stdout is not None
            seen = after
            while seen < total:
                line = consumer.stdout.readline()
                assert line, "the consumer ended early"
                event = json.loads(line)
                printed.append(event)
                seen = event["seq"]
            consumer.send_signal(signal.SIGINT)
            consumer.communicate(timeout=10)
            break
        consumer.kill()
        out, _ = consumer.communicate(timeout=10)
        kills += 1
        assert not done.is_set(), f"the run ended after {kills} kills only"
        for event in _complete_lines(out):
            printed.append(event)
            after = event["seq"]
    assert kills == CONSUMER_KILLS
    seqs = [event["seq"] for event in printed]
    assert seqs == sorted(seqs)  # in order
    unique = list(dict.fromkeys(seqs))
    assert unique == list(range(1, jobs.last_seq() + 1))  # no gap
    assert [(e["seq"], e["event"]) for e in {e["seq"]: e for e in printed}.values()] == [
        (e.seq, e.event) for e in jobs.events(limit=100_000)
    ]
    assert sum(e["event"] == "batch.completed" for e in printed) == CONSUMER_JOBS


# -- HTTP -----------------------------------------------------------------------------


@pytest.fixture
def served(jobs: BatchJobs) -> Iterator[AdminServer]:
    """The admin API on a real socket, on a thread; stopped after."""
    server = AdminServer(create_app(jobs, tokens=TOKENS), port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    jobs.stop_following()
    server.shutdown(grace=5)
    thread.join(timeout=5)


def _get(
    server: AdminServer, path: str, token: str = "t1", **headers: str
) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("GET", path, headers={"Authorization": f"Bearer {token}", **headers})
    return conn, conn.getresponse()


def _read_sse(response: http.client.HTTPResponse, count: int) -> list[dict[str, str]]:
    """The next ``count`` events of a stream (comments and ``retry:`` skipped)."""
    events: list[dict[str, str]] = []
    fields: dict[str, str] = {}
    while len(events) < count:
        line = response.readline().decode()
        assert line, "the stream ended"
        line = line.rstrip("\n")
        if not line:
            if "data" in fields:
                events.append(fields)
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(": ")
            fields[name] = value
    return events


def test_the_events_route_answers_json_pages_of_the_callers_jobs(
    jobs: BatchJobs, served: AdminServer
) -> None:
    mine = _run(jobs, "a", created_by="usr_1")
    _run(jobs, "b", created_by="usr_2")
    conn, response = _get(served, "/admin/batch-jobs/events?limit=4")
    body = json.load(response)
    conn.close()
    assert response.status == 200
    assert [e["seq"] for e in body["events"]] == [1, 2, 3, 4]
    assert {e["batch_job"]["id"] for e in body["events"]} == {mine}
    assert (body["next_after"], body["limit"]) == (4, 4)
    conn, response = _get(served, "/admin/batch-jobs/events?after=4")
    body = json.load(response)
    conn.close()
    assert [e["seq"] for e in body["events"]] == [5, 6]
    assert body["next_after"] == 12  # past usr_2's events too
    conn, response = _get(served, "/admin/batch-jobs/events?limit=0")
    refused = json.load(response)
    conn.close()
    assert (response.status, refused["type"]) == (400, "invalid_data")
    jobs.prune_events(utcnow() + timedelta(days=8))
    conn, response = _get(served, "/admin/batch-jobs/events?after=3")
    gone = json.load(response)
    conn.close()
    assert (response.status, gone["type"]) == (410, "events_pruned")
    assert "the oldest event kept is seq 13" in gone["message"]


def test_the_event_stream_resumes_from_last_event_id(jobs: BatchJobs, served: AdminServer) -> None:
    stream = "/admin/batch-jobs/events"
    accept = {"Accept": "text/event-stream"}
    conn, response = _get(served, stream, **accept)
    assert response.status == 200
    assert response.getheader("Content-Type", "").startswith("text/event-stream")
    job = jobs.create("words", {"words": ["a", "b", "c"]}, created_by="usr_1")
    jobs.create("words", {"words": ["x"]}, created_by="usr_2")  # not the caller's
    first = _read_sse(response, 1)
    conn.close()  # the client goes away
    assert first[0]["id"] == "1" and first[0]["event"] == "batch.created"
    assert json.loads(first[0]["data"])["batch_job"]["id"] == job.id
    jobs.run_until_idle(timeout=10)
    conn, response = _get(served, stream, **accept, **{"Last-Event-ID": first[0]["id"]})
    rest = _read_sse(response, 5)
    conn.close()
    assert [e["event"] for e in rest] == [
        "batch.pre_processed",
        "batch.confirmed",
        "batch.processing",
        "batch.updated",
        "batch.updated",
    ]
    assert all(json.loads(e["data"])["batch_job"]["id"] == job.id for e in rest)
    assert [int(e["id"]) for e in rest] == sorted(int(e["id"]) for e in rest)


def test_an_idle_event_stream_sends_heartbeats(
    jobs: BatchJobs, served: AdminServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from batchjobs.http import api

    monkeypatch.setattr(api, "HEARTBEAT_SECONDS", 0.05)
    conn, response = _get(served, "/admin/batch-jobs/events", Accept="text/event-stream")
    lines = [response.readline() for _ in range(5)]
    conn.close()
    assert lines[:3] == [b"retry: 2000\n", b"id: 0\n", b"\n"]
    assert lines[3:] == [b": heartbeat\n", b"\n"]


def test_an_idle_event_stream_moves_its_position_past_other_users_events(
    jobs: BatchJobs, served: AdminServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A caller whose jobs are quiet while others' run resumes, once those are pruned,
    from the position its stream reached, not from its last own event (gone: 410)."""
    from batchjobs.http import api

    monkeypatch.setattr(api, "HEARTBEAT_SECONDS", 0.05)
    stream = "/admin/batch-jobs/events"
    conn, response = _get(served, stream, Accept="text/event-stream")
    assert response.status == 200
    _run(jobs, "b", created_by="usr_2")  # not the caller's
    last = jobs.last_seq()
    position = None
    for _ in range(200):  # heartbeats come every 0.05 s
        line = response.readline().decode()
        assert line, "the stream ended"
        if line.startswith("id: "):
            position = int(line[4:])
            if position == last:
                break
    conn.close()
    assert position == last  # what an EventSource sends back as Last-Event-ID
    jobs.prune_events(utcnow() + timedelta(days=8))  # usr_2's events are gone
    conn, response = _get(
        served, stream, Accept="text/event-stream", **{"Last-Event-ID": str(position)}
    )
    assert response.status == 200
    mine = jobs.create("words", {"words": ["a"]}, created_by="usr_1")
    [event] = _read_sse(response, 1)
    conn.close()
    assert (event["id"], event["event"]) == (str(last + 1), "batch.created")
    assert json.loads(event["data"])["batch_job"]["id"] == mine.id


def test_an_event_stream_tells_its_start_so_a_client_dropped_before_any_event_resumes(
    jobs: BatchJobs, served: AdminServer
) -> None:
    _run(jobs, "a", created_by="usr_1")
    start = jobs.last_seq()
    stream = "/admin/batch-jobs/events"
    conn, response = _get(served, stream, Accept="text/event-stream")
    first = [response.readline() for _ in range(3)]
    conn.close()  # dropped before any event of the caller came
    assert first == [b"retry: 2000\n", f"id: {start}\n".encode(), b"\n"]
    job = jobs.create("words", {"words": ["b"]}, created_by="usr_1")  # while it was away
    # What an EventSource sends back: the id it was told.
    conn, response = _get(
        served, stream, Accept="text/event-stream", **{"Last-Event-ID": str(start)}
    )
    [event] = _read_sse(response, 1)
    conn.close()
    assert (event["id"], event["event"]) == (str(start + 1), "batch.created")
    assert json.loads(event["data"])["batch_job"]["id"] == job.id

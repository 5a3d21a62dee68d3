"""The PostgreSQL store's own ways: URLs, the extra, migrations under an advisory lock,
lost connections, NOTIFY wake-ups, the claim's index, counts kept by triggers."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from batchjobs import BatchJobs, Status
from batchjobs.errors import StoreCorruptError, StoreError, StoreUnreachableError
from batchjobs.models import TIMESTAMP_FIELDS, BatchJob, Event, new_job_id, utcnow
from batchjobs.store import Checkpoint, ClaimRequest, open_store
from batchjobs.store._postgres_connections import Database, Listener, _Unknown, channel_for
from batchjobs.store._postgres_schema import MIGRATIONS, VERSION, VERSIONS
from batchjobs.store.postgres import PostgresStore
from tests.event_rows import check_old_event_rows
from tests.strategies import read_ledger

ROOT = Path(__file__).resolve().parent.parent


def make_job(type: str = "t", status: Status = Status.CREATED, **fields: Any) -> BatchJob:
    now = utcnow()
    return BatchJob(
        id=new_job_id(), type=type, status=status, created_at=now, updated_at=now, **fields
    )


@pytest.fixture
def url(make_database: Callable[..., str]) -> str:
    return make_database(empty=True)


def backends_of(url: str, *, busy: bool = False) -> list[int]:
    """The server processes connected to ``url``'s database, but ours here (``busy``:
    only those running a statement or inside a transaction)."""
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid() "
            "AND (NOT %s OR state IN ('active', 'idle in transaction'))",
            [name, busy],
        ).fetchall()
    return [row[0] for row in rows]


def terminate(url: str, pids: list[int]) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        for pid in pids:
            conn.execute("SELECT pg_terminate_backend(%s)", [pid])


@pytest.mark.parametrize("scheme", ["postgresql", "postgres"])
def test_open_store_takes_either_url_scheme_and_hides_the_password(url: str, scheme: str) -> None:
    with_password = url.replace("postgresql://postgres@", f"{scheme}://postgres:s3cret@")
    store = open_store(with_password, concurrency=4)
    try:
        assert isinstance(store, PostgresStore)
        assert "s3cret" not in store.location and store.location.endswith(url.rsplit("/", 1)[1])
        job = make_job()
        store.insert(job)
        assert store.get(job.id) == job
        assert store._database.pool.max_size == 7  # concurrency + 3
        store.provision(10)  # start(concurrency=10)
        assert store._database.pool.max_size == 13
    finally:
        store.close()


def test_a_url_s_options_give_the_store_a_schema_of_its_own(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA jobs")
    store = open_store(f"{url}?options=-csearch_path%3Djobs")
    try:
        job = make_job()
        store.insert(job)
        with store._database.connect() as conn:  # the store's own settings kept too
            assert conn.execute("SHOW timezone").fetchone() == ("UTC",)
    finally:
        store.close()
    with psycopg.connect(url) as conn:
        where = conn.execute(
            "SELECT table_schema FROM information_schema.tables WHERE table_name = 'batch_jobs'"
        ).fetchall()
        assert where == [("jobs",)]
        assert conn.execute("SELECT id FROM jobs.batch_jobs").fetchall() == [(job.id,)]
    with pytest.raises(StoreError, match="create the schema its search_path names first"):
        open_store(f"{url}?options=-csearch_path%3Dnope")  # a schema is not made up


#: A schema whose name, with a channel's, would not fit an identifier: its channel is digested.
LONG = "billing_" + "x" * 50


def test_installs_in_two_schemas_of_one_database_wake_only_their_own(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA shop; CREATE SCHEMA {LONG}")
    shop = open_store(f"{url}?options=-csearch_path%3Dshop")
    billing = open_store(f"{url}?options=-csearch_path%3D{LONG}")
    bases = ("batchjobs_runnable", "batchjobs_events")
    try:
        # One session hears every channel, in commit order: each commit's own, and only
        # those (the public ones are listened to as well, and must stay silent).
        with psycopg.connect(url, autocommit=True) as conn:
            for schema in ("shop", LONG, "public"):
                for base in bases:
                    conn.execute(f'LISTEN "{channel_for(base, schema)}"')
            billing.insert(make_job(type="invoice"))
            shop.insert(make_job(type="order"))
            heard = [(n.channel, n.payload) for n in conn.notifies(timeout=10, stop_after=4)]
        assert sorted(heard[:2]) == [
            (channel_for("batchjobs_events", LONG), ""),
            (channel_for("batchjobs_runnable", LONG), "invoice"),
        ]
        assert sorted(heard[2:]) == [
            ("batchjobs_events:shop", ""),
            ("batchjobs_runnable:shop", "order"),
        ]
        # And each store's listeners hear their own.
        woken = {name: threading.Event() for name in ("shop", "billing")}
        stops = [shop.listen(woken["shop"].set), billing.watch(woken["billing"].set)]
        try:
            shop.insert(make_job(type="order"))
            billing.insert(make_job(type="invoice"))
            assert woken["shop"].wait(10) and woken["billing"].wait(10)
        finally:
            for stop in stops:
                assert stop is not None
                stop()
    finally:
        shop.close()
        billing.close()


def test_a_schema_made_later_on_the_search_path_moves_no_wake_up(url: str) -> None:
    store = open_store(url)  # its tables in public
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE SCHEMA postgres")  # "$user": the search_path's first now
        woken = threading.Event()
        stop = store.listen(woken.set)  # a new connection, which finds the tables in public
        assert stop is not None
        try:
            store.insert(make_job())
            assert woken.wait(10)
        finally:
            stop()
    finally:
        store.close()


def test_the_public_schema_notifies_the_channels_earlier_versions_listen_to(url: str) -> None:
    store = open_store(url)
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("LISTEN batchjobs_runnable; LISTEN batchjobs_events")
            store.insert(make_job(type="shout"))
            heard = {(n.channel, n.payload) for n in conn.notifies(timeout=10, stop_after=2)}
        assert heard == {("batchjobs_runnable", "shout"), ("batchjobs_events", "")}
    finally:
        store.close()


def test_a_schema_s_channel_fits_an_identifier_whatever_its_name() -> None:
    assert channel_for("batchjobs_events", "public") == "batchjobs_events"
    assert channel_for("batchjobs_events", "shop") == "batchjobs_events:shop"
    odd = [channel_for("batchjobs_runnable", name) for name in ("Shop", "x" * 60, "a'b")]
    assert all(len(c.encode()) <= 63 and re.fullmatch(r"[a-z_:0-9]+", c) for c in odd), odd
    assert len(set(odd)) == 3 and channel_for("batchjobs_runnable", "Shop") == odd[0]


def test_without_the_extra_a_postgres_url_names_it(
    url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)  # as if it were not installed
    monkeypatch.delitem(sys.modules, "batchjobs.store.postgres")
    with pytest.raises(StoreError, match=r"pip install 'batchjobs\[postgres\]'"):
        BatchJobs(url, files_dir=tmp_path / "files")
    assert not (tmp_path / "files").exists()


def test_an_unreachable_server_is_a_store_error_naming_it() -> None:
    started = time.monotonic()
    with pytest.raises(StoreUnreachableError) as caught:
        open_store("postgresql://postgres:pw@127.0.0.1:1/nowhere")
    assert "127.0.0.1:1/nowhere" in caught.value.message and "pw" not in caught.value.message
    assert time.monotonic() - started < 10


def test_the_schema_is_versioned_and_concurrent_first_starts_migrate_once(url: str) -> None:
    opened: list[PostgresStore] = []
    failed: list[BaseException] = []
    barrier = threading.Barrier(4)

    def start() -> None:
        barrier.wait()
        try:
            opened.append(PostgresStore(url))
        except BaseException as error:  # pragma: no cover - the failure the test looks for
            failed.append(error)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert failed == [] and len(opened) == 4
        with psycopg.connect(url) as conn:
            assert conn.execute(f"SELECT version FROM {VERSIONS}").fetchall() == [(VERSION,)]
            columns = dict(
                conn.execute(
                    "SELECT column_name, data_type FROM information_schema.columns "
                    "WHERE table_name = 'batch_jobs'"
                ).fetchall()
            )
        assert columns["context"] == columns["result"] == "jsonb"
        assert set(TIMESTAMP_FIELDS) <= set(columns)  # a new field needs a migration
        assert columns["created_at"] == "timestamp with time zone"
    finally:
        for store in opened:
            store.close()


def test_a_database_that_is_not_ours_or_newer_is_refused(
    make_database: Callable[..., str],
) -> None:
    foreign = make_database(empty=True)
    with psycopg.connect(foreign, autocommit=True) as conn:
        conn.execute("CREATE TABLE batch_jobs (id serial PRIMARY KEY)")
    with pytest.raises(StoreCorruptError, match="not a batchjobs database"):
        PostgresStore(foreign)
    newer = make_database()
    with psycopg.connect(newer, autocommit=True) as conn:
        conn.execute(f"UPDATE {VERSIONS} SET version = version + 1")
    with pytest.raises(StoreCorruptError, match="upgrade batchjobs"):
        PostgresStore(newer)


def test_claims_read_the_partial_indexes_not_the_finished_jobs(url: str) -> None:
    store = PostgresStore(url)
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO batch_jobs (id, type, status, created_at) SELECT "
                "'batch_' || i, 't', 'completed', now() FROM generate_series(1, 5000) i"
            )
            conn.execute("ANALYZE batch_jobs")
            now = utcnow()
            query, params = store._claim_query(ClaimRequest("w", ("t",), now, now), "t0")  # type: ignore[misc]
            plan = "\n".join(row[0] for row in conn.execute(f"EXPLAIN {query}", params))
        assert "batch_jobs_runnable" in plan, plan
        assert "Seq Scan" not in plan and plan.count("LockRows") == 2, plan
    finally:
        store.close()


def test_a_claim_commits_without_waiting_for_its_flush_and_nothing_after_it_does(
    url: str,
) -> None:
    store = PostgresStore(url)
    try:
        jobs = [make_job() for _ in range(3)]
        for job in jobs:
            store.insert(job)
        with psycopg.connect(url, autocommit=True) as conn:
            # Each claimed row notes the setting its transaction runs with.
            conn.execute(
                "CREATE TABLE seen (id text, sync text); "
                "CREATE FUNCTION note() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                "INSERT INTO seen VALUES (NEW.id, current_setting('synchronous_commit')); "
                "RETURN NULL; END $$; "
                "CREATE TRIGGER note AFTER UPDATE OF owner ON batch_jobs FOR EACH ROW "
                "WHEN (NEW.owner IS NOT NULL) EXECUTE FUNCTION note()"
            )
            now = utcnow()
            (claim,) = store.claim(ClaimRequest("w", ("t",), now, now + timedelta(seconds=30)))
            # A batch's commit that ends a job and claims the next: flushed as ever.
            done = Checkpoint(claim.lease, Status.CREATED, now, ((Status.FAILED, now),))
            request = ClaimRequest("w", ("t",), now, now + timedelta(seconds=30))
            _, (second,) = store.commit([done], claim=request)
            # Giving back and claiming, nothing else written: as a claim alone.
            _, (third,) = store.commit([], release=[second.lease], claim=request)
            seen = dict(conn.execute("SELECT id, sync FROM seen ORDER BY id").fetchall())
            (after,) = conn.execute("SHOW synchronous_commit").fetchone()  # type: ignore[misc]
        assert claim.job.id == jobs[0].id and second.job.id == third.job.id == jobs[1].id
        assert seen == {jobs[0].id: "off", jobs[1].id: "off"}, seen
        assert after == "on"
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("TRUNCATE seen")
            store.insert(make_job())
            _, (claimed,) = store.commit(
                [Checkpoint(third.lease, Status.CREATED, now, ((Status.FAILED, now),))],
                claim=request,
            )
            seen = dict(conn.execute("SELECT id, sync FROM seen").fetchall())
        assert claimed.job.id == jobs[2].id and seen == {jobs[2].id: "on"}, seen
    finally:
        store.close()


def test_claims_read_their_indexes_in_order_without_statistics(url: str) -> None:
    # A queue filled at once and never analyzed (autovacuum off, or not yet run): the
    # planner knows nothing of the rows. A claim still reads the free jobs from an index
    # in their order (the runnable jobs', or for created ones the statuses' by age) and
    # the expired leases from the leased jobs', stopping at its limit: sorting none of
    # them (an incremental sort, by id within one created_at, reads no further).
    store = PostgresStore(url)
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO batch_jobs (id, type, status, created_at) SELECT "
                "'batch_' || lpad(i::text, 5, '0'), 't', 'created', now() "
                "FROM generate_series(1, 2000) i"
            )
            conn.execute("UPDATE batch_jobs SET owner = 'x', lease = 'l' WHERE id <= 'batch_00100'")
            now = utcnow()
            for request in (
                ClaimRequest("w", ("t", "u"), now, now, limit=32),
                ClaimRequest("w", ("t",), now, now, statuses=(Status.CREATED,), cleanups=False),
            ):
                query, params = store._claim_query(request, "t0")  # type: ignore[misc]
                with conn.transaction():
                    conn.execute(store._claim_settings(request, flush=False))
                    plan = "\n".join(row[0] for row in conn.execute(f"EXPLAIN {query}", params))
                expired, free = plan.split("CTE free")
                free = free.split("Append")[0]  # not the update of the rows found
                assert "Index Scan using batch_jobs_leased" in expired, plan
                assert re.search(r"Index Scan using batch_jobs_(runnable|status)", free), plan
                assert not re.search(r"->  Sort|Seq Scan", expired + free), plan
    finally:
        store.close()


def test_counts_kept_by_triggers_match_the_rows(url: str) -> None:
    store = PostgresStore(url)
    try:
        jobs = [make_job(created_by=f"usr_{i % 3}" if i % 4 else None) for i in range(12)]
        for job in jobs:
            store.insert(job)
        now = utcnow()
        for job in jobs[:5]:
            store.transition(job.id, from_statuses=[Status.CREATED], to=Status.FAILED, now=now)
        store.delete([jobs[0].id])
        assert store.count() == 11
        assert store.count(filters={"status": "failed"}) == 4
        assert store.count(filters={"status": "created", "created_by": "usr_1"}) == 2
        assert store.count(filters={"created_by": None}) == 2  # read from the rows
        assert store.list_and_count(filters={"status": ["created"]}, limit=2)[1] == 7
    finally:
        store.close()


@contextmanager
def killing_connections(
    url: str, *, every: float, progress: threading.Event, busy: bool = False
) -> Iterator[list[int]]:
    """Terminate the server's connections to ``url`` (with ``busy``, only those in a
    statement or a transaction) while the block runs: at most every ``every`` seconds,
    and only once ``progress`` was set since the last time (the work got on after it).
    However slow the machine, a retry is not killed time after time until the store
    gives up. Yields how many were killed so far, as a one-item list."""
    done = threading.Event()
    killed = [0]

    def kill() -> None:
        while not done.wait(every):
            if not progress.is_set():
                continue
            pids = backends_of(url, busy=busy)
            if not pids:  # none busy right now: look again, the progress still stands
                continue
            terminate(url, pids)
            progress.clear()  # what it sets from now on was done after this kill
            killed[0] += len(pids)

    killer = threading.Thread(target=kill)
    killer.start()
    try:
        yield killed
    finally:
        done.set()
        killer.join()


def on_event(jobs: BatchJobs, event: str) -> threading.Event:
    """An event set whenever ``jobs`` commits an ``event`` (such as a checkpoint)."""
    happened = threading.Event()
    jobs.subscribe(event, lambda sender, **extra: happened.set())
    return happened


def test_a_job_survives_its_connections_being_killed_mid_run(
    url: str, tmp_path: Path, make_jobs: Callable[..., BatchJobs]
) -> None:
    jobs = make_jobs(url, files_dir=tmp_path / "files", lease_seconds=30)
    ledger = tmp_path / "ledger.txt"
    job = jobs.create("ledger", {"n": 300, "chunk_size": 5, "sleep": 0.02, "ledger": str(ledger)})
    checkpointed = on_event(jobs, "batch.updated")
    with killing_connections(url, every=0.25, progress=checkpointed) as killed:
        jobs.run_until_idle(timeout=60)
    finished = jobs.retrieve(job.id)
    assert killed[0] > 3
    assert finished.status == Status.COMPLETED, finished.result
    assert finished.result["advancement_count"] == 300
    assert sorted(int(line) for line in read_ledger(ledger)) == list(range(300))  # none twice


def test_short_jobs_drained_while_connections_are_killed_complete_with_their_events_once(
    url: str, tmp_path: Path, make_jobs: Callable[..., BatchJobs]
) -> None:
    # Batches of short jobs end in pipelined commits; a connection killed anywhere in
    # one (only busy ones: idle ones in the pool die unseen), the commit either
    # happened (looked up, its events read back) or is redone.
    jobs = make_jobs(url, files_dir=tmp_path / "files", lease_seconds=30)
    seen: list[Any] = []
    committed = threading.Event()

    def hear(events: Sequence[Event]) -> None:
        seen.extend(events)
        committed.set()

    jobs.store.on_events = hear
    ledger = tmp_path / "ledger.txt"
    context = {"n": 1, "sleep": 0.002, "ledger": str(ledger), "tagged": True}
    made = [jobs.create("ledger", context) for _ in range(400)]
    committed.clear()  # the creations' events
    with killing_connections(url, every=0.02, progress=committed, busy=True) as killed:
        jobs.run_until_idle(timeout=120)
    assert killed[0] > 3
    assert all(jobs.retrieve(job.id).status == Status.COMPLETED for job in made)
    ran = {line.split(":")[0] for line in read_ledger(ledger)}
    assert ran == {job.id for job in made}
    written = jobs.store.events(after=0, limit=10_000)
    assert [e.seq for e in written] == list(range(1, len(written) + 1))
    completed = [e.job.id for e in written if e.event == "batch.completed"]
    assert sorted(completed) == sorted(job.id for job in made)  # each once
    # What the receivers got is what the outbox holds, seq for seq.
    assert {(e.seq, e.event, e.job.id) for e in seen} <= {
        (e.seq, e.event, e.job.id) for e in written
    }


@pytest.mark.parametrize("committed", [True, False])
def test_a_commit_whose_answer_was_lost_is_looked_up_never_applied_twice(
    url: str, committed: bool
) -> None:
    store = PostgresStore(url)
    try:
        job = make_job()
        store.insert(job)
        database = store._database
        real = database._write_once
        runs: list[str] = []

        def lose_the_answer(work: Any) -> Any:
            def spy(conn: psycopg.Connection[Any], wake: set[str]) -> Any:
                (xid,) = conn.execute("SELECT pg_current_xact_id()::text").fetchone()  # type: ignore[misc]
                runs.append(xid)
                result = work(conn, wake)
                if not committed and len(runs) == 1:
                    raise psycopg.errors.AdminShutdown("the server went away")
                return result

            try:
                result = real(spy)
            except psycopg.errors.AdminShutdown:
                result = None  # rolled back; the client cannot tell either
            if len(runs) == 1:  # the client never heard how the COMMIT went
                raise _Unknown(runs[0], result)
            return result

        database._write_once = lose_the_answer  # type: ignore[method-assign]
        moved = store.transition(
            job.id, from_statuses=[Status.CREATED], to=Status.CANCELED, now=utcnow()
        )
        # Committed: looked up, not run again (a second run would find the job moved
        # and answer None). Rolled back: run again, once.
        assert len(runs) == (1 if committed else 2)
        assert moved is not None and moved.status == Status.CANCELED
        assert store.status_of(job.id) == Status.CANCELED
    finally:
        store.close()


@pytest.mark.parametrize("committed", [True, False])
def test_a_batch_commit_whose_answer_was_lost_is_read_again_never_applied_twice(
    url: str, committed: bool
) -> None:
    # A batch's commit is pipelined: its COMMIT's answer brings the events' seqs.
    # Lost though it committed, the seqs are read again; rolled back, all is redone.
    store = PostgresStore(url)
    seen: list[Event] = []
    store.on_events = seen.extend
    try:
        done, later = make_job(), make_job()
        store.insert(done)
        store.insert(later)
        now = utcnow()
        (claim,) = store.claim(ClaimRequest("w", ("t",), now, now + timedelta(seconds=30)))
        assert claim.job.id == done.id
        database = store._database
        real = database._pipelined_once
        runs: list[str] = []

        def lose_the_answer(work: Any) -> Any:
            recovers: list[Any] = []

            def spy(conn: psycopg.Connection[Any], wake: set[str]) -> Any:
                (xid,) = conn.execute("SELECT pg_current_xact_id()::text").fetchone()  # type: ignore[misc]
                runs.append(xid)
                finish, recover = work(conn, wake)
                recovers.append(recover)
                if not committed and len(runs) == 1:
                    raise psycopg.errors.AdminShutdown("the server went away")
                return finish, recover

            try:
                result = real(spy)
            except psycopg.errors.AdminShutdown:
                result = None  # rolled back; the client cannot tell either
            if len(runs) == 1:  # the client never heard how the COMMIT went
                raise _Unknown(runs[0], result, recovers[0])
            return result

        database._pipelined_once = lose_the_answer  # type: ignore[method-assign]
        finished = Checkpoint(
            claim.lease,
            Status.CREATED,
            now,
            steps=tuple((status, now) for status in (Status.PRE_PROCESSED, Status.COMPLETED)),
            result={"n": 1},
            release=True,
        )
        request = ClaimRequest("w", ("t",), now, now + timedelta(seconds=31))
        stored, claims = store.commit([finished], claim=request)
        assert len(runs) == (1 if committed else 2)
        assert stored[0] is not None and stored[0].status == Status.COMPLETED
        assert [c.job.id for c in claims] == [later.id]
        # The events as committed, once each, and as numbered in the outbox.
        written = store.events(after=0)
        assert [e.seq for e in written] == list(range(1, len(written) + 1))
        assert [(e.seq, e.event, e.job) for e in seen] == [(e.seq, e.event, e.job) for e in written]
        assert "batch.completed" in [e.event for e in seen[2:]]
    finally:
        store.close()


def test_listen_wakes_on_a_change_made_by_another_store(url: str) -> None:
    listening, other = PostgresStore(url), PostgresStore(url)
    woken = threading.Event()
    stop = listening.listen(woken.set)
    try:
        assert stop is not None
        other.insert(make_job(status=Status.PRE_PROCESSED))  # not runnable: no wake-up
        assert not woken.wait(0.3)
        job = make_job()
        other.insert(job)
        assert woken.wait(5)
        woken.clear()
        terminate(url, [p for p in backends_of(url) if p != 0])  # the listener reconnects ...
        assert woken.wait(10)  # ... and wakes once, for what it may have missed
        woken.clear()
        other.transition(job.id, from_statuses=[Status.CREATED], to=Status.CONFIRMED, now=utcnow())
        assert woken.wait(5)
    finally:
        if stop is not None:
            stop()
        listening.close()
        other.close()


def test_a_listener_stopped_once_its_thread_ended_writes_to_no_other_file(url: str) -> None:
    # A stop racing the listener's end (it saw the first stop, or a notification,
    # and closed its pipe) must not write to the pipe's descriptor numbers, which
    # may name another file of the process by then.
    database = Database(url, pool_size=1)  # its pool never opened: no thread but ours
    listener = Listener(database, lambda: None)
    listener.start()
    listener.stop()
    listener._thread.join(10)
    assert not listener._thread.is_alive()
    read, write = os.pipe()
    try:
        assert (read, write) == (listener._stop_read, listener._stop_write)  # the numbers again
        listener.stop()
        os.set_blocking(read, False)
        with pytest.raises(BlockingIOError):
            os.read(read, 1)
    finally:
        os.close(read)
        os.close(write)
        database.close()


@pytest.mark.slow
def test_a_worker_in_another_process_picks_a_job_up_by_notify(
    url: str, tmp_path: Path, make_jobs: Callable[..., BatchJobs]
) -> None:
    jobs = make_jobs(url, files_dir=tmp_path / "files")
    with (tmp_path / "worker.log").open("w") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "tests.worker", url, "--files-dir", str(tmp_path / "files")]
            + ["--poll-interval", "600"],  # no poll will come: only NOTIFY can wake it
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
        try:
            assert worker.stdout is not None and worker.stdout.readline().strip() == "ready"
            time.sleep(0.2)  # past the worker's first look, made when it started
            job = jobs.create("words", {"words": ["a", "b", "c"]})
            assert jobs.wait(job.id, timeout=10).status == Status.COMPLETED
        finally:
            worker.terminate()
            try:
                worker.communicate(timeout=20)
            finally:
                if worker.poll() is None:  # it did not stop: no process outlives the test
                    worker.kill()
                    worker.communicate()
    assert worker.returncode == 0, (tmp_path / "worker.log").read_text()


def test_events_written_a_row_each_read_back_after_the_migration(url: str) -> None:
    # A database as the outbox's first version left it: a row per event.
    with psycopg.connect(url, autocommit=True) as conn, conn.transaction():
        conn.execute(f"CREATE TABLE {VERSIONS} (version integer NOT NULL)")
        conn.execute(f"INSERT INTO {VERSIONS} VALUES (4)")
        for step in MIGRATIONS[:4]:
            conn.execute(step)  # type: ignore[arg-type]
        at = utcnow()
        for seq, (event, status) in enumerate(
            [("batch.created", "created"), ("batch.canceled", "canceled")], start=1
        ):
            conn.execute(
                "INSERT INTO batch_job_events (seq, event, at, origin, id, type, status, "
                "created_by, dry_run, context, result, created_at, updated_at, canceled_at) "
                "VALUES (%s, %s, %s, 'old', 'batch_1', 't', %s, 'usr_1', false, '{}', "
                "'{\"n\": 1}', %s, %s, %s)",
                [seq, event, at, status, at, at, at if status == "canceled" else None],
            )
        conn.execute("UPDATE batch_job_event_seq SET last = 2")
    store = PostgresStore(url)
    try:
        check_old_event_rows(store, at)
    finally:
        store.close()


def waiting_for_a_lock(url: str, count: int = 1, timeout: float = 10) -> list[tuple[int, int]]:
    """Wait until ``count`` server processes of ``url``'s database wait for a lock;
    their pids and client ports."""
    name = url.rsplit("/", 1)[1]
    deadline = time.monotonic() + timeout
    with psycopg.connect(url, autocommit=True) as conn:
        while True:
            rows = conn.execute(
                "SELECT pid, client_port FROM pg_stat_activity WHERE datname = %s "
                "AND wait_event_type = 'Lock'",
                [name],
            ).fetchall()
            if len(rows) >= count or time.monotonic() > deadline:
                return [(pid, port) for pid, port in rows]
            time.sleep(0.01)


def cut_client_side(port: int) -> None:
    """Cut this process's connection whose local port is ``port`` (the network failed,
    as the client sees it): the server, busy with its statement, does not notice yet."""
    for fd in map(int, os.listdir("/proc/self/fd")):
        try:
            sock = socket.socket(fileno=os.dup(fd))
        except OSError:
            continue
        with sock:
            try:
                if (
                    sock.family in (socket.AF_INET, socket.AF_INET6)
                    and sock.getsockname()[1] == port
                ):
                    sock.shutdown(socket.SHUT_RDWR)
                    return
            except OSError:
                continue
    raise AssertionError(f"no connection of ours from port {port}")


@pytest.mark.parametrize("same_time", [False, True])
def test_a_checkpoint_lost_in_flight_is_applied_once_and_answered_as_itself(
    url: str, same_time: bool
) -> None:
    # The client loses its connection while the server still runs the checkpoint
    # (here: waiting for a row lock); the server commits it later. The store must
    # neither apply it twice (found nothing committed, it runs it again) nor take an
    # earlier checkpoint of the same lease for it (same_time: both at one instant, as
    # under a frozen or coarse clock): one event, each handed out once, the answer its own.
    store = PostgresStore(url)
    seen: list[Event] = []
    store.on_events = seen.extend
    locker = psycopg.connect(url)
    try:
        job = make_job()
        store.insert(job)
        now = utcnow()
        (claim,) = store.claim(ClaimRequest("w", ("t",), now, now + timedelta(seconds=30)))
        store.save(Checkpoint(claim.lease, Status.CREATED, now, ((Status.PROCESSING, now),)))
        at = utcnow()
        if same_time:
            store.save(Checkpoint(claim.lease, Status.PROCESSING, at, result={"done": 5}))
        locker.execute("SELECT FROM batch_jobs WHERE id = %s FOR UPDATE", [job.id])
        saved: list[Any] = []
        checkpoint = Checkpoint(claim.lease, Status.PROCESSING, at, result={"done": 10})
        saving = threading.Thread(target=lambda: saved.append(store.save(checkpoint)))
        saving.start()
        ((_, port),) = waiting_for_a_lock(url)
        cut_client_side(port)
        waiting_for_a_lock(url, count=2, timeout=5)  # run again, if it is, behind the first
        locker.rollback()
        saving.join(timeout=30)
        assert not saving.is_alive()
        assert saved and saved[0] is not None and saved[0].result["done"] == 10
        assert store.get(job.id).result["done"] == 10  # type: ignore[union-attr]
        updates = [e for e in store.events(after=0) if e.event == "batch.updated"]
        assert [e.job.result["done"] for e in updates] == ([5, 10] if same_time else [10])
        handed = [e.seq for e in seen if e.event == "batch.updated"]
        assert handed == [e.seq for e in updates], (handed, updates)
    finally:
        locker.close()
        store.close()


def test_a_claim_lost_in_flight_leaves_no_job_leased_to_no_one(url: str) -> None:
    # The client loses its connection while the server still runs its claim (here:
    # waiting for a table lock), then claims again. The lost claim, committed later,
    # must not leave a job leased to this worker that it does not know of: that job
    # would wait for its lease to expire, then be charged an attempt as if it had died.
    store = PostgresStore(url)
    locker = psycopg.connect(url)
    try:
        jobs = [make_job() for _ in range(3)]
        for job in jobs:
            store.insert(job)
        locker.execute("LOCK TABLE batch_jobs IN EXCLUSIVE MODE")
        now = utcnow()
        claimed: list[Any] = []
        request = ClaimRequest("w", ("t",), now, now + timedelta(seconds=30))
        claiming = threading.Thread(target=lambda: claimed.append(store.claim(request)))
        claiming.start()
        ((_, port),) = waiting_for_a_lock(url)
        cut_client_side(port)
        waiting_for_a_lock(url, count=2, timeout=5)  # claimed again, if it is, behind the first
        locker.rollback()
        claiming.join(timeout=30)
        assert not claiming.is_alive() and len(claimed) == 1
        held = {job.id for job in jobs if store.holder(job.id) is not None}
        assert held == {claim.job.id for claim in claimed[0]} and len(held) == 1, (held, claimed)
    finally:
        locker.close()
        store.close()


def _scans(node: dict[str, Any]) -> Iterator[tuple[str, str, str]]:
    """Every scan of a JSON plan: its node type, relation (or CTE) and index."""
    if "Relation Name" in node or "Index Name" in node:
        yield node["Node Type"], node.get("Relation Name", ""), node.get("Index Name", "")
    for child in node.get("Plans", []):
        yield from _scans(child)


#: The indexes a statement may read the jobs through, whatever it looks for: the
#: primary key, the idempotency keys, and (claims) the runnable and the leased jobs.
_FINDING = {"batch_jobs_pkey", "batch_jobs_key", "batch_jobs_runnable", "batch_jobs_leased"}


def test_statements_prepared_on_a_tiny_table_read_no_more_once_it_is_large(url: str) -> None:
    # psycopg prepares a statement after 5 runs, and PostgreSQL then keeps one plan for
    # it (a generic plan) as long as nothing invalidates it: without statistics (no
    # autovacuum), a plan made while the table was tiny is kept however large it grows.
    # On a tiny table a scan of the whole table, or of the index of a status, costs as
    # little as a look-up by id; on a large one it reads every job (of that status).
    store = PostgresStore(url, pool_size=1)  # one connection: every statement's plans
    try:
        for _ in range(12):
            prepare_every_statement(store)
        with store._database.pool.connection() as conn:
            conn.execute("SET plan_cache_mode = force_generic_plan")
            try:
                prepared = conn.execute(
                    "SELECT name, statement, parameter_types::text[] FROM pg_prepared_statements"
                ).fetchall()
                assert len(prepared) > 10
                bad = []
                for name, statement, types in prepared:
                    if statement.split()[0].upper() not in ("SELECT", "WITH", "UPDATE", "DELETE"):
                        continue  # BEGIN, COMMIT, INSERT ... VALUES: no scan to plan
                    nulls = f"({', '.join(f'NULL::{t}' for t in types)})" if types else ""
                    explain = f"EXPLAIN (FORMAT JSON) EXECUTE {name}{nulls}"
                    (plan,) = conn.execute(explain).fetchone()  # type: ignore[misc]
                    if plan[0]["Plan"]["Total Cost"] > 1e9:  # a path the settings disabled
                        bad.append((statement, "disabled", plan[0]["Plan"]["Total Cost"]))
                    for kind, relation, index in _scans(plan[0]["Plan"]):
                        if relation in ("batch_jobs", "batch_job_events") and kind == "Seq Scan":
                            bad.append((statement, kind, relation))
                        if index.startswith("batch_jobs_") and index not in _FINDING:
                            bad.append((statement, kind, index))
            finally:
                conn.execute("RESET plan_cache_mode")
        assert not bad, "\n".join(map(str, bad))
    finally:
        store.close()


def prepare_every_statement(store: PostgresStore) -> None:
    """Run (nearly) every statement of the store once, on a table of a few jobs."""
    now = utcnow()
    until = now + timedelta(seconds=30)
    first, second, third = make_job(created_by="usr_1"), make_job(), make_job()
    for job in (first, second, third):
        store.insert(job)
    store.insert(make_job(), key=new_job_id())
    store.get_by_key("k", created_by=None)
    (claim,) = store.claim(ClaimRequest("w", ("t",), now, until))
    lease = claim.lease
    steps = tuple((status, now) for status in (Status.PRE_PROCESSED, Status.CONFIRMED))
    store.save(Checkpoint(lease, Status.CREATED, now, steps, result={"count": 3}))
    store.save(Checkpoint(lease, Status.CONFIRMED, now, ((Status.PROCESSING, now),)))
    store.save(Checkpoint(lease, Status.PROCESSING, utcnow(), result={"done": 1}))
    store.save(Checkpoint(lease, Status.PROCESSING, utcnow(), until=until))
    store.save(Checkpoint(lease, Status.PROCESSING, utcnow(), result={"done": 2}, cursor={}))
    store.renew([lease], until)
    store.holding([lease])
    store.holder(first.id)
    store.status_of(first.id)
    store.get(first.id)
    store.merge(first.id, now=utcnow(), result={"note": 1})
    store.transition(second.id, from_statuses=[Status.CREATED], to=Status.CANCELED, now=now)
    store.transition(first.id, from_statuses=[Status.PROCESSING], to=Status.PAUSED, now=now)
    store.transition(first.id, from_statuses=[Status.PAUSED], to=Status.CONFIRMED, now=now)
    ids = (third.id,)
    (again,) = store.claim(ClaimRequest("w", ("t",), now, until, ids=ids))
    store.save(Checkpoint(again.lease, Status.CREATED, now, ((Status.PROCESSING, now),)))
    store.transition(third.id, from_statuses=[Status.PROCESSING], to=Status.CANCELED, now=now)
    store.claim_cleanup(
        third.id, owner="w", now=now, lease_until=until, lease=again.lease, began=True
    )
    store.finish_cleanup(again.lease)
    store.claim_cleanup(third.id, owner="w", now=now, lease_until=until)
    done = Checkpoint(
        lease, Status.CONFIRMED, now, ((Status.PROCESSING, now), (Status.COMPLETED, now))
    )
    _, claims = store.commit([done], claim=ClaimRequest("w", ("t",), now, until, limit=2))
    store.release([c.lease for c in claims])
    store.release_all("w")
    store.lease_owners(now)
    store.pending(["t"])
    store.list_and_count(filters={"status": "processing"}, limit=5)
    store.list_and_count(filters={"created_by": "usr_1"}, limit=5)
    store.count(filters={"type": "t"})
    store.events(after=0, limit=5)
    store.events(after=0, limit=5, job_id=first.id)
    store.events(after=0, limit=5, created_by="usr_1")
    store.delete([second.id], statuses=[Status.CANCELED], updated_before=utcnow())
    store.prune_events(before=now - timedelta(days=1), limit=10)


def test_a_claim_runs_without_sequential_scans_and_what_follows_it_with(url: str) -> None:
    # A claim's plan, kept, must not scan the whole table once it is large; the
    # events written after it in the same commit can only scan their counter, and
    # planned with scans disabled they would cost so much the server compiles them.
    store = PostgresStore(url)
    try:
        for _ in range(2):
            store.insert(make_job())
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                "CREATE TABLE seen (what text, scans text); "
                "CREATE FUNCTION note() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                "INSERT INTO seen VALUES (TG_TABLE_NAME, current_setting('enable_seqscan')); "
                "RETURN NULL; END $$; "
                "CREATE TRIGGER note AFTER UPDATE OF owner ON batch_jobs FOR EACH ROW "
                "WHEN (NEW.owner IS NOT NULL) EXECUTE FUNCTION note(); "
                "CREATE TRIGGER note AFTER INSERT ON batch_job_events FOR EACH ROW "
                "EXECUTE FUNCTION note()"
            )
            now = utcnow()
            request = ClaimRequest("w", ("t",), now, now + timedelta(seconds=30))
            (claim,) = store.claim(request)
            done = Checkpoint(claim.lease, Status.CREATED, now, ((Status.FAILED, now),))
            _, (second,) = store.commit([done], claim=request)
            seen = conn.execute("SELECT what, scans FROM seen").fetchall()
        assert second.job.id != claim.job.id
        assert seen == [
            ("batch_jobs", "off"),
            ("batch_jobs", "off"),
            ("batch_job_events", "on"),
        ], seen
    finally:
        store.close()

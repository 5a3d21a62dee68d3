"""A process forked after ``BatchJobs`` was built (a web server's workers, preloaded)."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from batchjobs import BatchJobs

pytestmark = pytest.mark.backends("sqlite", "postgres")
ROOT = Path(__file__).resolve().parent.parent


def run_script(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``script`` in a new interpreter from the project's root; it must exit 0."""
    done = subprocess.run(
        [sys.executable, "-c", script, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done


#: Builds BatchJobs and uses it, forks, then parent and child each create jobs at
#: once; the child closes its BatchJobs before it exits, the parent creates one more.
FORKS = """
import json, os, sys
from batchjobs import BatchJobs
from tests.strategies import Ledger

options = {"files_dir": sys.argv[2]} if "://" in sys.argv[1] else {}
jobs = BatchJobs(sys.argv[1], **options)
jobs.register(Ledger)
jobs.create("ledger", {"n": 1})  # the parent's connections are open, and in use
pid = os.fork()
made = [jobs.create("ledger", {"n": 1}).id for _ in range(50)]
if pid == 0:
    print(json.dumps({"pid": os.getpid(), "origin": jobs.origin, "made": made}), flush=True)
    jobs.close()  # its own connections: the parent's stay open
    os._exit(0)
_, status = os.waitpid(pid, 0)
last = jobs.create("ledger", {"n": 1})
print(json.dumps({"pid": os.getpid(), "origin": jobs.origin, "made": made + [last.id],
                  "child_status": status}), flush=True)
jobs.close()
"""


def test_a_forked_child_uses_connections_and_a_name_of_its_own(
    db_url: str | Path, tmp_path: Path
) -> None:
    done = run_script(FORKS, str(db_url), str(tmp_path / "files"))
    child, parent = (json.loads(line) for line in done.stdout.splitlines())
    assert parent["child_status"] == 0
    assert child["origin"] != parent["origin"]
    assert child["origin"].split(":")[1] == str(child["pid"])
    with BatchJobs(db_url, files_dir=tmp_path / "files") as jobs:
        assert jobs.list_and_count(limit=0)[1] == 102
        origins = {e.job.id: e.origin for e in jobs.events(limit=1000)}
    assert {origins[id] for id in child["made"]} == {child["origin"]}
    assert {origins[id] for id in parent["made"]} == {parent["origin"]}


#: Builds BatchJobs with a mirror and commits (its publisher thread starts), forks;
#: the parent closes its BatchJobs (no more publishing there), then the child commits.
FORK_MIRRORED = """
import os, sys
from batchjobs import BatchJobs
from tests.strategies import Ledger

options = {"files_dir": sys.argv[2]} if "://" in sys.argv[1] else {}
jobs = BatchJobs(sys.argv[1], redis_url=sys.argv[3], channel_prefix=sys.argv[4], **options)
jobs.register(Ledger)
jobs.create("ledger", {"n": 1})  # the parent's publisher thread runs
read, write = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(write)
    os.read(read, 1)  # the parent has closed its BatchJobs
    jobs.create("ledger", {"n": 1})
    jobs.close()
    os._exit(0)
os.close(read)
jobs.close()
os.write(write, b"x")
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def published_seqs(script: str, db_url: str | Path, tmp_path: Path, redis_url: str) -> list[int]:
    """Run ``script`` (its arguments: the database, a files folder, Redis, a channel
    prefix) and return the ``seq`` of each event it published to Redis, in order."""
    import redis

    prefix = f"test-{uuid.uuid4().hex[:10]}"
    client = redis.Redis.from_url(redis_url)
    pubsub = client.pubsub()
    pubsub.psubscribe(f"{prefix}:*")
    try:
        assert pubsub.get_message(timeout=5)["type"] == "psubscribe"
        run_script(script, str(db_url), str(tmp_path / "files"), redis_url, prefix)
        seqs = []
        while (message := pubsub.get_message(timeout=1)) is not None:
            seqs.append(json.loads(message["data"])["seq"])
    finally:
        pubsub.close()
        client.close()
    return seqs


@pytest.mark.redis
def test_a_forked_child_publishes_its_own_events_to_redis(
    db_url: str | Path, tmp_path: Path, redis_url: str
) -> None:
    seqs = published_seqs(FORK_MIRRORED, db_url, tmp_path, redis_url)
    assert seqs == [1, 2]  # the child's event too, published by the child


#: As FORK_MIRRORED, but another thread holds the lock of the mirror's Redis connection
#: pool (as its publisher does while it takes a connection) when the fork begins, and
#: lets it go only once the fork has begun: the fork hooks run last-registered first,
#: so ``release`` is set before the library's hook runs, and until the fork is done the
#: forking thread keeps the interpreter (the holder cannot release it meanwhile unless
#: that hook waits for it). The child must not inherit the lock held.
FORK_POOL_BUSY = """
import faulthandler, os, sys, threading
from batchjobs import BatchJobs
from tests.strategies import Ledger

options = {"files_dir": sys.argv[2]} if "://" in sys.argv[1] else {}
jobs = BatchJobs(sys.argv[1], redis_url=sys.argv[3], channel_prefix=sys.argv[4], **options)
jobs.register(Ledger)
jobs.create("ledger", {"n": 1})
pool_lock = jobs.mirror._publisher.sender._client.connection_pool._lock
held, release = threading.Event(), threading.Event()

def hold():
    with pool_lock:
        held.set()
        release.wait()

holder = threading.Thread(target=hold)
holder.start()
held.wait()
os.register_at_fork(before=release.set)
read, write = os.pipe()
pid = os.fork()
if pid == 0:
    faulthandler.dump_traceback_later(20, exit=True)  # a hang fails, with the stacks
    os.close(write)
    os.read(read, 1)
    jobs.create("ledger", {"n": 1})
    jobs.close()
    os._exit(0)
holder.join()
os.close(read)
jobs.close()
os.write(write, b"x")
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
"""


@pytest.mark.redis
def test_a_child_forked_while_another_thread_is_in_a_redis_pool_publishes(
    db_url: str | Path, tmp_path: Path, redis_url: str
) -> None:
    assert published_seqs(FORK_POOL_BUSY, db_url, tmp_path, redis_url) == [1, 2]


#: Another thread is inside a SQLite store call when the fork begins (a receiver of
#: the job's event, run by ``create`` before it returns, blocks until the fork has
#: begun: fork hooks run last-registered first, so ``release`` is set before the
#: store's hook runs). The fork must wait for that call to end; the child then makes
#: a job of its own on the same file.
FORK_IN_A_STORE_CALL = """
import faulthandler, os, sys, threading
from batchjobs import BatchJobs
from tests.strategies import Ledger

jobs = BatchJobs(sys.argv[1])
jobs.register(Ledger)
inside, release, calls = threading.Event(), threading.Event(), []

def blocking(sender, **kwargs):
    if threading.current_thread().name == "creator":
        inside.set()
        release.wait()
        calls.append("ended")

jobs.subscribe("batch.created", blocking)
creator = threading.Thread(target=jobs.create, args=("ledger", {"n": 1}), name="creator")
creator.start()
inside.wait()
os.register_at_fork(before=release.set)
pid = os.fork()
if pid == 0:
    faulthandler.dump_traceback_later(20, exit=True)
    if calls != ["ended"]:
        os._exit(2)  # forked while the other thread was still in its store call
    jobs.create("ledger", {"n": 1})
    os._exit(0)
creator.join()
_, status = os.waitpid(pid, 0)
assert jobs.list_and_count(limit=0)[1] == 2
jobs.close()
sys.exit(os.waitstatus_to_exitcode(status))
"""


def test_a_fork_waits_for_another_thread_s_sqlite_store_call_to_end(tmp_path: Path) -> None:
    run_script(FORK_IN_A_STORE_CALL, str(tmp_path / "jobs.db"))


#: The parent follows (its feeds woken by Redis), forks; the child follows too, with a
#: poll too slow to matter, and times how long the parent's next event takes to reach it.
FORK_FOLLOWING = """
import os, sys, time
from batchjobs import BatchJobs
from tests.strategies import Ledger

options = {"files_dir": sys.argv[2]} if "://" in sys.argv[1] else {}
jobs = BatchJobs(sys.argv[1], redis_url=sys.argv[3], channel_prefix=sys.argv[4],
                 poll_interval=30, **options)
jobs.register(Ledger)
jobs.follow().close()  # the parent's feeds listen to Redis
read, write = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(read)
    feed = jobs.follow()  # returns once its Redis subscription is made
    os.write(write, b"x")
    started = time.monotonic()
    events = feed.read(timeout=20)
    print(f"{len(events)} {time.monotonic() - started:.2f}", flush=True)
    jobs.close()
    os._exit(0)
os.close(write)
os.read(read, 1)  # the child is following
jobs.create("ledger", {"n": 1})
_, status = os.waitpid(pid, 0)
jobs.close()
sys.exit(os.waitstatus_to_exitcode(status))
"""


@pytest.mark.redis
def test_a_forked_child_following_is_woken_by_redis(
    db_url: str | Path, tmp_path: Path, redis_url: str
) -> None:
    prefix = f"test-{uuid.uuid4().hex[:10]}"
    args = [str(db_url), str(tmp_path / "files"), redis_url, prefix]
    done = run_script(FORK_FOLLOWING, *args)
    count, seconds = done.stdout.split()
    assert count == "1"
    assert float(seconds) < 10  # woken by the message, not by the 30 s poll

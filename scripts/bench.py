#!/usr/bin/env python
"""Measure batchjobs against the floor and against its peers, as ratios taken in one run.

    python scripts/bench.py                 # every scenario at full size (a few minutes)
    python scripts/bench.py --quick         # every scenario at a tiny size (seconds)
    python scripts/bench.py --only checkpoints --profile   # cProfile our side

Each scenario times our side and a baseline in the same run, alternating the
two, and keeps the best of ``--repeat`` runs of each: machines are shared and
noisy, so the ratio is the figure to read, not the absolute times. The output
is one Markdown table (scenario, ours, baseline, ratio, goal, met?) and notes.
A scenario whose code is not installed (the Redis mirror, the CSV strategies,
Huey) prints "not available" instead of failing; Redis rows are skipped when
no server answers on ``--redis``.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import csv
import filecmp
import functools
import importlib.util
import json
import os
import platform
import pstats
import random
import resource
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from ulid import ULID

import batchjobs
from batchjobs import BatchJobs, BatchJobStrategy, JobRun, Status

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
#: The PostgreSQL server's maintenance database: each scenario makes its own next to it.
DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
#: Jobs that are runnable in the claim-and-list files (the newest ones).
RUNNABLE_JOBS = 10
#: Rows per page of the listings timed; both files must fill their pages, since
#: building each record costs more than finding it.
PAGE = 10
#: Seconds any single wait in a scenario may take before it counts as a failure.
WAIT_TIMEOUT = 120.0
#: Seconds the pick-up scenarios let pass after a create before they look for its job: a
#: look at once (a read, and its server process) would take, on two CPUs, the CPU that
#: the worker process picking the job up needs, and be timed with it.
PICKUP_LOOK_AFTER = 0.01


# -- sizes --------------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    """How big each scenario runs."""

    jobs: int  # trivial jobs in the lifecycle and scheduler scenarios
    records: int  # records of the one big job
    chunk: int  # its chunk size
    wake_samples: int  # in-process wake-ups measured
    poll_samples: int  # samples of the 1 s polling baselines
    pickup_samples: int  # cross-process pick-ups through Redis
    pickup_poll_samples: int  # cross-process pick-ups by a 1 s poll (about 1 s each)
    small_file: int  # jobs in the small claim-and-list file
    large_file: int  # jobs in the large one
    csv_rows: int  # rows exported and imported
    outbox_events: int  # events in the large outbox
    repeat: int  # runs of each side; the best is kept


FULL = Sizes(
    jobs=2_000,
    records=1_000_000,
    chunk=1_000,
    wake_samples=200,
    poll_samples=40,
    pickup_samples=50,
    pickup_poll_samples=15,
    small_file=100,
    large_file=100_000,
    csv_rows=1_000_000,
    outbox_events=10_000_000,
    repeat=5,
)
QUICK = Sizes(
    jobs=100,
    records=50_000,
    chunk=1_000,
    wake_samples=20,
    poll_samples=3,
    pickup_samples=5,
    pickup_poll_samples=2,
    small_file=100,
    large_file=2_000,
    csv_rows=5_000,
    outbox_events=20_000,
    repeat=1,
)


# -- results --------------------------------------------------------------------


@dataclass
class Row:
    """One line of the table."""

    scenario: str
    ours: str
    baseline: str = ""
    ratio: float | None = None
    goal: str = ""
    met: bool | None = None

    def cells(self) -> list[str]:
        """The row's cells as printed."""
        ratio = "" if self.ratio is None else f"{self.ratio:.3g}x"
        met = {True: "yes", False: "**no**", None: ""}[self.met]
        return [self.scenario, self.ours, self.baseline, ratio, self.goal, met]


def unavailable(scenario: str, goal: str, why: str, notes: list[str]) -> Row:
    """A row for a scenario that cannot run here, with the reason in the notes."""
    notes.append(f"{scenario}: not available: {why}")
    return Row(scenario, "not available", goal=goal)


def markdown_table(rows: list[Row]) -> str:
    """The rows as a Markdown table."""
    lines = ["| scenario | ours | baseline | ratio | goal | met? |", "|---|---|---|---|---|---|"]
    lines += ["| " + " | ".join(row.cells()) + " |" for row in rows]
    return "\n".join(lines)


def per_second(count: float, seconds: float, unit: str) -> str:
    """``count / seconds`` as a readable rate."""
    rate = count / seconds
    return f"{rate:,.0f} {unit}/s" if rate < 1e6 else f"{rate / 1e6:.2f}M {unit}/s"


def ms(seconds: float) -> str:
    """Seconds as a readable millisecond figure."""
    value = seconds * 1000
    return f"{value:.3g} ms" if value < 100 else f"{value:,.0f} ms"


def us(seconds: float) -> str:
    """Seconds as a readable microsecond figure."""
    return f"{seconds * 1e6:,.0f} µs"


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``, nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


# -- strategies the scenarios run ------------------------------------------------


def spin(start: int, stop: int, steps: int) -> int:
    """The stand-in for real work: ``steps`` integer operations per record."""
    acc = 0
    for i in range(start, stop):
        x = i
        for _ in range(steps):
            x = (x * 31 + 7) & 0xFFFF
        acc ^= x
    return acc


class Trivial(BatchJobStrategy):
    """One record, no work: what a job costs on its own."""

    batch_type = "bench-trivial"

    def pre_process(self, run: JobRun) -> None:
        run.set_count(1)

    def process_chunk(self, run: JobRun, start: int, size: int) -> int:
        return 1


class Spin(BatchJobStrategy):
    """``context["n"]`` records of ``context["steps"]`` spin steps each."""

    batch_type = "bench-spin"
    chunk_size = 1_000

    def pre_process(self, run: JobRun) -> None:
        run.set_count(run.job.context["n"])

    def process_chunk(self, run: JobRun, start: int, size: int) -> int:
        stop = min(start + size, run.job.context["n"])
        spin(start, stop, run.job.context["steps"])
        return stop - start


class Wait(BatchJobStrategy):
    """One record that waits ``context["ms"]`` milliseconds: a job bound by I/O, not the CPU."""

    batch_type = "bench-wait"

    def pre_process(self, run: JobRun) -> None:
        run.set_count(1)

    def process_chunk(self, run: JobRun, start: int, size: int) -> int:
        time.sleep(run.job.context["ms"] / 1000)
        return 1


class Mark(BatchJobStrategy):
    """Records in ``result.picked_at`` when ``pre_process`` started.

    ``time.monotonic`` is one clock for every process of the machine, so a
    timestamp taken in a worker process compares with one taken here.
    """

    batch_type = "bench-mark"

    def pre_process(self, run: JobRun) -> None:
        run.result["picked_at"] = time.monotonic()
        run.set_count(1)

    def process_chunk(self, run: JobRun, start: int, size: int) -> int:
        return 1


# -- the harness -----------------------------------------------------------------


class Bench:
    """What every scenario shares: sizes, a scratch directory, Redis, the profiler."""

    def __init__(
        self, sizes: Sizes, workdir: Path, redis_url: str, *, profile: bool = False
    ) -> None:
        self.sizes = sizes
        self.workdir = workdir
        self.redis_url = redis_url
        self.profiler = cProfile.Profile() if profile else None
        self.notes: list[str] = []
        self._files = 0
        self._redis_up: bool | None = None
        self._steps: int | None = None
        self.postgres_url = DEFAULT_POSTGRES_URL

    @property
    def steps(self) -> int:
        """Spin steps per record for about 1 µs of work (calibrated once per run)."""
        if self._steps is None:
            self._steps = calibrate_steps()
        return self._steps

    def fresh(self, name: str) -> Path:
        """A path in a new, empty directory of the scratch area."""
        self._files += 1
        folder = self.workdir / f"{self._files:03d}-{Path(name).stem}"
        folder.mkdir()
        return folder / name

    @contextlib.contextmanager
    def ours(self) -> Iterator[None]:
        """Profile the enclosed code (calling thread only) when ``--profile`` is on."""
        if self.profiler is None:
            yield
            return
        self.profiler.enable()
        try:
            yield
        finally:
            self.profiler.disable()

    def best_of(self, *sides: Callable[[], float], extra: int = 0) -> list[float]:
        """Run each side ``repeat`` (+ ``extra``) times, alternating; the best figure of each."""
        best = [float("inf")] * len(sides)
        for _ in range(self.sizes.repeat + (extra if self.sizes.repeat > 1 else 0)):
            for i, side in enumerate(sides):
                best[i] = min(best[i], side())
        return best

    def paired(
        self, ours: Callable[[], float], baseline: Callable[[], float], *, extra: int = 0
    ) -> tuple[float, float, float]:
        """Run the two sides in pairs (order alternating); the median seconds of each
        and the median of the pairs' ratios (baseline / ours).

        For ratios between two runs of the same code where a machine's speed
        swings by a third within seconds: each pair shares its moment, and the
        median drops the pairs a swing split. The best of each side would pair
        the luckiest moment of one with the luckiest of the other.
        """
        pairs = []
        for i in range(self.sizes.repeat + (extra if self.sizes.repeat > 1 else 0)):
            if i % 2:
                base_s = baseline()
                ours_s = ours()
            else:
                ours_s = ours()
                base_s = baseline()
            pairs.append((ours_s, base_s))
        return (
            statistics.median(o for o, _ in pairs),
            statistics.median(b for _, b in pairs),
            statistics.median(b / o for o, b in pairs),
        )

    def redis_up(self) -> bool:
        """Whether the Redis server answers (asked once)."""
        if self._redis_up is None:
            url = urlparse(self.redis_url)
            try:
                with socket.create_connection(
                    (url.hostname or "127.0.0.1", url.port or 6379), timeout=0.5
                ) as sock:
                    sock.sendall(b"PING\r\n")
                    self._redis_up = sock.recv(16).startswith(b"+PONG")
            except OSError:
                self._redis_up = False
        return self._redis_up

    def redis_missing(self) -> str | None:
        """Why the Redis scenarios cannot run, or ``None``."""
        if importlib.util.find_spec("batchjobs.pubsub") is None:
            return "the Redis mirror (batchjobs.pubsub) is not in this checkout yet"
        if not self.redis_up():
            return f"Redis is not answering at {self.redis_url}; skipped"
        return None


def open_jobs(path: Path | str, *strategies: type[BatchJobStrategy], **options: Any) -> BatchJobs:
    """A ``BatchJobs`` on ``path`` (or a PostgreSQL URL) with ``strategies`` registered."""
    jobs = BatchJobs(path, **options)
    for strategy in strategies:
        jobs.register(strategy)
    return jobs


def redis_options(redis_url: str | None, prefix: str) -> dict[str, Any]:
    """``BatchJobs`` options that turn the mirror on (on a private prefix), or none."""
    return {"redis_url": redis_url, "channel_prefix": prefix} if redis_url else {}


def count_completed(jobs: BatchJobs, n: int) -> None:
    """Fail loudly unless ``n`` jobs completed: a fast wrong run proves nothing."""
    done = jobs.list_and_count(status="completed", limit=0)[1]
    if done != n:
        raise RuntimeError(f"{done} of {n} jobs completed")


def completion_latch(jobs: BatchJobs, n: int) -> threading.Event:
    """An event set once ``n`` jobs of ``jobs`` completed."""
    done = threading.Event()
    lock = threading.Lock()
    seen = [0]

    def on_completed(sender: Any, **kwargs: Any) -> None:
        with lock:
            seen[0] += 1
            if seen[0] == n:
                done.set()

    jobs.subscribe("batch.completed", on_completed)
    return done


# -- scenarios --------------------------------------------------------------------


def lifecycle(b: Bench) -> list[Row]:
    """Trivial jobs, create → completed with ``run_until_idle`` vs a plain sqlite3 loop."""
    n = b.sizes.jobs
    label = f"lifecycle: {n:,} one-chunk jobs, run_until_idle"

    def ours() -> float:
        with open_jobs(b.fresh("lifecycle.db"), Trivial) as jobs:
            start = time.perf_counter()
            with b.ours():
                for _ in range(n):
                    jobs.create(Trivial.batch_type)
                jobs.run_until_idle(timeout=WAIT_TIMEOUT)
            elapsed = time.perf_counter() - start
            count_completed(jobs, n)
        return elapsed

    def floor() -> float:
        path = b.fresh("floor.db")
        BatchJobs(path).close()  # the same table, indexes and WAL mode as ours
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("PRAGMA synchronous=NORMAL")  # what durability="normal" sets
        steps = ["pre_processed", "confirmed", "processing", None, "completed"]
        start = time.perf_counter()
        ids = []
        for _ in range(n):
            now = datetime.now(timezone.utc).isoformat()
            job_id = f"batch_{ULID()}"
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(
                "INSERT INTO batch_jobs (id, type, status, dry_run, context, result, "
                "created_at, updated_at) VALUES (?, ?, 'created', 0, '{}', '{}', ?, ?)",
                (job_id, Trivial.batch_type, now, now),
            )
            conn.execute("COMMIT")
            ids.append(job_id)
        for job_id in ids:
            status = "created"
            for step in steps:
                now = datetime.now(timezone.utc).isoformat()
                conn.execute("BEGIN IMMEDIATE")
                if step is None:  # the checkpoint
                    cur = conn.execute(
                        "UPDATE batch_jobs SET result = ?, updated_at = ? "
                        "WHERE id = ? AND status = ?",
                        ('{"count":1,"advancement_count":1,"progress":1.0}', now, job_id, status),
                    )
                else:
                    cur = conn.execute(
                        f"UPDATE batch_jobs SET status = ?, {step}_at = ?, updated_at = ? "
                        "WHERE id = ? AND status = ?",
                        (step, now, now, job_id, status),
                    )
                    status = step
                conn.execute("COMMIT")
                if cur.rowcount != 1:
                    raise RuntimeError("the floor loop lost a job")
        elapsed = time.perf_counter() - start
        conn.close()
        return elapsed

    ours_s, floor_s = b.best_of(ours, floor)
    return [
        Row(
            label,
            per_second(n, ours_s, "jobs"),
            per_second(n, floor_s, "jobs") + " (sqlite3 loop, 6 commits/job)",
            floor_s / ours_s,
            ">= 1.0x",
            floor_s / ours_s >= 1.0,
        )
    ]


def scheduler(b: Bench) -> list[Row]:
    """The same trivial jobs through ``start()`` vs Huey's SqliteHuey, both at synchronous=FULL.

    Two ways: draining a queue filled beforehand (workers only), and creating
    the jobs while the workers run (every commit of a job's life).
    """
    n = b.sizes.jobs
    goal = ">= 2.0x"
    labels = {
        True: f"scheduler: drain {n:,} queued one-chunk jobs, start(), durability=full",
        False: f"scheduler: create and run {n:,} one-chunk jobs, start(), durability=full",
    }
    if importlib.util.find_spec("huey") is None:
        why = "Huey is not installed (pip install -e '.[bench]')"
        return [unavailable(label, goal, why, b.notes) for label in labels.values()]
    from huey import SqliteHuey

    def ours(queued: bool) -> float:
        with open_jobs(b.fresh("scheduler.db"), Trivial, durability="full") as jobs:
            done = completion_latch(jobs, n)
            if queued:
                for _ in range(n):
                    jobs.create(Trivial.batch_type)
            else:
                jobs.start()
            start = time.perf_counter()
            with b.ours():
                if queued:
                    jobs.start()
                else:
                    for _ in range(n):
                        jobs.create(Trivial.batch_type)
                finished = done.wait(WAIT_TIMEOUT)
            elapsed = time.perf_counter() - start
            jobs.shutdown()
            if not finished:
                raise RuntimeError(f"jobs not done after {WAIT_TIMEOUT} s")
            count_completed(jobs, n)
        return elapsed

    def huey(queued: bool) -> float:
        # Huey's defaults: WAL, and no synchronous pragma, so SQLite's FULL.
        queue = SqliteHuey("bench", filename=str(b.fresh("huey.db")))
        done = threading.Event()
        lock = threading.Lock()
        seen = [0]

        @queue.task()
        def noop() -> None:
            with lock:
                seen[0] += 1
                if seen[0] == n:
                    done.set()

        # Two worker threads like our concurrency=2; polling tighter than Huey's
        # default (0.1 s growing to 10 s) so that Huey never idles in a backoff.
        consumer = queue.create_consumer(
            workers=2, worker_type="thread", periodic=False, initial_delay=0.01, max_delay=0.1
        )
        handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
        if queued:
            for _ in range(n):
                noop()
        else:
            consumer.start()
        try:
            start = time.perf_counter()
            if queued:
                consumer.start()
            else:
                for _ in range(n):
                    noop()
            finished = done.wait(WAIT_TIMEOUT)
            elapsed = time.perf_counter() - start
        finally:
            consumer.stop(graceful=True)
            for signum, handler in handlers.items():
                signal.signal(signum, handler)
            queue.storage.close()
        if not finished:
            raise RuntimeError(f"Huey tasks not done after {WAIT_TIMEOUT} s")
        return elapsed

    rows = []
    for queued, label in labels.items():
        ours_s, huey_s = b.best_of(functools.partial(ours, queued), functools.partial(huey, queued))
        rows.append(
            Row(
                label,
                per_second(n, ours_s, "jobs"),
                per_second(n, huey_s, "tasks") + " (SqliteHuey, 2 threads)",
                huey_s / ours_s,
                goal,
                huey_s / ours_s >= 2.0,
            )
        )
    b.notes.append(
        "scheduler: two worker threads on each side. Drain: the queue is filled first, the "
        "clock runs from start() (consumer.start()) to the last completion. Create and run: "
        "the main thread creates (enqueues) while the workers run, the clock runs from the "
        "first create to the last completion."
    )
    return rows


def calibrate_steps(target: float = 1e-6) -> int:
    """Spin steps per record that make about ``target`` seconds of work on this machine."""
    sample = 50_000

    def per_record(steps: int) -> float:
        # The fastest of several runs: the machine's speed when nothing else runs.
        return min(timed(lambda: spin(0, sample, steps)) for _ in range(7)) / sample

    base, probe = per_record(0), per_record(20)
    step_cost = max((probe - base) / 20, 1e-9)
    return max(1, round((target - base) / step_cost))


def timed(fn: Callable[[], object]) -> float:
    """Seconds ``fn()`` took."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def big_job(
    b: Bench,
    path: Path,
    steps: int,
    cpu: list[float] | None = None,
    mirror_stats: list[Any] | None = None,
    **options: Any,
) -> float:
    """Seconds ``run_until_idle`` takes on one job of ``records`` spin records.

    The CPU seconds it took (every thread of this process) go to ``cpu``; with
    the mirror on, its counters (taken once it closed) go to ``mirror_stats``.
    """
    n, chunk = b.sizes.records, b.sizes.chunk
    with open_jobs(path, Spin, **options) as jobs:
        job = jobs.create(Spin.batch_type, {"n": n, "steps": steps, "chunk_size": chunk})
        start, start_cpu = time.perf_counter(), time.process_time()
        with b.ours():
            jobs.run_until_idle(timeout=WAIT_TIMEOUT)
        elapsed = time.perf_counter() - start
        if cpu is not None:
            cpu.append(time.process_time() - start_cpu)
        done = jobs.retrieve(job.id)
        if done.result.get("advancement_count") != n:
            raise RuntimeError(f"the big job ended {done.status.value} at {done.result}")
    if mirror_stats is not None and jobs.mirror is not None:
        mirror_stats.append(jobs.mirror.stats)
    return elapsed


def bare_loop(n: int, chunk: int, steps: int, cpu: list[float] | None = None) -> float:
    """Seconds the big job's work takes in a bare loop (CPU seconds to ``cpu``)."""
    start, start_cpu = time.perf_counter(), time.process_time()
    for first in range(0, n, chunk):
        spin(first, min(first + chunk, n), steps)
    if cpu is not None:
        cpu.append(time.process_time() - start_cpu)
    return time.perf_counter() - start


def checkpoints(b: Bench) -> list[Row]:
    """One job of many ~1 µs records vs the same work in a bare loop."""
    n, chunk = b.sizes.records, b.sizes.chunk
    chunks = -(-n // chunk)
    steps = b.steps
    label = f"one job of {n:,} records (~1 µs each), chunk {chunk:,}"
    ours_cpu: list[float] = []
    bare_cpu: list[float] = []
    ours_s, bare_s = b.best_of(
        lambda: big_job(b, b.fresh("big.db"), steps, ours_cpu),
        lambda: bare_loop(n, chunk, steps, bare_cpu),
        extra=2,
    )
    # The same job with no work per record isolates what a checkpoint costs.
    empty_s, loop_s = b.best_of(
        lambda: big_job(b, b.fresh("empty.db"), 0), lambda: bare_loop(n, chunk, 0), extra=2
    )
    b.notes.append(
        f"one job: {steps} spin steps per record = {bare_s / n * 1e6:.2f} µs of work per record "
        f"here; with no work per record the job's {chunks:,} checkpoints cost "
        f"{(empty_s - loop_s) / chunks * 1e6:,.0f} µs each. Measured in CPU time (less "
        f"disturbed by other processes) the ratio is {min(ours_cpu) / min(bare_cpu):.3g}x."
    )
    return [
        Row(
            label,
            f"{ours_s:.3f} s",
            f"{bare_s:.3f} s (bare loop)",
            ours_s / bare_s,
            "<= 1.05x",
            ours_s / bare_s <= 1.05,
        )
    ]


def mirror(b: Bench) -> list[Row]:
    """The big job with the Redis mirror on vs off."""
    n = b.sizes.records
    label = f"one job of {n:,} records, Redis mirror on"
    goal = ">= 0.8x"
    missing = b.redis_missing()
    if missing:
        return [unavailable(label, goal, missing, b.notes)]
    steps = b.steps
    prefix = f"bench-{os.getpid()}"
    mirrored = {"redis_url": b.redis_url, "channel_prefix": prefix}
    stats: list[Any] = []
    on_cpu: list[float] = []
    off_cpu: list[float] = []
    on_s, off_s, big_ratio = b.paired(
        lambda: big_job(b, b.fresh("mirror.db"), steps, on_cpu, stats, **mirrored),
        lambda: big_job(b, b.fresh("plain.db"), steps, off_cpu),
        extra=2,
    )
    last = stats[-1]
    b.notes.append(
        f"mirror: the last run published {last.published:,} events to Redis from the outbox "
        f"({last.behind:,} left behind when the clock stopped); the clock stops when the job "
        "completes (events not published yet then are published by close(), untimed). "
        "Measured in CPU time of the whole process, publisher thread included, the ratio is "
        f"{statistics.median(off_cpu) / statistics.median(on_cpu):.3g}x. Both mirror rows "
        "give medians of paired runs (mirror on, then off, then off, then on…): "
        "throughputs from the median times, the ratio the median of the pairs' ratios."
    )
    jobs_n = b.sizes.jobs

    def tiny(path: Path, **options: Any) -> float:
        with open_jobs(path, Trivial, **options) as jobs:
            start = time.perf_counter()
            for _ in range(jobs_n):
                jobs.create(Trivial.batch_type)
            jobs.run_until_idle(timeout=WAIT_TIMEOUT)
            elapsed = time.perf_counter() - start
            count_completed(jobs, jobs_n)
        return elapsed

    tiny_on, tiny_off, tiny_ratio = b.paired(
        lambda: tiny(b.fresh("tiny-mirror.db"), **mirrored),
        lambda: tiny(b.fresh("tiny-plain.db")),
        extra=4,
    )
    return [
        Row(
            label,
            per_second(n, on_s, "records"),
            per_second(n, off_s, "records") + " (mirror off)",
            big_ratio,
            goal,
            big_ratio >= 0.8,
        ),
        Row(
            f"lifecycle of {jobs_n:,} one-chunk jobs (6 events each), Redis mirror on",
            per_second(jobs_n, tiny_on, "jobs"),
            per_second(jobs_n, tiny_off, "jobs") + " (mirror off)",
            tiny_ratio,
            goal,
            tiny_ratio >= 0.8,
        ),
    ]


def apscheduler_polling(b: Bench, samples: int) -> list[float]:
    """Latencies of rows found by an APScheduler job polling a SQLite table every second."""
    from apscheduler.schedulers.background import BackgroundScheduler

    path = b.fresh("poll.db")
    writer = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    writer.execute("PRAGMA journal_mode=WAL")
    writer.execute("CREATE TABLE pending (id INTEGER PRIMARY KEY, picked INTEGER DEFAULT 0)")
    reader = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    created: dict[int, float] = {}
    picked: dict[int, float] = {}

    def poll() -> None:
        now = time.monotonic()
        for (row_id,) in reader.execute("SELECT id FROM pending WHERE picked = 0").fetchall():
            picked[row_id] = now
            reader.execute("UPDATE pending SET picked = 1 WHERE id = ?", (row_id,))

    aps = BackgroundScheduler(timezone="UTC")
    aps.add_job(poll, "interval", seconds=1.0)
    aps.start()
    pace = random.Random(7)
    try:
        for row_id in range(1, samples + 1):
            time.sleep(pace.uniform(0, 0.25))  # land at every phase of the poll
            writer.execute("INSERT INTO pending (id) VALUES (?)", (row_id,))
            created[row_id] = time.monotonic()
        deadline = time.monotonic() + 5
        while len(picked) < samples and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        aps.shutdown()
        writer.close()
        reader.close()
    return [max(0.0, picked[i] - created[i]) for i in created if i in picked]


def wakeup(b: Bench) -> list[Row]:
    """In-process: ``create`` returning → ``pre_process`` starting, with idle workers."""
    samples = b.sizes.wake_samples
    latencies = []
    early = 0
    with open_jobs(b.fresh("wake.db"), Mark) as jobs:
        jobs.start()
        jobs.wait(jobs.create(Mark.batch_type).id, timeout=WAIT_TIMEOUT)  # warm up
        for _ in range(samples):
            with b.ours():
                job = jobs.create(Mark.batch_type)
            created = time.monotonic()
            picked = jobs.wait(job.id, timeout=WAIT_TIMEOUT).result["picked_at"]
            early += picked < created
            latencies.append(max(0.0, picked - created))
            time.sleep(0.002)  # let the workers go idle again
        jobs.shutdown()
    polled = apscheduler_polling(b, b.sizes.poll_samples)
    b.notes.append(
        f"wake-up: {samples} jobs created one at a time on idle workers; {early} were picked up "
        "before create returned (counted as 0). Baseline: an APScheduler job polling a SQLite "
        f"table every second, {len(polled)} rows inserted at random times."
    )
    rows = []
    for name, q, limit in (("p50", 0.5, 0.002), ("p95", 0.95, 0.010)):
        ours_v, base_v = percentile(latencies, q), percentile(polled, q)
        rows.append(
            Row(
                f"wake-up in process, create → pre_process, {name}",
                ms(ours_v),
                ms(base_v) + " (APScheduler, 1 s poll)",
                ours_v / base_v if base_v else None,
                f"<= {limit * 1000:g} ms",
                ours_v <= limit,
            )
        )
    return rows


def start_worker(
    db: Path | str, poll_interval: float, redis_url: str | None, prefix: str, concurrency: int = 2
) -> Any:
    """A worker process on ``db``; returns once its ``start()`` has returned."""
    command = [sys.executable, __file__, "--worker", str(db), "--poll-interval", str(poll_interval)]
    command += ["--concurrency", str(concurrency)]
    if redis_url:
        command += ["--worker-redis", redis_url, "--prefix", prefix]
    proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        proc.kill()
        raise RuntimeError(f"the worker process did not start (exit {proc.wait()})")
    return proc


def stop_worker(proc: Any) -> None:
    """Close the worker's stdin (it shuts down) and wait for it."""
    proc.stdin.close()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def pickups(
    b: Bench, db: Path | str, samples: int, poll: float, redis_url: str | None
) -> list[float]:
    """Latencies from ``create`` here to ``pre_process`` in a worker process."""
    name = db.parent.name if isinstance(db, Path) else db.rsplit("/", 1)[1]
    prefix = f"bench-{os.getpid()}-{name}"
    options = redis_options(redis_url, prefix)
    latencies = []
    with open_jobs(db, Mark, **options) as jobs:
        proc = start_worker(db, poll, redis_url, prefix)
        try:
            jobs.wait(jobs.create(Mark.batch_type).id, timeout=WAIT_TIMEOUT)  # warm up
            pace = random.Random(11)
            for _ in range(samples):
                # Spread the creates over the poll's phase: a fixed rhythm would
                # lock on to it and show a latency the poll does not have.
                woken = redis_url is not None or isinstance(db, str)
                time.sleep(pace.uniform(0, 0.05 if woken else poll))
                job = jobs.create(Mark.batch_type)
                created = time.monotonic()
                time.sleep(PICKUP_LOOK_AFTER)
                try:
                    done = jobs.wait(job.id, timeout=max(5.0, 3 * poll))
                except TimeoutError:
                    b.notes.append(f"pick-up: job {job.id} was not picked up in time")
                    continue
                latencies.append(max(0.0, done.result["picked_at"] - created))
        finally:
            stop_worker(proc)
    if not latencies:
        raise RuntimeError("no job was picked up by the worker process")
    return latencies


def pickup(b: Bench) -> list[Row]:
    """Cross-process: a job created here, picked up by a worker process woken through Redis."""
    label = "pick-up by another process through Redis"
    missing = b.redis_missing()
    if missing:
        return [unavailable(f"{label}, p50", "<= 20 ms", missing, b.notes)]
    woken = pickups(b, b.fresh("pickup.db"), b.sizes.pickup_samples, 30.0, b.redis_url)
    polled = pickups(b, b.fresh("polled.db"), b.sizes.pickup_poll_samples, 1.0, None)
    b.notes.append(
        f"pick-up: the worker polls every 30 s and is woken through Redis ({len(woken)} jobs); "
        f"baseline: the same worker without Redis polling every 1 s ({len(polled)} jobs)."
    )
    rows = []
    for name, q in (("p50", 0.5), ("p95", 0.95)):
        ours_v, base_v = percentile(woken, q), percentile(polled, q)
        rows.append(
            Row(
                f"{label}, {name}",
                ms(ours_v),
                ms(base_v) + " (1 s poll, no Redis)",
                ours_v / base_v if base_v else None,
                "<= 20 ms" if name == "p50" else "—",
                ours_v <= 0.020 if name == "p50" else None,
            )
        )
    return rows


def processes(b: Bench) -> list[Row]:
    """Jobs/s of three worker processes sharing one file vs one worker process."""
    n = b.sizes.jobs
    rows = []
    for title, kind, context in (
        ("one-chunk jobs", Trivial, {}),
        ("jobs waiting 5 ms on I/O", Wait, {"ms": 5}),
    ):
        rates = {}
        for workers in (1, 3):
            db = b.fresh(f"processes-{kind.batch_type}-{workers}.db")
            with open_jobs(db, kind) as jobs:
                procs = [start_worker(db, 0.01, None, "") for _ in range(workers)]
                try:
                    # Queued in one transaction, so the clock times the workers alone.
                    with jobs.store.write():
                        for _ in range(n):
                            jobs.create(kind.batch_type, context)
                    start = time.perf_counter()
                    while jobs.list_and_count(status="completed", limit=0)[1] < n:
                        time.sleep(0.005)
                    rates[workers] = n / (time.perf_counter() - start)
                finally:
                    for proc in procs:
                        stop_worker(proc)
        rows.append(
            Row(
                f"3 worker processes on one file, {n:,} {title}",
                f"{rates[3]:,.0f} jobs/s",
                f"{rates[1]:,.0f} jobs/s (1 process)",
                rates[3] / rates[1],
                "—",
                None,
            )
        )
    return rows


def fill(path: Path, total: int) -> None:
    """Write ``total`` jobs straight into the file: the newest runnable, the rest at rest.

    Five users; every job of ``usr_3`` that is not runnable is completed.
    """
    done, failed, canceled = "completed", "failed", "canceled"
    # Positions 3, 8, 13 and 18 (usr_3's) are completed.
    resting = [done] * 4 + [failed] + [done] * 2 + [canceled, done, failed, done, done]
    resting += ["pre_processed", done, done, done, done, failed, done, canceled]
    start = datetime.now(timezone.utc) - timedelta(seconds=total)
    rows = []
    for i in range(total):
        at = start + timedelta(milliseconds=i)
        status = "created" if i >= total - RUNNABLE_JOBS else resting[i % len(resting)]
        stamp = at.isoformat()
        rows.append(
            (
                f"batch_{ULID.from_datetime(at)}",
                Trivial.batch_type if i % 2 or status == "created" else "bench-other",
                status,
                f"usr_{i % 5}",
                int(status == "pre_processed"),
                stamp,
                stamp,
                None if status == "created" else stamp,
                '{"count":1,"advancement_count":1,"progress":1.0}',
            )
        )
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO batch_jobs (id, type, status, created_by, dry_run, created_at, updated_at, "
        "pre_processed_at, result) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        rows,
    )
    conn.execute("COMMIT")
    # No ANALYZE: an application's file has no statistics either. Start with an
    # empty WAL, so that no timed commit pays for copying the fill back.
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def scale(b: Bench) -> list[Row]:
    """Claim and list in a file of ``large_file`` jobs vs one of ``small_file``."""
    small, large = b.sizes.small_file, b.sizes.large_file
    rounds = max(b.sizes.repeat, 3)
    figures: dict[int, dict[str, float]] = {}
    claim_rounds = 4 * rounds  # a claim is one commit: noisier than a read
    for total in (small, large):
        path = b.fresh(f"scale-{total}.db")
        with open_jobs(path, Trivial) as jobs:
            fill(path, total)
            runner = jobs.runner
            claim = float("inf")
            for _ in range(claim_rounds):
                start = time.perf_counter()
                with b.ours():
                    for _ in range(RUNNABLE_JOBS):
                        if runner.claim_next() is None:
                            raise RuntimeError("nothing to claim")
                claim = min(claim, (time.perf_counter() - start) / RUNNABLE_JOBS)
                runner.store.release_all(runner.owner)
            queries = {
                "list": lambda: jobs.list_and_count(limit=PAGE),
                "user": lambda: jobs.list_and_count(
                    created_by="usr_3", status="completed", limit=PAGE
                ),
            }
            figures[total] = {"claim": claim}
            for name, query in queries.items():
                if len(query()[0]) != PAGE:
                    raise RuntimeError(f"the {name} query does not fill a page of {PAGE}")
                best = float("inf")
                for _ in range(rounds):
                    start = time.perf_counter()
                    with b.ours():
                        for _ in range(20):
                            query()
                    best = min(best, (time.perf_counter() - start) / 20)
                figures[total][name] = best
    titles = {
        "claim": "claim the next job",
        "list": f"list_and_count(): newest {PAGE} + count",
        "user": f"list_and_count(user, status): newest {PAGE} + count",
    }
    rows = []
    for key, title in titles.items():
        at_large, at_small = figures[large][key], figures[small][key]
        rows.append(
            Row(
                f"{title}, {large:,} jobs in the file",
                us(at_large),
                f"{us(at_small)} ({small:,} jobs)",
                at_large / at_small,
                "<= 1.5x",
                at_large / at_small <= 1.5,
            )
        )
    return rows


def dashboard_list(b: Bench) -> list[Row]:
    """The dashboard's job list page, rendered, in a file of ``large_file`` jobs vs ``small_file``.

    The page of ``usr_3`` (a fifth of the file): its newest 25 jobs, the status
    chips with their counts, through Flask's test client (server time only).
    """
    from flask import Flask

    from batchjobs.http import dashboard

    small, large = b.sizes.small_file, b.sizes.large_file
    headers = {"Authorization": "Bearer t"}
    clients: dict[int, Any] = {}
    with contextlib.ExitStack() as stack:
        for total in (small, large):
            path = b.fresh(f"dashboard-{total}.db")
            jobs = stack.enter_context(open_jobs(path, Trivial))
            fill(path, total)
            app = Flask("bench")
            app.secret_key = "bench"
            app.register_blueprint(dashboard.create_blueprint(jobs, tokens={"t": "usr_3"}))
            clients[total] = app.test_client()
            page = clients[total].get("/", headers=headers)
            rows = page.text.count("<tr data-job-id=")
            if page.status_code != 200 or rows != min(dashboard.PAGE_SIZE, total // 5):
                raise RuntimeError(f"the list page answered {page.status_code} with {rows} rows")
        # Rounds of each file in turn, the best kept: the machine's noise hits both alike.
        figures = {total: float("inf") for total in clients}
        for _ in range(max(b.sizes.repeat, 3) * 4):
            for total, client in clients.items():
                start = time.perf_counter()
                with b.ours():
                    for _ in range(5):
                        client.get("/", headers=headers)
                figures[total] = min(figures[total], (time.perf_counter() - start) / 5)
    at_large, at_small = figures[large], figures[small]
    return [
        Row(
            f"dashboard list page (25 rows, chips with counts), {large:,} jobs in the file",
            ms(at_large),
            f"{ms(at_small)} ({small:,} jobs)",
            at_large / at_small,
            "<= 1.5x, < 100 ms",
            at_large / at_small <= 1.5 and at_large < 0.1,
        )
    ]


# -- PostgreSQL: one server, a database per side, the peers in the same run ---------------

#: Checkpoints a side runs before the other side's turn (the checkpoint row).
CHECKPOINT_BLOCK = 50


def postgres_missing(b: Bench) -> str | None:
    """Why the PostgreSQL scenarios cannot run, or ``None``."""
    if importlib.util.find_spec("psycopg") is None:
        return "psycopg is not installed (pip install -e '.[postgres]')"
    import psycopg

    try:
        psycopg.connect(b.postgres_url, connect_timeout=3).close()
    except psycopg.Error as error:
        return f"PostgreSQL is not answering at {b.postgres_url}: {error}".splitlines()[0]
    return None


@contextlib.contextmanager
def pg_database(b: Bench) -> Iterator[str]:
    """A fresh database on the server (dropped after); yields its URL."""
    import psycopg

    name = f"batchjobs_bench_{os.getpid()}_{random.randrange(1 << 30)}"
    with psycopg.connect(b.postgres_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    try:
        yield b.postgres_url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with psycopg.connect(b.postgres_url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def pg_jobs(b: Bench, url: str, *strategies: type[BatchJobStrategy], **options: Any) -> BatchJobs:
    """``open_jobs`` on a PostgreSQL database, its files in the scratch area."""
    return open_jobs(url, *strategies, files_dir=b.fresh("files").parent, **options)


def pg_queue(jobs: BatchJobs, kind: type[BatchJobStrategy], n: int, context: Any = None) -> None:
    """Queue ``n`` created jobs in one statement, as a producer's batch would."""
    from psycopg.types.json import Jsonb

    store: Any = jobs.store
    now = datetime.now(timezone.utc)
    rows = [
        (f"batch_{ULID.from_datetime(now + timedelta(microseconds=i))}", Jsonb(context or {}))
        for i in range(n)
    ]

    def work(conn: Any, wake: set[str]) -> None:
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO batch_jobs (id, type, status, context, created_at, updated_at) "
                "VALUES (%s, %s, 'created', %s, now(), now())",
                [(id, kind.batch_type, ctx) for id, ctx in rows],
            )
        wake.add(kind.batch_type)  # the commit sends a NOTIFY, as the store's inserts do

    store._database.write(work)


def pg_drain(b: Bench) -> list[Row]:
    """2,000 queued one-chunk jobs drained by 2 worker threads vs procrastinate and pgqueuer."""
    n = b.sizes.jobs

    def ours() -> float:
        with pg_database(b) as url, pg_jobs(b, url, Trivial, concurrency=2) as jobs:
            done = completion_latch(jobs, n)
            pg_queue(jobs, Trivial, n)
            start = time.perf_counter()
            with b.ours():
                jobs.start()
                finished = done.wait(WAIT_TIMEOUT)
            elapsed = time.perf_counter() - start
            jobs.shutdown()
            if not finished:
                raise RuntimeError(f"jobs not done after {WAIT_TIMEOUT} s")
            count_completed(jobs, n)
        return elapsed

    def procrastinate_drain() -> float:
        import procrastinate

        with pg_database(b) as url:
            app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=url))
            seen = [0]
            done = [0.0]

            @app.task(name="noop")
            def noop() -> None:
                seen[0] += 1
                if seen[0] == n:
                    done[0] = time.perf_counter()

            with app.open():
                app.schema_manager.apply_schema()
                noop.batch_defer(*({} for _ in range(n)))
                start = time.perf_counter()
                # Until the queue is empty; the clock stops at the last task's end.
                app.run_worker(concurrency=2, wait=False, install_signal_handlers=False)
        if seen[0] != n:
            raise RuntimeError(f"procrastinate ran {seen[0]} of {n} tasks")
        return done[0] - start

    def pgqueuer_drain() -> float:
        import asyncio

        import psycopg
        from pgqueuer import PsycopgDriver, Queries, QueueManager

        async def run(url: str) -> float:
            conn = await psycopg.AsyncConnection.connect(url, autocommit=True)
            try:
                queries = Queries(PsycopgDriver(conn))
                await queries.install()
                manager = QueueManager(queries)
                seen = [0]
                done = [0.0]

                @manager.entrypoint("noop")
                async def noop(job: Any) -> None:
                    seen[0] += 1
                    if seen[0] == n:
                        done[0] = time.perf_counter()
                        manager.shutdown.set()

                await queries.enqueue(["noop"] * n, [None] * n, [0] * n)
                start = time.perf_counter()
                await asyncio.wait_for(manager.run(), WAIT_TIMEOUT)
            finally:
                await conn.close()
            if seen[0] != n:
                raise RuntimeError(f"pgqueuer ran {seen[0]} of {n} jobs")
            return done[0] - start

        with pg_database(b) as url:
            return asyncio.run(run(url))

    label = f"PostgreSQL: drain {n:,} queued one-chunk jobs, 2 worker threads"
    goals = {"procrastinate": ">= 2.0x", "pgqueuer": ">= 1.0x"}
    peers = {"procrastinate": procrastinate_drain, "pgqueuer": pgqueuer_drain}
    missing = [name for name in peers if importlib.util.find_spec(name) is None]
    runnable = {name: side for name, side in peers.items() if name not in missing}
    best = b.best_of(ours, *runnable.values())
    figures = dict(zip(runnable, best[1:], strict=True))
    rows = []
    for name, goal in goals.items():
        if name in missing:
            why = f"{name} is not installed (pip install -e '.[bench]')"
            rows.append(unavailable(f"{label}, vs {name}", goal, why, b.notes))
            continue
        ratio = figures[name] / best[0]
        rows.append(
            Row(
                f"{label}, vs {name}",
                per_second(n, best[0], "jobs"),
                per_second(n, figures[name], "tasks") + f" ({name}, its defaults)",
                ratio,
                goal,
                ratio >= float(goal.split()[1].rstrip("x")),
            )
        )
    b.notes.append(
        "PostgreSQL drain: each side on a fresh database of the same server, the queue filled "
        "first; the clock runs from start() (run_worker(); run()) to the last completion. "
        "procrastinate with concurrency=2; pgqueuer with its defaults (it claims and "
        "completes in batches of 10)."
    )
    return rows


def pg_wait_completed(url: str, n: int) -> None:
    """Return once ``n`` jobs of the database at ``url`` are completed.

    It looks every 5 ms with one prepared statement on a connection of its own
    (the trigger-kept counts, not ``store.count``): on two cores, the clock's
    looks must not take the CPU the workers it times need.
    """
    import psycopg

    deadline = time.monotonic() + WAIT_TIMEOUT
    query = "SELECT coalesce(sum(n), 0) FROM batch_job_counts WHERE status = 'completed'"
    with psycopg.connect(url, autocommit=True) as conn:
        while conn.execute(query, prepare=True).fetchone()[0] < n:  # type: ignore[index]
            if time.monotonic() > deadline:
                raise RuntimeError(f"jobs not done after {WAIT_TIMEOUT} s")
            time.sleep(0.005)


def cpu_seconds(pids: list[int]) -> dict[int, float] | None:
    """CPU time each of the processes ``pids`` has used, in seconds, threads that ended
    included; ``None`` where ``/proc`` cannot tell (not Linux). Read from the process's
    CPU clock (nanoseconds) where this process may read it, else from ``/proc/PID/stat``
    (clock ticks, a hundredth of a second). A process that is gone is left out."""
    used = {}
    for pid in pids:
        if not Path(f"/proc/{pid}").exists():
            if not Path("/proc/self").exists():
                return None
            continue
        try:
            # The kernel's clock of a whole process: ~pid << 3 | CPUCLOCK_SCHED.
            used[pid] = time.clock_gettime_ns(((~pid) << 3) | 2) / 1e9
            continue
        except (OSError, OverflowError):
            pass  # not Linux's clocks, not ours to read, or gone meanwhile
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        except OSError:
            return None
        used[pid] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return used


def cpu_since(before: dict[int, float] | None, after: dict[int, float] | None) -> float | None:
    """CPU seconds used between two ``cpu_seconds`` readings: a process that started
    in between counts whole; one that ended in between, not at all."""
    if before is None or after is None:
        return None
    return sum(used - before.get(pid, 0.0) for pid, used in after.items())


def local_server_pids(url: str) -> list[int] | None:
    """The processes of the PostgreSQL server at ``url`` if it runs on this machine
    (every process named ``postgres``: the pools open connections, so new server
    processes, as a run goes); ``None`` if it does not, or ``/proc`` cannot tell."""
    import psycopg

    host = psycopg.conninfo.conninfo_to_dict(url).get("host") or "localhost"
    if host not in ("localhost", "127.0.0.1", "::1") and not str(host).startswith("/"):
        return None
    pids = []
    with contextlib.suppress(OSError):
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    if (entry / "comm").read_text().strip() == "postgres":
                        pids.append(int(entry.name))
    return pids or None


#: A reading of CPU used so far: by the worker processes, by the server's processes (if
#: it runs here), by this process; and when (``time.perf_counter``).
CpuReading = tuple[Any, Any, float, float]


def cpu_before(workers: list[int], url: str) -> CpuReading:
    """The reading that starts a timed window: ``/proc`` read first, this process's CPU
    and the clock last, so that reading ``/proc`` counts neither as its poll nor in the
    window."""
    server = local_server_pids(url)
    processes = cpu_seconds(workers), server and cpu_seconds(server)
    return (*processes, clock(), time.perf_counter())


def cpu_after(workers: list[int], url: str) -> CpuReading:
    """The reading that ends a timed window: the clock and this process's CPU first."""
    at, own = time.perf_counter(), clock()
    server = local_server_pids(url)
    return cpu_seconds(workers), server and cpu_seconds(server), own, at


def clock() -> float:
    """This process's CPU time (user + system), every thread's."""
    return time.process_time()


@dataclass
class CpuUse:
    """CPU seconds a timed run took from the worker processes, the server and this
    process (its poll for the last completion), and the window's length (seconds)."""

    workers: float
    server: float | None
    poll: float
    wall: float

    @classmethod
    def between(cls, before: CpuReading, after: CpuReading) -> CpuUse | None:
        """From the readings of ``cpu_before`` and ``cpu_after``; ``None`` where ``/proc``
        could not tell the workers'."""
        workers = cpu_since(before[0], after[0])
        if workers is None:
            return None
        server = cpu_since(before[1], after[1])
        return cls(workers, server, after[2] - before[2], after[3] - before[3])

    @property
    def busy(self) -> float:
        """How many CPUs the run kept busy, on average."""
        return (self.workers + (self.server or 0.0) + self.poll) / self.wall

    def per_job(self, n: int) -> str:
        """The run's CPU a job, and how many CPUs it kept busy."""
        server = f", server {self.server / n * 1e6:,.0f} µs" if self.server is not None else ""
        return (
            f"workers {self.workers / n * 1e6:,.0f} µs{server}, the poll "
            f"{self.poll / n * 1e6:,.0f} µs a job ({self.busy:.2f} CPUs busy)"
        )


def pg_processes(b: Bench) -> list[Row]:
    """Jobs/s of three worker processes on one PostgreSQL database vs one process."""
    n = b.sizes.jobs
    rows = []
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cpus = cpus or 1
    for title, kind, context, goal in (
        ("one-chunk CPU-bound jobs", Spin, {"n": 1, "steps": b.steps * 200}, 1.5),
        ("jobs waiting 5 ms on I/O", Wait, {"ms": 5}, 2.7),
    ):
        rates: dict[int, float] = {}
        used: dict[int, CpuUse | None] = {}
        for workers in (1, 3):
            best = 0.0
            for _ in range(max(1, b.sizes.repeat // 2)):
                with pg_database(b) as url, pg_jobs(b, url, kind) as jobs:
                    procs = [start_worker(url, 0.5, None, "") for _ in range(workers)]
                    try:
                        pids = [proc.pid for proc in procs]
                        pg_queue(jobs, kind, n, context)
                        start = time.perf_counter()
                        before = cpu_before(pids, url)  # not the queuing's CPU
                        pg_wait_completed(url, n)
                        wall = time.perf_counter() - start
                        after = cpu_after(pids, url)
                        if n / wall > best:
                            best = n / wall
                            used[workers] = CpuUse.between(before, after)
                    finally:
                        for proc in procs:
                            stop_worker(proc)
            rates[workers] = best
        ratio = rates[3] / rates[1]
        rows.append(
            Row(
                f"PostgreSQL: 3 worker processes, {n:,} {title}",
                f"{rates[3]:,.0f} jobs/s",
                f"{rates[1]:,.0f} jobs/s (1 process)",
                ratio,
                f">= {goal}x",
                ratio >= goal,
            )
        )
        one, three = used.get(1), used.get(3)
        if one is not None and three is not None:
            b.notes.append(
                f"PostgreSQL processes, {title}: one process {one.per_job(n)}; three "
                f"{three.per_job(n)}. One process keeping {one.busy:.2f} of {cpus} CPUs busy, "
                f"three can run at most {cpus / one.busy:.2f}x its rate here, were sharing free."
            )
    b.notes.append(
        "PostgreSQL processes: each worker process runs 2 threads; the jobs are queued in one "
        "statement once every worker is up (woken by NOTIFY), the clock runs to the last "
        "completion, looked for every 5 ms with one prepared statement. The CPU-bound job "
        "spins about 200 µs. CPU from /proc over the timed window (the queuing left out): "
        "the worker processes', the server's (every postgres process of this machine, when "
        "the server runs here) and this process's, its looks for the last completion."
    )
    return rows


def raw_notify(url: str, samples: int) -> list[float]:
    """Latencies of a bare NOTIFY from one psycopg connection to a LISTEN on another."""
    import psycopg

    latencies = []
    with (
        psycopg.connect(url, autocommit=True) as listener,
        psycopg.connect(url, autocommit=True) as sender,
    ):
        listener.execute("LISTEN bench")
        for _ in range(samples):
            start = time.monotonic()
            sender.execute("NOTIFY bench")
            if not list(listener.notifies(timeout=5, stop_after=1)):
                raise RuntimeError("a NOTIFY did not arrive")
            latencies.append(time.monotonic() - start)
    return latencies


def pg_pickup(b: Bench) -> list[Row]:
    """A job created here, picked up by a worker process woken by NOTIFY (no Redis)."""
    with pg_database(b) as url:
        woken = pickups(b, url, b.sizes.pickup_samples, 30.0, None)
        bare = raw_notify(url, b.sizes.pickup_samples)
    p50, bare50 = percentile(woken, 0.5), percentile(bare, 0.5)
    b.notes.append(
        f"PostgreSQL pick-up: from create() returning here to pre_process starting in a worker "
        f"process that polls every 30 s and LISTENs, no Redis; {len(woken)} jobs, p95 "
        f"{ms(percentile(woken, 0.95))}; this process looks for each job "
        f"{PICKUP_LOOK_AFTER * 1000:.0f} ms after its create. Baseline: a bare NOTIFY from one "
        "psycopg connection to a LISTEN on another, in one process."
    )
    return [
        Row(
            "PostgreSQL: pick-up by another process through NOTIFY, p50",
            ms(p50),
            ms(bare50) + " (bare NOTIFY → LISTEN)",
            p50 / bare50 if bare50 else None,
            "<= 2 ms",
            p50 <= 0.002,
        )
    ]


def pg_fill(url: str, total: int) -> None:
    """Write ``total`` jobs straight into the database, as ``fill`` does for SQLite."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        # Counts are rebuilt once at the end: the triggers would cost a row each.
        conn.execute("ALTER TABLE batch_jobs DISABLE TRIGGER USER")
        conn.execute(
            "INSERT INTO batch_jobs (id, type, status, created_by, dry_run, created_at, "
            "updated_at, pre_processed_at, result) SELECT "
            "'batch_' || lpad(i::text, 26, '0'), "
            f"CASE WHEN i > %(total)s - {RUNNABLE_JOBS} OR i %% 2 = 1 THEN %(type)s "
            "ELSE 'bench-other' END, "
            f"CASE WHEN i > %(total)s - {RUNNABLE_JOBS} THEN 'created' "
            "WHEN i %% 7 = 4 THEN 'failed' WHEN i %% 11 = 7 THEN 'canceled' ELSE 'completed' END, "
            "'usr_' || (i %% 5), false, "
            "now() - make_interval(secs => %(total)s - i), "
            "now() - make_interval(secs => %(total)s - i), "
            "now() - make_interval(secs => %(total)s - i), "
            '\'{"count":1,"advancement_count":1,"progress":1.0}\' '
            "FROM generate_series(1, %(total)s) i",
            {"total": total, "type": Trivial.batch_type},
        )
        conn.execute("ALTER TABLE batch_jobs ENABLE TRIGGER USER")
        conn.execute("DELETE FROM batch_job_counts")
        conn.execute(
            "INSERT INTO batch_job_counts SELECT type, status, coalesce(created_by, ''), 0, "
            "count(*) FROM batch_jobs GROUP BY 1, 2, 3"
        )
        conn.execute("VACUUM ANALYZE batch_jobs")


def pg_scale(b: Bench) -> list[Row]:
    """Claim and list in a database of a million jobs vs one of a thousand."""
    small, large = 1_000, (1_000_000 if b.sizes is FULL else 20_000)
    rounds = max(b.sizes.repeat, 3)
    figures = {
        total: {"claim": float("inf"), "list": float("inf"), "user": float("inf")}
        for total in (small, large)
    }

    def claims(jobs: BatchJobs) -> float:
        runner = jobs.runner
        start = time.perf_counter()
        with b.ours():
            for _ in range(RUNNABLE_JOBS):
                if runner.claim_next() is None:
                    raise RuntimeError("nothing to claim")
        elapsed = (time.perf_counter() - start) / RUNNABLE_JOBS
        runner.store.release_all(runner.owner)
        return elapsed

    def listing(query: Callable[[], Any]) -> float:
        start = time.perf_counter()
        with b.ours():
            for _ in range(20):
                query()
        return (time.perf_counter() - start) / 20

    with contextlib.ExitStack() as stack:
        opened = {}
        for total in (small, large):
            url = stack.enter_context(pg_database(b))
            opened[total] = stack.enter_context(pg_jobs(b, url, Trivial))
            pg_fill(url, total)
        # The two databases take turns, round after round: the machine's swings
        # fall on both alike; the best round of each is kept.
        for _ in range(4 * rounds):
            for total, jobs in opened.items():
                queries = {
                    "list": functools.partial(jobs.list_and_count, limit=PAGE),
                    "user": functools.partial(
                        jobs.list_and_count, created_by="usr_3", status="completed", limit=PAGE
                    ),
                }
                for name, query in queries.items():
                    if len(query()[0]) != PAGE:
                        raise RuntimeError(f"the {name} query does not fill a page of {PAGE}")
                    figures[total][name] = min(figures[total][name], listing(query))
                figures[total]["claim"] = min(figures[total]["claim"], claims(jobs))
    titles = {
        "claim": "claim the next job",
        "list": f"list_and_count(): newest {PAGE} + count",
        "user": f"list_and_count(user, status): newest {PAGE} + count",
    }
    return [
        Row(
            f"PostgreSQL: {title}, {large:,} jobs",
            us(figures[large][key]),
            f"{us(figures[small][key])} ({small:,} jobs)",
            figures[large][key] / figures[small][key],
            "<= 1.5x",
            figures[large][key] / figures[small][key] <= 1.5,
        )
        for key, title in titles.items()
    ]


def pg_checkpoint(b: Bench) -> list[Row]:
    """One checkpoint (``store.save``) vs a raw psycopg ``UPDATE`` + ``COMMIT``."""
    import psycopg
    from psycopg.types.json import Jsonb

    from batchjobs.store import Checkpoint, ClaimRequest

    n = max(200, b.sizes.jobs)
    with pg_database(b) as url, pg_jobs(b, url, Trivial) as jobs:
        job = jobs.create(Trivial.batch_type)
        now = datetime.now(timezone.utc)
        (claim,) = jobs.store.claim(
            ClaimRequest("bench", (Trivial.batch_type,), now, now + timedelta(hours=1))
        )
        raw = psycopg.connect(url)

        def ours(i: int) -> None:
            at = datetime.now(timezone.utc)
            saved = jobs.store.save(
                Checkpoint(
                    claim.lease,
                    Status.CREATED,
                    at,
                    result={"advancement_count": i, "progress": i / n},
                    cursor={"offset": i},
                    until=at + timedelta(hours=1),
                )
            )
            if saved is None:
                raise RuntimeError("the checkpoint lost its lease")

        def floor(i: int) -> None:
            raw.execute(
                "UPDATE batch_jobs SET result = %s, updated_at = %s WHERE id = %s",
                [Jsonb({"advancement_count": i, "progress": i / n}), datetime.now(), job.id],
            )
            raw.commit()

        def block(side: Callable[[int], None], start_at: int) -> float:
            start = time.perf_counter()
            for i in range(start_at, start_at + CHECKPOINT_BLOCK):
                side(i)
            return time.perf_counter() - start

        # The two sides take turns every CHECKPOINT_BLOCK checkpoints, so that the
        # machine's swings (seconds long here) fall on both alike; a round's ratio
        # is its two sums', and the median of the rounds' ratios is the figure.
        ratios, ours_total, floor_total = [], 0.0, 0.0
        try:
            for _ in range(b.sizes.repeat + 2):
                ours_s = floor_s = 0.0
                for j in range(0, n, CHECKPOINT_BLOCK):
                    if j // CHECKPOINT_BLOCK % 2:
                        floor_s += block(floor, j)
                        with b.ours():
                            ours_s += block(ours, j)
                    else:
                        with b.ours():
                            ours_s += block(ours, j)
                        floor_s += block(floor, j)
                ratios.append(ours_s / floor_s)
                ours_total, floor_total = ours_total + ours_s, floor_total + floor_s
        finally:
            raw.close()
    ratio = statistics.median(ratios)
    rounds = len(ratios)
    b.notes.append(
        f"PostgreSQL checkpoint: {rounds} rounds of {n:,} checkpoints a side, the sides taking "
        f"turns every {CHECKPOINT_BLOCK}; the rounds' ratios ranged "
        f"{min(ratios):.2f}x to {max(ratios):.2f}x."
    )
    ours_s, floor_s = ours_total / rounds, floor_total / rounds
    return [
        Row(
            "PostgreSQL: one checkpoint (store.save)",
            us(ours_s / n),
            us(floor_s / n) + " (psycopg UPDATE + COMMIT)",
            ratio,
            "<= 1.5x",
            ratio <= 1.5,
        )
    ]


def postgres(b: Bench) -> list[Row]:
    """Every PostgreSQL scenario, on one server."""
    missing = postgres_missing(b)
    if missing:
        return [unavailable("PostgreSQL scenarios", "—", missing, b.notes)]
    return pg_drain(b) + pg_processes(b) + pg_pickup(b) + pg_scale(b) + pg_checkpoint(b)


# -- CSV: each side in its own process, for its peak RSS ---------------------------------


def csv_missing(name: str) -> str | None:
    """Why the ``name`` strategy cannot be benchmarked, or ``None``."""
    module = f"batchjobs.strategies.{name.replace('-', '_')}"
    if importlib.util.find_spec(module) is None:
        return f"the {name} strategy ({module}) is not in this checkout yet"
    return None


def make_source(path: Path, rows: int) -> None:
    """A table ``items`` of ``rows`` rows, the export's source and the import's schema."""
    empty_items(str(path))
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO items VALUES (?, ?, ?, ?, ?)",
        (
            (i, f"SKU-{i:08d}", f"Item number {i}", i % 1000 / 10, i % 97)
            for i in range(1, rows + 1)
        ),
    )
    conn.execute("COMMIT")
    conn.close()


def child(kind: str, args: list[str]) -> dict[str, Any]:
    """Run one side of a CSV scenario in a fresh process: seconds, rows and peak RSS."""
    command = [sys.executable, __file__, "--child", kind, *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"{kind} failed:\n{done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def floor_export(source: str, out: str) -> int:
    """A sqlite3 cursor into ``csv.writer``; returns the rows written."""
    conn = sqlite3.connect(source)
    cur = conn.execute("SELECT * FROM items ORDER BY id")
    with open(out, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([d[0] for d in cur.description])
        rows = 0
        for row in cur:
            writer.writerow(row)
            rows += 1
    conn.close()
    return rows


def floor_import(source: str, target: str, chunk: int) -> int:
    """``csv.reader`` into ``executemany`` upserts, one transaction per chunk."""
    conn = sqlite3.connect(target, isolation_level=None)  # SQLite's defaults, as csv-import
    rows = 0
    with open(source, newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        marks = ", ".join("?" for _ in header)
        updates = ", ".join(f"{c} = excluded.{c}" for c in header[1:])
        sql = (
            f"INSERT INTO items ({', '.join(header)}) VALUES ({marks}) "
            f"ON CONFLICT (id) DO UPDATE SET {updates}"
        )
        batch: list[list[str]] = []
        for row in reader:
            batch.append(row)
            if len(batch) == chunk:
                conn.execute("BEGIN")
                conn.executemany(sql, batch)
                conn.execute("COMMIT")
                rows += len(batch)
                batch = []
        if batch:
            conn.execute("BEGIN")
            conn.executemany(sql, batch)
            conn.execute("COMMIT")
            rows += len(batch)
    conn.close()
    return rows


def csv_rows(b: Bench, kind: str, ours: dict[str, Any], floor: dict[str, Any]) -> list[Row]:
    """The throughput and memory rows of one CSV scenario."""
    n = b.sizes.csv_rows
    ours_rate, floor_rate = ours["rows"] / ours["seconds"], floor["rows"] / floor["seconds"]
    ours_mb, floor_mb = ours["maxrss_kb"] / 1024, floor["maxrss_kb"] / 1024
    return [
        Row(
            f"{kind}, {n:,} rows",
            per_second(ours["rows"], ours["seconds"], "rows"),
            per_second(floor["rows"], floor["seconds"], "rows") + " (sqlite3 + csv)",
            ours_rate / floor_rate,
            ">= 0.7x",
            ours_rate / floor_rate >= 0.7,
        ),
        Row(
            f"{kind}, {n:,} rows, peak RSS",
            f"{ours_mb:,.0f} MB",
            f"{floor_mb:,.0f} MB (sqlite3 + csv)",
            ours_mb / floor_mb,
            "<= 100 MB",
            ours_mb <= 100,
        ),
    ]


def csv_scenarios(b: Bench) -> list[Row]:
    """csv-export and csv-import of ``csv_rows`` rows vs sqlite3 + the csv module."""
    n = b.sizes.csv_rows
    missing = {kind: csv_missing(kind) for kind in ("csv-export", "csv-import")}
    goal = ">= 0.7x, <= 100 MB"
    if all(missing.values()):
        return [
            unavailable(f"{k}, {n:,} rows", goal, str(why), b.notes) for k, why in missing.items()
        ]
    source = b.fresh("source.db")
    make_source(source, n)
    folder = source.parent
    best: dict[str, dict[str, Any]] = {}

    def side(name: str, *args: str | Path) -> None:
        result = child(name, [str(a) for a in args])
        if name not in best or result["seconds"] < best[name]["seconds"]:
            best[name] = result

    rows: list[Row] = []
    if missing["csv-export"]:
        rows.append(unavailable(f"csv-export, {n:,} rows", goal, missing["csv-export"], b.notes))
    else:
        for round_ in range(b.sizes.repeat):
            side("csv-export", source, folder / f"export-{round_}")
            side("floor-export", source, folder / f"floor-{round_}.csv")
        same = filecmp.cmp(best["csv-export"]["file"], best["floor-export"]["file"], shallow=False)
        b.notes.append(
            "csv-export: each side runs in its own process; peak RSS is that process's, "
            f"interpreter and imports included ({best['floor-export']['base_kb'] / 1024:.0f} MB "
            "before any work); the exported file is "
            + ("byte for byte the floor's." if same else "NOT the same as the floor's.")
        )
        rows += csv_rows(b, "csv-export", best["csv-export"], best["floor-export"])
    if missing["csv-import"]:
        rows.append(unavailable(f"csv-import, {n:,} rows", goal, missing["csv-import"], b.notes))
    else:
        csv_file = folder / "items.csv"
        floor_export(str(source), str(csv_file))
        for round_ in range(b.sizes.repeat):
            side("csv-import", csv_file, folder / f"import-{round_}.db")
            side("floor-import", csv_file, folder / f"import-floor-{round_}.db")
        b.notes.append(
            "csv-import: into an empty table; ours validates every row in pre_process and "
            "upserts in chunks of its chunk_size; the floor upserts with executemany in "
            "transactions of the same size."
        )
        rows += csv_rows(b, "csv-import", best["csv-import"], best["floor-import"])
    return rows


ITEMS_SCHEMA = (
    "CREATE TABLE items (id INTEGER PRIMARY KEY, sku TEXT NOT NULL, title TEXT, "
    "price REAL, quantity INTEGER)"
)


def empty_items(path: str) -> None:
    """An ``items`` table like the source's, empty, in a new file."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(ITEMS_SCHEMA)
    conn.close()


def count_items(path: str, n: int) -> None:
    """Fail unless the ``items`` table of ``path`` holds ``n`` rows."""
    conn = sqlite3.connect(path)
    (found,) = conn.execute("SELECT count(*) FROM items").fetchone()
    conn.close()
    if found != n:
        raise RuntimeError(f"{found} rows imported, not {n}")


def child_main(kind: str, args: list[str]) -> None:
    """One side of a CSV scenario, in this fresh process; prints a JSON line."""
    base = peak_rss_kb("VmRSS")
    if kind.startswith("floor-"):
        if kind == "floor-import":
            empty_items(args[1])
        start = time.perf_counter()
        if kind == "floor-export":
            rows = floor_export(args[0], args[1])
        else:
            rows = floor_import(args[0], args[1], import_chunk())
        elapsed = time.perf_counter() - start
        output = args[1]
    else:
        rows, elapsed, output = run_csv_strategy(kind, args)
    if kind.endswith("import"):
        count_items(output, rows)
    figures = {"seconds": elapsed, "rows": rows, "maxrss_kb": peak_rss_kb(), "base_kb": base}
    print(json.dumps({**figures, "file": output}))


def peak_rss_kb(field: str = "VmHWM") -> int:
    """This process's peak resident memory (or another ``/proc`` figure), in KiB.

    ``VmHWM`` first: Linux carries ``ru_maxrss`` over ``exec``, so a child
    started by a big parent would report the parent's peak as its own.
    """
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak // 1024 if sys.platform == "darwin" else peak  # bytes on macOS


def import_chunk() -> int:
    """Rows per transaction of csv-import, which the floor copies."""
    from batchjobs.strategies.csv_import import CsvImport

    return CsvImport.chunk_size


def run_csv_strategy(kind: str, args: list[str]) -> tuple[int, float, str]:
    """Run our ``kind`` job on the benchmark's files: rows, seconds, the file written."""
    from batchjobs.strategies.csv_export import CsvExport
    from batchjobs.strategies.csv_import import CsvImport

    source, target = Path(args[0]), Path(args[1])
    if kind == "csv-export":
        target.mkdir()
        jobs = BatchJobs(target / "jobs.db")
        jobs.register(CsvExport(databases={"bench": source}))
        context = {"table": "items"}
    else:
        empty_items(str(target))
        jobs = BatchJobs(target.with_name(f"{target.stem}-jobs.db"))
        every_table = {"bench": {"path": target, "tables": "*"}}
        jobs.register(CsvImport(databases=every_table, paths=[source.parent]))
        context = {"table": "items", "path": str(source)}
    with jobs:
        start = time.perf_counter()
        job = jobs.create(kind, context)
        jobs.run_until_idle(timeout=3600)
        elapsed = time.perf_counter() - start
        done = jobs.retrieve(job.id)
        if done.status.value != "completed":
            raise RuntimeError(f"{kind} ended {done.status.value}: {done.result.get('errors')}")
        output = str(jobs.files.path(done.result["file_key"])) if kind == "csv-export" else ""
    return done.result["count"], elapsed, output or str(target)


# -- the worker process of the pick-up scenario -------------------------------------


def worker_main(
    db: str, poll_interval: float, redis_url: str | None, prefix: str, concurrency: int = 2
) -> None:
    """Run jobs from ``db`` until stdin closes; say "ready" once ``start()`` returned."""
    options = redis_options(redis_url, prefix)
    options["concurrency"] = concurrency
    if "://" in db:
        options["files_dir"] = Path(tempfile.gettempdir()) / "batchjobs-bench-files"
    where: Path | str = db if "://" in db else Path(db)
    kinds = (Mark, Trivial, Wait, Spin)
    with open_jobs(where, *kinds, poll_interval=poll_interval, **options) as jobs:
        jobs.start()
        print("ready", flush=True)
        sys.stdin.read()


# -- main ----------------------------------------------------------------------------

# -- the outbox ---------------------------------------------------------------------

#: A lifecycle of one-chunk jobs, in a child process, on whichever batchjobs is first on
#: its path: this checkout's, or the one before the outbox (extracted by ``git archive``).
LIFECYCLE_CHILD = """
import sys, time
sys.path.insert(0, sys.argv[1])
from batchjobs import BatchJobs, BatchJobStrategy
class Trivial(BatchJobStrategy):
    batch_type = "trivial"
    def pre_process(self, run):
        run.set_count(1)
    def process_chunk(self, run, start, size):
        return 1
with BatchJobs(sys.argv[2]) as jobs:
    jobs.register(Trivial)
    start = time.perf_counter()
    for _ in range(int(sys.argv[3])):
        jobs.create("trivial")
    jobs.run_until_idle(timeout=600)
    elapsed = time.perf_counter() - start
    assert jobs.list_and_count(status="completed", limit=0)[1] == int(sys.argv[3])
print(elapsed)
"""
#: The file whose first commit brought the outbox: its parent is "before the outbox".
OUTBOX_FILE = "batchjobs/store/_sqlite_outbox.py"


def before_outbox(b: Bench) -> Path | None:
    """This repository's source as it was before the outbox, extracted once; or None."""
    repo = Path(__file__).resolve().parent.parent
    try:
        first = subprocess.run(
            ["git", "-C", str(repo), "log", "--diff-filter=A", "--format=%H", "--", OUTBOX_FILE],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        if not first:
            return None
        target = b.workdir / "before-outbox"
        target.mkdir()
        archive = subprocess.run(
            ["git", "-C", str(repo), "archive", f"{first[-1]}^", "batchjobs"],
            capture_output=True,
            check=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
        return target
    except (OSError, subprocess.CalledProcessError):
        return None


def outbox_lifecycle(b: Bench) -> list[Row]:
    """One-chunk jobs with the outbox vs the same code before it (child processes, paired)."""
    n = b.sizes.jobs
    label = f"lifecycle of {n:,} one-chunk jobs with the outbox (6 events in 2 rows each)"
    goal = ">= 0.85x"
    old = before_outbox(b)
    if old is None:
        return [unavailable(label, goal, "no git history to take the code before it", b.notes)]
    here = str(Path(__file__).resolve().parent.parent)

    def side(source: str, name: str) -> float:
        out = subprocess.run(
            [sys.executable, "-c", LIFECYCLE_CHILD, source, str(b.fresh(name)), str(n)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return float(out.split()[-1])

    ours_s, base_s, ratio = b.paired(
        lambda: side(here, "outbox.db"), lambda: side(str(old), "before.db"), extra=4
    )
    return [
        Row(
            label,
            per_second(n, ours_s, "jobs"),
            per_second(n, base_s, "jobs") + " (the code before the outbox)",
            ratio,
            goal,
            ratio >= 0.85,
        )
    ]


def follow_child(db: str, redis_url: str | None, prefix: str, samples: int) -> None:
    """A ``follow`` consumer in this process: prints "ready", then each event's latency."""
    options = redis_options(redis_url, prefix)
    with BatchJobs(db, **options) as jobs:
        feed = jobs.follow()
        print("ready", flush=True)
        latencies = []
        for event in feed:
            latencies.append(time.time() - event.at.timestamp())
            if len(latencies) == samples:
                break
    print(json.dumps(latencies), flush=True)


def follow_latency(b: Bench, redis_url: str | None, samples: int) -> list[float]:
    """Seconds from a commit here to the event in a ``follow`` of another process."""
    db = b.fresh("follow.db")
    prefix = f"bench-follow-{os.getpid()}-{db.parent.name}"
    with open_jobs(db, Trivial, **redis_options(redis_url, prefix)) as jobs:
        command = [sys.executable, __file__, "--follow-child", str(db), str(samples), prefix]
        if redis_url:
            command += ["--worker-redis", redis_url]
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            proc.kill()
            raise RuntimeError("the follow process did not start")
        pace = random.Random(15)
        for _ in range(samples):
            time.sleep(pace.uniform(0.005, 0.05 if redis_url else 0.3))
            jobs.create(Trivial.batch_type)
        out, _ = proc.communicate(timeout=WAIT_TIMEOUT)
    return [float(x) for x in json.loads(out.splitlines()[-1])]


def follow(b: Bench) -> list[Row]:
    """``follow`` in another process: commit → consumer, with Redis and by polling (1 s)."""
    rows = []
    label = "follow: commit here → consumer in another process, through Redis"
    missing = b.redis_missing()
    if missing:
        rows.append(unavailable(label, "p50 <= 5 ms", missing, b.notes))
    else:
        latencies = follow_latency(b, b.redis_url, b.sizes.pickup_samples * 2)
        p50 = percentile(latencies, 0.5)
        rows.append(
            Row(
                label,
                f"p50 {ms(p50)}, p90 {ms(percentile(latencies, 0.9))}",
                "5 ms (goal)",
                0.005 / p50,
                "p50 <= 5 ms",
                p50 <= 0.005,
            )
        )
    latencies = follow_latency(b, None, b.sizes.pickup_poll_samples)
    p50 = percentile(latencies, 0.5)
    rows.append(
        Row(
            "follow: commit here → consumer in another process, no Redis (poll 1 s)",
            f"p50 {ms(p50)}, p90 {ms(percentile(latencies, 0.9))}",
            "1 poll interval (1 s)",
            1.0 / p50,
            "p50 <= 1 poll",
            p50 <= 1.0,
        )
    )
    return rows


def fill_events(path: Path, total: int) -> None:
    """An outbox of ``total`` events (the schema's own table), written straight by sqlite3
    as the store writes them: per one-chunk job, a row for its create and one for its
    run's five events (the earlier four as the row's JSON)."""
    BatchJobs(path).close()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous=OFF")
    now = datetime.now(timezone.utc).isoformat()
    result = '{"count":1,"advancement_count":1,"progress":1.0}'
    earlier = json.dumps(
        [
            [
                "batch.pre_processed",
                now,
                "status",
                "pre_processed",
                "completed_at",
                None,
                "processing_at",
                None,
                "confirmed_at",
                None,
            ],
            [
                "batch.confirmed",
                now,
                "status",
                "confirmed",
                "completed_at",
                None,
                "processing_at",
                None,
            ],
            ["batch.processing", now, "status", "processing", "completed_at", None],
            ["batch.updated", now, "status", "processing", "completed_at", None],
        ],
        separators=(",", ":"),
    )
    created = ("batch.created", "created", None, None, None, 1, None)
    run = ("batch.completed", "completed", now, now, now, 5, earlier)

    def rows(start: int, stop: int) -> Iterator[tuple[Any, ...]]:
        # Event numbers start..stop-1 (0-based): a job's are 6j (created) to 6j + 5.
        for first in range(start - start % 6, stop, 6):
            job = f"batch_{first // 6:026d}"
            user = f"usr_{first // 6 % 50}"
            # A partial job at the end: its remaining events one row each.
            shapes = [created, run] if first + 6 <= stop else [created] * (stop - first)
            seq = first
            for event, status, pre, confirmed, completed, steps, more in shapes:
                seq += steps
                yield (
                    seq,
                    event,
                    now,
                    job,
                    status,
                    user,
                    result,
                    now,
                    now,
                    pre,
                    confirmed,
                    pre,
                    completed,
                    steps,
                    more,
                )

    batch = 120_000  # events a transaction: whole jobs
    for start in range(0, total, batch):
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO batch_job_events (seq, event, at, id, type, status, created_by, "
            "dry_run, context, result, created_at, updated_at, pre_processed_at, confirmed_at, "
            "processing_at, completed_at, steps, earlier) VALUES (?, ?, ?, ?, 'trivial', ?, ?, "
            "0, '{}', ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows(start, min(start + batch, total)),
        )
        conn.execute("COMMIT")
    conn.close()


def outbox_scale(b: Bench) -> list[Row]:
    """``events(after=...)`` pages on an outbox of 10 million events vs one of 1,000."""
    small_n, large_n = 1_000, b.sizes.outbox_events
    small, large = b.fresh("events-small.db"), b.fresh("events-large.db")
    fill_events(small, small_n)
    started = time.perf_counter()
    fill_events(large, large_n)
    b.notes.append(
        f"outbox scale: filling {large_n:,} events took {time.perf_counter() - started:.0f} s"
    )
    reads = 300

    def timed_reads(path: Path, total: int, limit: int, **filters: Any) -> Callable[[], float]:
        # Full pages on both files (building the records is most of a page's cost).
        def run() -> float:
            with BatchJobs(path) as jobs:
                rng = random.Random(5)
                start = time.perf_counter()
                for _ in range(reads):
                    page = jobs.events(rng.randrange(total // 2), limit=limit, **filters)
                    assert len(page) == limit
                return (time.perf_counter() - start) / reads

        return run

    rows = []
    cases = (("", 100, {}), (", one user's (created_by=)", 10, {"created_by": "usr_7"}))
    for what, limit, filters in cases:
        large_s, small_s = b.best_of(
            timed_reads(large, large_n, limit, **filters),
            timed_reads(small, small_n, limit, **filters),
        )
        rows.append(
            Row(
                f"events(after=random, limit={limit}){what} on {large_n:,} events",
                f"{ms(large_s)} a page",
                f"{ms(small_s)} a page on {small_n:,} events",
                small_s / large_s,
                ">= 0.67x (<= 1.5x the time)",
                large_s <= 1.5 * small_s,
            )
        )
    return rows


SCENARIOS: dict[str, Callable[[Bench], list[Row]]] = {
    "lifecycle": lifecycle,
    "scheduler": scheduler,
    "checkpoints": checkpoints,
    "mirror": mirror,
    "wakeup": wakeup,
    "pickup": pickup,
    "scale": scale,
    "dashboard": dashboard_list,
    "processes": processes,
    "csv": csv_scenarios,
    "postgres": postgres,
    "outbox": outbox_lifecycle,
    "follow": follow,
    "events": outbox_scale,
}


def versions() -> str:
    """What ran: date, Python, SQLite, batchjobs, Huey, machine."""
    huey = "not installed"
    if importlib.util.find_spec("huey") is not None:
        import huey as huey_module

        huey = huey_module.__version__
    return (
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, Python {platform.python_version()}, "
        f"SQLite {sqlite3.sqlite_version}, batchjobs {batchjobs.__version__}, Huey {huey}, "
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs"
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the script runs")
    parser.add_argument(
        "--only", action="append", choices=sorted(SCENARIOS), help="run only these (repeatable)"
    )
    parser.add_argument("--repeat", type=int, help="runs of each side; the best is kept")
    parser.add_argument("--redis", default=DEFAULT_REDIS_URL, help="Redis server for its rows")
    parser.add_argument("--dir", help="scratch directory (default: a new temporary one)")
    parser.add_argument(
        "--profile", action="store_true", help="cProfile our side and print the top functions"
    )
    # Internal: the worker process and the CSV child processes.
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--worker-redis", help=argparse.SUPPRESS)
    parser.add_argument("--poll-interval", type=float, default=1.0, help=argparse.SUPPRESS)
    parser.add_argument("--concurrency", type=int, default=2, help=argparse.SUPPRESS)
    parser.add_argument(
        "--postgres",
        default=DEFAULT_POSTGRES_URL,
        help="PostgreSQL server for its rows: a database each scenario creates and drops",
    )
    parser.add_argument("--prefix", default="batchjobs", help=argparse.SUPPRESS)
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--follow-child", nargs=3, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the scenarios and print the table; 1 if a scenario broke."""
    args = parse_args(argv)
    if args.worker:
        worker_main(
            args.worker, args.poll_interval, args.worker_redis, args.prefix, args.concurrency
        )
        return 0
    if args.child:
        child_main(args.child[0], args.child[1:])
        return 0
    if args.follow_child:
        db, samples, prefix = args.follow_child
        follow_child(db, args.worker_redis, prefix, int(samples))
        return 0
    sizes = QUICK if args.quick else FULL
    if args.repeat:
        sizes = Sizes(**{**sizes.__dict__, "repeat": args.repeat})
    workdir = Path(args.dir or tempfile.mkdtemp(prefix="batchjobs-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    bench = Bench(sizes, workdir, args.redis, profile=args.profile)
    bench.postgres_url = args.postgres
    rows: list[Row] = []
    broken = False
    try:
        for name in args.only or list(SCENARIOS):
            print(f"running {name}…", file=sys.stderr, flush=True)
            started = time.perf_counter()
            try:
                rows += SCENARIOS[name](bench)
            except Exception as error:
                broken = True
                traceback.print_exc()
                rows.append(Row(name, f"error: {error}".splitlines()[0]))
            print(f"  {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
    finally:
        if not args.dir:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"batchjobs benchmark ({'quick' if args.quick else 'full'}): {versions()}")
    print()
    print(markdown_table(rows))
    if args.quick:
        bench.notes.insert(0, "--quick: tiny sizes, the figures say nothing about performance.")
    if bench.notes:
        print()
        for note in bench.notes:
            print(f"- {note}")
    if bench.profiler is not None:
        stats = pstats.Stats(bench.profiler, stream=sys.stderr)
        stats.sort_stats("tottime").print_stats(25)
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())

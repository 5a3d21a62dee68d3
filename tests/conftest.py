"""Shared fixtures: real SQLite files in temp dirs, the real Redis and PostgreSQL servers.

A module (or test) marked ``@pytest.mark.backends("sqlite", "postgres")`` runs once per
store backend: its ``db_url`` (and so ``make_jobs``, ``jobs``, ``make_store``) is a fresh
SQLite file, or a fresh PostgreSQL database dropped after the test. Unmarked tests run on
SQLite only.
"""

from __future__ import annotations

import compileall
import os
import secrets
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING, Any

import freezegun
import pytest

from batchjobs import BatchJobs
from batchjobs.store import Store, open_store
from tests import strategies as test_strategies

if TYPE_CHECKING:
    from tests.databases import Databases

REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
REDIS_URL = f"redis://{REDIS_HOST}:{REDIS_PORT}/0"
POSTGRES_HOST, POSTGRES_PORT = "127.0.0.1", 5432
#: Where test databases are created (and dropped): the server's maintenance database.
POSTGRES_ADMIN_URL = f"postgresql://postgres@{POSTGRES_HOST}:{POSTGRES_PORT}/postgres"
# A frozen clock is for our decisions ("is this lease due?"), not for the pool's
# timers and the store's retry pacing, which must keep real time.
freezegun.configure(  # type: ignore[attr-defined]
    extend_ignore_list=["psycopg_pool", "batchjobs.store._postgres_connections"]
)

#: The project's root folder.
ROOT = Path(__file__).resolve().parent.parent

#: Every store backend a test can run on (``@pytest.mark.backends``).
BACKENDS = ("sqlite", "postgres")


def pytest_configure(config: pytest.Config) -> None:
    """Compile once, before xdist's workers start, what each would compile again where no
    bytecode is written (``PYTHONDONTWRITEBYTECODE``): the project's modules, which the
    suite's hundreds of Python processes import (a tenth of a second of CPU each), and
    the test modules with their asserts rewritten, which every worker imports (half of
    its collection's CPU)."""
    if hasattr(config, "workerinput"):  # a worker: the controller did it
        return
    for folder in ("batchjobs", "strategies", "tests"):
        compileall.compile_dir(ROOT / folder, quiet=2)
    if getattr(config.option, "numprocesses", None):
        _rewrite_test_modules(config)


def _rewrite_test_modules(config: pytest.Config) -> None:
    """Write pytest's cache of the test modules with their asserts rewritten, which its
    import hook reads even where it may not write one. Through pytest's own functions
    (not public API): where they have changed, each worker rewrites them as before."""
    try:
        from _pytest.assertion import rewrite

        state = config.stash[rewrite.assertstate_key]
        for path in sorted((ROOT / "tests").glob("*.py")):
            if path.name.startswith("test_") or path.name == "conftest.py":
                pyc = rewrite.get_cache_dir(path) / (path.name[:-3] + rewrite.PYC_TAIL)
                if rewrite._read_pyc(path, pyc) is None and rewrite.try_makedirs(pyc.parent):
                    source_hash, code = rewrite._rewrite_test(path, config)
                    rewrite._write_pyc(state, code, source_hash, pyc)
    except (ImportError, AttributeError, KeyError, TypeError, OSError):
        return


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run the tests marked ``backends(...)`` once per backend named."""
    if "backend" in metafunc.fixturenames:
        marker = metafunc.definition.get_closest_marker("backends")
        if marker is not None:
            unknown = set(marker.args) - set(BACKENDS)
            assert not unknown, f"no store backend {unknown}"
            metafunc.parametrize("backend", marker.args, indirect=True)


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    """The store backend this test runs on (``sqlite`` unless it is marked ``backends``)."""
    return str(getattr(request, "param", "sqlite"))


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    """A fresh SQLite file path in a temp dir."""
    return tmp_path / "jobs.db"


def _server_up(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def postgres_server() -> str:
    """The real PostgreSQL server's maintenance URL; skipped on a laptop without it (or
    without psycopg), an error in CI."""
    problem = None
    try:
        import psycopg  # noqa: F401
    except ImportError:
        problem = "psycopg is not installed (pip install -e '.[dev]')"
    if problem is None and not _server_up(POSTGRES_HOST, POSTGRES_PORT):
        problem = f"PostgreSQL is not answering on {POSTGRES_HOST}:{POSTGRES_PORT}"
    if problem is not None:
        if os.environ.get("CI"):
            pytest.fail(f"{problem} in CI")
        pytest.skip(f"{problem} (set CI=true to make this an error)")
    return POSTGRES_ADMIN_URL


@pytest.fixture(scope="session")
def postgres_template(postgres_server: str) -> Iterator[str]:
    """A database with batchjobs' schema, that each test's database is copied from
    (cheaper than migrating every one); dropped at the end of the session."""
    import psycopg

    from batchjobs.store.postgres import PostgresStore

    name = f"batchjobs_template_{os.getpid()}_{secrets.token_hex(4)}"
    with psycopg.connect(postgres_server, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    try:
        PostgresStore(postgres_server.rsplit("/", 1)[0] + f"/{name}").close()
        yield name
    finally:
        with psycopg.connect(postgres_server, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(scope="session")
def postgres_databases(postgres_server: str, postgres_template: str) -> Iterator[Databases]:
    """The session's maker of fresh PostgreSQL databases (``tests.databases``): made
    ahead of the tests and dropped behind them; the last dropped at the end, before
    the template they are copied from."""
    from tests.databases import Databases

    databases = Databases(postgres_server)
    try:
        yield databases
    finally:
        databases.close()


@pytest.fixture
def make_database(request: pytest.FixtureRequest) -> Iterator[Callable[..., str]]:
    """Fresh PostgreSQL databases (other suites run on the same server at the same time),
    with batchjobs' schema unless ``empty``; each is dropped after the test, its
    connections ended (by ``postgres_databases``, while the next tests run)."""
    databases = request.getfixturevalue("postgres_databases")
    made: list[str] = []

    def make(empty: bool = False) -> str:
        template = "" if empty else request.getfixturevalue("postgres_template")
        made.append(databases.take(template))
        return databases.url(made[-1])

    yield make
    for name in made:
        databases.drop(name)


@pytest.fixture
def db_url(backend: str, db_path: Path, request: pytest.FixtureRequest) -> str | Path:
    """The test's database: ``db_path`` on SQLite, a fresh database's URL on PostgreSQL."""
    if backend == "postgres":
        return request.getfixturevalue("make_database")()
    return db_path


@pytest.fixture
def make_jobs(db_url: str | Path, tmp_path: Path) -> Iterator[Callable[..., BatchJobs]]:
    """Build ``BatchJobs`` on the test's database with the test strategies; closed after."""
    made: list[BatchJobs] = []

    def make(path: str | Path | None = None, **kwargs: Any) -> BatchJobs:
        target = path or db_url
        if "files_dir" not in kwargs and str(target).startswith("postgresql://"):
            kwargs["files_dir"] = tmp_path / "jobs-files"
        jobs = BatchJobs(target, **kwargs)
        for strategy in test_strategies.ALL:
            jobs.register(strategy)
        made.append(jobs)
        return jobs

    yield make
    for jobs in made:
        jobs.close()


@pytest.fixture
def jobs(make_jobs: Callable[..., BatchJobs]) -> BatchJobs:
    """One ``BatchJobs`` with the test strategies, short leases."""
    return make_jobs(lease_seconds=5)


@pytest.fixture
def make_store(backend: str, db_url: str | Path) -> Iterator[Callable[[], Store]]:
    """Open stores on the test's database (``backend``); each call is another store on
    the same database (another set of connections). Closed after."""
    opened: list[Store] = []

    def make() -> Store:
        store = open_store(db_url)
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The real Redis server's URL; skipped on a laptop without Redis, an error in CI."""
    if not _server_up(REDIS_HOST, REDIS_PORT):
        if os.environ.get("CI"):
            pytest.fail(f"Redis is not answering on {REDIS_HOST}:{REDIS_PORT} in CI")
        pytest.skip("Redis is not running (set CI=true to make this an error)")
    return REDIS_URL


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[Callable[..., str]]:
    """Start a Redis server of the test's own on a unix socket (``own_redis(*options)``);
    returns its ``unix://`` URL. For settings no test may change on the shared server."""
    server = shutil.which("redis-server")
    started: list[subprocess.Popen[bytes]] = []

    def start(*options: str) -> str:
        if server is None:
            if os.environ.get("CI"):
                pytest.fail("redis-server is not installed in CI")
            pytest.skip("redis-server is not installed (set CI=true to make this an error)")
        path = tmp_path / f"redis-{len(started)}.sock"
        process = subprocess.Popen(
            [server, "--port", "0", "--unixsocket", str(path), "--save", "", *options],
            stdout=subprocess.DEVNULL,
        )
        started.append(process)
        deadline = time.monotonic() + 10
        while not path.exists():
            assert process.poll() is None and time.monotonic() < deadline, "redis did not start"
            time.sleep(0.02)
        return f"unix://{path}"

    yield start
    for process in started:
        process.terminate()
        process.wait(timeout=10)


# -- the built-in CSV strategies ----------------------------------------------------

SHOP_SCHEMA = """
CREATE TABLE {name} (
    id INTEGER PRIMARY KEY,
    sku TEXT NOT NULL UNIQUE,
    name TEXT,
    price REAL,
    qty INTEGER NOT NULL DEFAULT 0,
    photo BLOB
)
"""


def shop_rows(n: int, start: int = 1) -> list[tuple[Any, ...]]:
    """``n`` product rows with commas, quotes, newlines, NULLs, unicode and blobs."""
    names = ["plain", "with, comma", 'with "quotes"', "two\nlines", "ünïcødé ☃", None, ""]
    return [
        (
            i,
            f"SKU-{i:05d}",
            names[i % len(names)],
            None if i % 11 == 0 else round(i * 1.25, 2),
            i % 13,
            bytes([i % 256, 0, 255]) if i % 9 == 0 else None,
        )
        for i in range(start, start + n)
    ]


@pytest.fixture
def make_shop(tmp_path: Path) -> Callable[..., Path]:
    """Build a SQLite file with ``products`` (``rows`` rows) and an empty ``products_copy``."""

    def make(rows: int = 40, name: str = "shop.db") -> Path:
        path = tmp_path / name
        with closing(sqlite3.connect(path)) as conn, conn:
            for table in ("products", "products_copy"):
                conn.execute(SHOP_SCHEMA.format(name=table))
            conn.executemany("INSERT INTO products VALUES (?, ?, ?, ?, ?, ?)", shop_rows(rows))
        return path

    return make


@pytest.fixture
def csv_jobs(make_jobs: Callable[..., BatchJobs], tmp_path: Path) -> Callable[..., BatchJobs]:
    """``BatchJobs`` whose csv-export and csv-import allow every table of ``shop``, and
    ``incoming/``."""
    from batchjobs.strategies.csv_export import CsvExport
    from batchjobs.strategies.csv_import import CsvImport

    def make(shop: Path, path: Path | None = None, **kwargs: Any) -> BatchJobs:
        jobs = make_jobs(path, **kwargs)
        (tmp_path / "incoming").mkdir(exist_ok=True)
        jobs.register(CsvExport(databases={"shop": shop}))
        every_table = {"shop": {"path": shop, "tables": "*"}}
        jobs.register(CsvImport(databases=every_table, paths=[tmp_path / "incoming"]))
        return jobs

    return make


# -- worker processes ----------------------------------------------------------------------


@pytest.fixture
def start_worker(
    db_url: str | Path, tmp_path: Path
) -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """Start ``tests.worker`` processes on the test's database; after the test, none may
    have logged an error."""
    procs: list[subprocess.Popen[str]] = []
    logs = tmp_path / "workers.log"
    files = ["--files-dir", str(tmp_path / "jobs-files")]

    def start(*args: str, ready: bool = True) -> subprocess.Popen[str]:
        with logs.open("a") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "tests.worker", str(db_url), *files, *args],
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
            )
        procs.append(proc)
        if ready:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready"
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if proc.stdout:
            proc.stdout.close()
    logged = logs.read_text() if logs.exists() else ""
    assert "database is locked" not in logged
    assert "Traceback" not in logged, logged

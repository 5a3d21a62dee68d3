"""Shared fixtures: real SQLite files in temp dirs, the real Redis server."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from batchjobs import BatchJobs
from tests import strategies as test_strategies

REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
REDIS_URL = f"redis://{REDIS_HOST}:{REDIS_PORT}/0"


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    """A fresh SQLite file path in a temp dir."""
    return tmp_path / "jobs.db"


@pytest.fixture
def make_jobs(db_path: Path) -> Iterator[Callable[..., BatchJobs]]:
    """Build ``BatchJobs`` on the test's file with the test strategies; closed after."""
    made: list[BatchJobs] = []

    def make(path: str | Path | None = None, **kwargs: Any) -> BatchJobs:
        jobs = BatchJobs(path or db_path, **kwargs)
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


def _redis_up() -> bool:
    try:
        with socket.create_connection((REDIS_HOST, REDIS_PORT), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The real Redis server's URL; skipped on a laptop without Redis, an error in CI."""
    if not _redis_up():
        if os.environ.get("CI"):
            pytest.fail(f"Redis is not answering on {REDIS_HOST}:{REDIS_PORT} in CI")
        pytest.skip("Redis is not running (set CI=true to make this an error)")
    return REDIS_URL

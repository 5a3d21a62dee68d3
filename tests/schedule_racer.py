"""A process firing schedules: ``python -m tests.schedule_racer DB FIRST STEP N``.

Prints ``ready``, waits for a line on stdin (so that every racer starts at
once), then calls ``fire_schedules(now)`` for ``now`` = FIRST + i * STEP
seconds, i in 0..N-1, each twice, as its scheduler's workers would. Prints
how many jobs it created itself, then exits.
"""

from __future__ import annotations

import sys
from datetime import datetime, timedelta

from batchjobs import BatchJobs
from tests.strategies import ALL


def main() -> None:
    db, first, step, count = sys.argv[1:5]
    start = datetime.fromisoformat(first)
    with BatchJobs(db) as jobs:
        for strategy in ALL:
            jobs.register(strategy)
        print("ready", flush=True)
        sys.stdin.readline()
        created = 0
        for i in range(int(count)):
            now = start + timedelta(seconds=float(step) * i)
            created += len(jobs.fire_schedules(now))
            created += len(jobs.fire_schedules(now))
        print(created, flush=True)


if __name__ == "__main__":
    main()

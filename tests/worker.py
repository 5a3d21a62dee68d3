"""A worker process for the crash tests: ``python -m tests.worker DB [options]``.

Runs the test strategies in the background scheduler until SIGTERM or SIGINT,
then shuts down gracefully and exits 0. Prints ``ready`` once started.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from batchjobs import BatchJobs
from tests.strategies import ALL


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("db")
    parser.add_argument("--files-dir")
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--poll-interval", type=float, default=0.1)
    parser.add_argument("--lease-seconds", type=float, default=1.0)
    parser.add_argument("--max-attempts", type=int, default=5)
    args = parser.parse_args()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    jobs = BatchJobs(
        args.db,
        files_dir=args.files_dir,
        concurrency=args.concurrency,
        poll_interval=args.poll_interval,
        lease_seconds=args.lease_seconds,
        max_attempts=args.max_attempts,
    )
    for strategy in ALL:
        jobs.register(strategy)
    jobs.start()
    print("ready", flush=True)
    stop.wait()
    jobs.close()
    sys.exit(0)


if __name__ == "__main__":
    main()

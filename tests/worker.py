"""A worker process for the crash tests: ``python -m tests.worker DB [options]``.

Runs the test strategies in the background scheduler until SIGTERM or SIGINT,
then shuts down gracefully and exits 0. Prints ``ready`` once started.
"""

from __future__ import annotations

import argparse
import signal
import sys

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
    # Blocked before any thread starts, so every thread inherits the mask: a signal
    # sent at any time, during start-up too, waits for the ``sigwait`` below. (A
    # Python handler setting an Event can deadlock: it runs in the main thread,
    # which may hold that Event's lock right then.)
    stop_signals = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
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
    signal.sigwait(stop_signals)
    jobs.close()
    sys.exit(0)


if __name__ == "__main__":
    main()

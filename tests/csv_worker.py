"""A worker process for the csv-export crash test: ``python -m tests.csv_worker DB``.

Runs the entry-point strategies (csv-export reads its allow-list from
``BATCHJOBS_CSV_EXPORT_DATABASES``) with a short lease; ``--pause`` sleeps
after each chunk's rows are written and before its checkpoint, so that a
kill lands between the two. Prints ``ready`` once started.
"""

from __future__ import annotations

import argparse
import signal
import time

from batchjobs import BatchJobs, JobRun


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("db")
    parser.add_argument("--files-dir")
    parser.add_argument("--pause", type=float, default=0.0)
    parser.add_argument("--lease-seconds", type=float, default=1.0)
    args = parser.parse_args()
    # Blocked before any thread starts (see tests/worker.py): SIGTERM, whenever it
    # comes, waits for the ``sigwait`` below.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    jobs = BatchJobs(
        args.db, files_dir=args.files_dir, poll_interval=0.05, lease_seconds=args.lease_seconds
    )
    base = type(jobs.strategy("csv-export"))

    class Paced(base):  # type: ignore[valid-type,misc]
        def process_chunk(self, run: JobRun, start: int, size: int) -> int:
            advanced = super().process_chunk(run, start, size)
            time.sleep(args.pause)
            return advanced  # type: ignore[no-any-return]

    jobs.register(Paced())
    jobs.start()
    print("ready", flush=True)
    signal.sigwait({signal.SIGTERM})
    jobs.close()


if __name__ == "__main__":
    main()

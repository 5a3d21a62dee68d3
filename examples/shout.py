"""The smallest batch job: shout words, a chunk at a time.

Run it with ``python examples/shout.py``; it keeps its state in ``shout.db``.
A context's ``delay`` (seconds) waits before each chunk, to watch a job run,
or kill it mid-job.
"""

import time

from batchjobs import BatchJobs, BatchJobStrategy


class Shout(BatchJobStrategy):
    batch_type = "shout"
    chunk_size = 2

    def pre_process(self, run):
        run.set_count(len(run.job.context["words"]))
        run.result["stat_descriptors"] = [
            {"key": "shout-count", "name": "Words", "message": f"{run.result['count']} words"}
        ]

    def process_chunk(self, run, start, size):
        time.sleep(run.job.context.get("delay", 0))
        words = run.job.context["words"][start : start + size]
        print(" ".join(word.upper() for word in words))
        return len(words)


if __name__ == "__main__":
    with BatchJobs("shout.db") as jobs:
        jobs.register(Shout)
        job = jobs.create("shout", {"words": ["batch", "jobs", "never", "lose", "work"]})
        jobs.start()
        job = jobs.wait(job.id, timeout=30)
        print(f"{job.id} {job.status.value}: {job.result['advancement_count']} words shouted")

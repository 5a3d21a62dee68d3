from batchjobs import BatchJobs, Status


def test_readme_example_runs_in_the_background(jobs: BatchJobs) -> None:
    job = jobs.create("words", {"words": ["a", "b", "c"]}, created_by="usr_1")
    jobs.start()
    done = jobs.wait(job.id, timeout=10)
    assert done.status == Status.COMPLETED
    assert done.result["shouted"] == ["A", "B", "C"]
    assert done.result["advancement_count"] == 3
    assert done.result["progress"] == 1.0

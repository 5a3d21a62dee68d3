"""Recurring jobs: fire times, misfire policies, exactly once across processes."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from freezegun import freeze_time

from batchjobs import BatchJob, BatchJobs, InvalidDataError, NotFoundError, Schedule
from batchjobs.limits import MAX_LIST_LIMIT
from batchjobs.schedules import MAX_CATCH_UP, fire_times
from batchjobs.strategy import JobDraft
from tests.strategies import Words

pytestmark = pytest.mark.backends("sqlite", "postgres")

ROOT = Path(__file__).resolve().parent.parent
UTC = timezone.utc
PARIS = ZoneInfo("Europe/Paris")


def at(text: str) -> datetime:
    """An aware UTC datetime from ``2024-06-01 10:15`` (UTC)."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def scheduled_for(jobs: list[BatchJob]) -> list[str]:
    return [job.context["scheduled_for"] for job in jobs]


def every_job(jobs: BatchJobs) -> list[BatchJob]:
    return jobs.list_and_count(limit=MAX_LIST_LIMIT, order="created_at")[0]


# -- storing a schedule -------------------------------------------------------------------


def test_a_schedule_is_stored_without_a_worker_and_fires_once_at_its_time(jobs: BatchJobs) -> None:
    with freeze_time("2024-06-01 10:15:00"):
        schedule = jobs.schedule(
            "hourly", "words", {"words": ["a"]}, cron="0 * * * *", created_by="usr_1"
        )
    assert schedule.next_fire_at == at("2024-06-01 11:00")
    assert jobs.schedules() == [schedule]
    assert jobs.fire_schedules(at("2024-06-01 10:59:59")) == []

    [job] = jobs.fire_schedules(at("2024-06-01 11:00:00.200"))
    assert job.context == {"words": ["a"], "scheduled_for": "2024-06-01T11:00:00+00:00"}
    assert (job.type, job.created_by, job.dry_run) == ("words", "usr_1", False)
    assert jobs.retrieve(job.id) == job
    assert jobs.fire_schedules(at("2024-06-01 11:00:01")) == []  # that fire time is spent
    [stored] = jobs.schedules()
    assert stored.next_fire_at == at("2024-06-01 12:00")
    assert (stored.last_job_id, stored.last_fired_at) == (job.id, at("2024-06-01 11:00"))
    jobs.run_until_idle(timeout=10)
    assert jobs.retrieve(job.id).result["shouted"] == ["A"]


def test_every_takes_seconds_or_a_timedelta_and_fires_on_whole_seconds(jobs: BatchJobs) -> None:
    with freeze_time("2024-06-01 10:15:00.250"):
        by_seconds = jobs.schedule("a", "words", {"words": []}, every=90)
        by_delta = jobs.schedule("b", "words", {"words": []}, every=timedelta(minutes=15))
    assert by_seconds.next_fire_at == at("2024-06-01 10:16:31")
    assert by_delta.next_fire_at == at("2024-06-01 10:30:01")
    assert fire_times(by_seconds, by_seconds.next_fire_at, 2) == [
        at("2024-06-01 10:18:01"),
        at("2024-06-01 10:19:31"),
    ]
    assert by_delta.to_dict()["every"] == 900.0


def test_a_dry_run_schedule_makes_dry_run_jobs(jobs: BatchJobs) -> None:
    with freeze_time("2024-06-01 10:15:00"):
        jobs.schedule("preview", "words", {"words": ["x"]}, cron="30 10 * * *", dry_run=True)
    [job] = jobs.fire_schedules(at("2024-06-01 10:30"))
    assert job.dry_run
    jobs.run_until_idle(timeout=10)
    assert jobs.retrieve(job.id).status == "pre_processed"


def test_declaring_a_schedule_again_replaces_it_and_keeps_its_place(jobs: BatchJobs) -> None:
    with freeze_time("2024-06-01 10:15:00"):
        first = jobs.schedule("s", "words", {"words": ["a"]}, cron="0 * * * *")
    with freeze_time("2024-06-01 10:20:00"):
        same = jobs.schedule("s", "words", {"words": ["a"]}, cron="0  *  * * *")
        assert same == first  # nothing changed, nothing written
        changed = jobs.schedule("s", "words", {"words": ["b"]}, cron="0 * * * *")
        assert changed.context == {"words": ["b"]}
        assert changed.next_fire_at == first.next_fire_at  # same timing: same next fire
        assert changed.revision == first.revision + 1
        retimed = jobs.schedule("s", "words", {"words": ["b"]}, cron="45 * * * *")
    assert retimed.next_fire_at == at("2024-06-01 10:45")
    assert retimed.created_at == first.created_at
    assert [s.name for s in jobs.schedules()] == ["s"]


def test_unschedule_removes_the_schedule_and_keeps_its_jobs(jobs: BatchJobs) -> None:
    with freeze_time("2024-06-01 10:15:00"):
        jobs.schedule("s", "words", {"words": []}, cron="30 * * * *")
    [job] = jobs.fire_schedules(at("2024-06-01 10:30"))
    removed = jobs.unschedule("s")
    assert removed.name == "s" and removed.last_job_id == job.id
    assert jobs.schedules() == []
    assert jobs.retrieve(job.id).id == job.id
    assert jobs.fire_schedules(at("2024-06-01 11:30")) == []
    with pytest.raises(NotFoundError) as error:
        jobs.unschedule("s")
    assert error.value.message == "Schedule s was not found"


def test_a_paused_schedule_does_not_fire_and_resumes_without_making_up(jobs: BatchJobs) -> None:
    with freeze_time("2024-06-01 10:15:00"):
        jobs.schedule("s", "words", {"words": []}, cron="0 * * * *")
        paused = jobs.pause_schedule("s")
        assert paused.is_paused and jobs.pause_schedule("s") == paused  # twice: no-op
    assert jobs.fire_schedules(at("2024-06-01 13:30")) == []
    with freeze_time("2024-06-01 13:30:00"):
        resumed = jobs.resume_schedule("s")
        assert jobs.resume_schedule("s") == resumed
    assert not resumed.is_paused
    assert resumed.next_fire_at == at("2024-06-01 14:00")  # 11:00 to 13:00 are not made up
    assert jobs.fire_schedules(at("2024-06-01 13:59")) == []
    assert scheduled_for(jobs.fire_schedules(at("2024-06-01 14:00"))) == [
        "2024-06-01T14:00:00+00:00"
    ]
    with pytest.raises(NotFoundError):
        jobs.pause_schedule("nope")
    with pytest.raises(NotFoundError):
        jobs.resume_schedule("nope")


def test_an_interval_schedule_resumes_on_its_own_beat(jobs: BatchJobs) -> None:
    with freeze_time("2024-06-01 10:00:00"):
        jobs.schedule("s", "words", {"words": []}, every=600)  # 10:10, 10:20, ...
        jobs.pause_schedule("s")
    with freeze_time("2024-06-01 10:35:00"):
        assert jobs.resume_schedule("s").next_fire_at == at("2024-06-01 10:40")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cron": "0 25 * * *"}, "cron '0 25 * * *' is not a valid 5-field crontab"),
        ({"cron": "0 2 * *"}, "cron '0 2 * *' is not a valid 5-field crontab"),
        ({"cron": "0 2 * * 8"}, "cron '0 2 * * 8' is not a valid 5-field crontab"),
        ({"cron": "0 2 * * 5-1"}, "day of week '5-1': the range runs backwards"),
        ({"cron": 5}, "cron must be a crontab string, not 5"),
        ({"cron": "0 0 30 2 *"}, "cron '0 0 30 2 *' never fires"),
        ({"cron": "0 2 * * *", "timezone": "Mars/Olympus"}, "unknown timezone 'Mars/Olympus'"),
        ({"cron": "0 2 * * *", "timezone": ""}, "timezone must be an IANA time zone name"),
        ({"cron": "0 2 * * *", "every": 60}, "either cron or every, not both or neither"),
        ({}, "either cron or every, not both or neither"),
        ({"every": 0}, "every must be positive, not 0"),
        ({"every": -timedelta(seconds=1)}, "every must be positive"),
        ({"every": "15m"}, "every must be a timedelta or seconds, not '15m'"),
        ({"every": True}, "every must be a timedelta or seconds, not True"),
        ({"every": 60, "misfire": "later"}, "misfire must be one of coalesce, skip, all"),
        ({"every": 60, "dry_run": "yes"}, "dry_run must be a boolean"),
        ({"every": 60, "created_by": 7}, "created_by must be a string"),
        ({"every": 60, "type": "nope"}, "nope"),
        ({"every": 60, "type": 3}, "type must be a string"),
        ({"every": 60, "context": [1]}, "context must be a JSON object"),
        ({"every": 60, "context": {"scheduled_for": "x"}}, "context.scheduled_for is set by"),
        ({"every": 60, "name": "two words"}, "schedule name 'two words' must start with"),
        ({"every": 60, "name": ""}, "schedule name '' must start with"),
        ({"every": 60, "name": None}, "schedule name None must start with"),
    ],
)
def test_bad_schedules_are_refused_and_nothing_is_written(
    jobs: BatchJobs, kwargs: dict[str, Any], message: str
) -> None:
    arguments: dict[str, Any] = {"name": "s", "type": "words", "context": {"words": []}}
    arguments.update(kwargs)
    with pytest.raises(InvalidDataError) as error:
        jobs.schedule(arguments.pop("name"), arguments.pop("type"), **arguments)
    assert message in error.value.message
    assert jobs.schedules() == []


def test_a_fire_the_strategy_refuses_is_spent_with_its_reason(jobs: BatchJobs) -> None:
    with freeze_time("2024-06-01 10:15:00"):
        jobs.schedule("s", "words", {"words": "not a list"}, cron="30 * * * *")
    assert jobs.fire_schedules(at("2024-06-01 10:30")) == []
    [schedule] = jobs.schedules()
    assert schedule.last_error == "context.words must be a list of strings"
    assert schedule.next_fire_at == at("2024-06-01 11:30")  # not retried at every poll
    assert every_job(jobs) == []


def test_schedules_of_a_type_this_process_lacks_wait_for_a_process_that_has_it(
    make_jobs: Any, db_url: str | Path
) -> None:
    full = make_jobs()
    with freeze_time("2024-06-01 10:15:00"):
        full.schedule("s", "ledger", {"n": 1}, cron="30 * * * *")
    bare = BatchJobs(db_url)
    try:
        assert bare.fire_schedules(at("2024-06-01 10:30")) == []
    finally:
        bare.close()
    assert len(full.fire_schedules(at("2024-06-01 10:30"))) == 1


class Flaky(Words):
    """``words`` whose ``prepare`` fails unexpectedly (a bug, a service away) while asked to."""

    batch_type = "flaky-words"
    failing = True

    def prepare(self, draft: JobDraft) -> JobDraft:
        if Flaky.failing:
            raise KeyError("the strategy's lookup failed")
        return super().prepare(draft)


def test_a_schedule_whose_strategy_crashes_holds_up_no_other_and_keeps_its_fire(
    jobs: BatchJobs, caplog: pytest.LogCaptureFixture
) -> None:
    jobs.register(Flaky)
    Flaky.failing = True
    with freeze_time("2024-06-01 10:15:00"):
        jobs.schedule("a-flaky", "flaky-words", {"words": ["a"]}, cron="30 * * * *")
        jobs.schedule("b-sound", "words", {"words": ["b"]}, cron="30 * * * *")
    with caplog.at_level(logging.ERROR, logger="batchjobs.schedules"):
        fired = jobs.fire_schedules(at("2024-06-01 10:30"))
    assert [job.type for job in fired] == ["words"]
    assert "a-flaky" in caplog.text and "KeyError" in caplog.text
    # The crashed fire is not spent: once the strategy works again, its job is made.
    flaky = jobs.store.get_schedule("a-flaky")
    assert flaky is not None and flaky.next_fire_at == at("2024-06-01 10:30")
    Flaky.failing = False
    [job] = jobs.fire_schedules(at("2024-06-01 10:31"))
    assert job.context["scheduled_for"] == "2024-06-01T10:30:00+00:00"


def test_a_schedule_fires_at_its_instant_whatever_the_zone_of_now(jobs: BatchJobs) -> None:
    with freeze_time("2024-06-01 10:15:00"):
        jobs.schedule("s", "words", {"words": ["a"]}, cron="30 * * * *")
    # 10:29 UTC written in Paris (12:29+02:00), then 10:30 UTC in New York (06:30-04:00).
    assert jobs.fire_schedules(at("2024-06-01 10:29").astimezone(PARIS)) == []
    new_york = ZoneInfo("America/New_York")
    [job] = jobs.fire_schedules(at("2024-06-01 10:30").astimezone(new_york))
    assert job.context["scheduled_for"] == "2024-06-01T10:30:00+00:00"
    assert jobs.schedules()[0].next_fire_at == at("2024-06-01 11:30")
    with pytest.raises(InvalidDataError, match="now must be timezone-aware"):
        jobs.fire_schedules(datetime(2024, 6, 1, 11, 30, 0, 500))  # local time? UTC?


# -- fire times -----------------------------------------------------------------------------


def test_crontab_weekday_numbers_count_from_sunday(jobs: BatchJobs) -> None:
    monday = at("2024-06-03 00:00")
    days = {
        "1-5": ["Mon", "Tue", "Wed", "Thu", "Fri", "Mon"],
        "0": ["Sun", "Sun"],
        "7": ["Sun", "Sun"],
        "0,6": ["Sat", "Sun", "Sat"],
        "*/2": ["Tue", "Thu", "Sat", "Sun", "Tue"],
        "mon-fri": ["Mon", "Tue", "Wed", "Thu", "Fri", "Mon"],
        "sat,1": ["Mon", "Sat", "Mon"],
    }
    for field, expected in days.items():
        schedule = Schedule("s", "words", cron=f"0 2 * * {field}")
        found = fire_times(schedule, monday, len(expected))
        assert [t.strftime("%a") for t in found] == expected, field


def test_a_crontab_restricting_both_days_fires_on_either_as_cron_does() -> None:
    # cron(8): with both day of month and day of week restricted (neither starting
    # with *), a day matching either fires; with one of them *, both must match.
    saturday = at("2024-06-01 10:00")
    days = {
        "0 9 1 * 1": ["06-03 Mon", "06-10 Mon", "06-17 Mon", "06-24 Mon", "07-01 Mon", "07-08 Mon"],
        "0 9 13 * 5": ["06-07 Fri", "06-13 Thu", "06-14 Fri", "06-21 Fri", "06-28 Fri"],
        "0 9 1 * *": ["07-01 Mon", "08-01 Thu"],
    }
    for cron, expected in days.items():
        found = fire_times(Schedule("s", "words", cron=cron), saturday, len(expected))
        assert [t.strftime("%m-%d %a") for t in found] == expected, cron


def test_fire_times_follow_the_timezone_across_dst_changes(jobs: BatchJobs) -> None:
    # 09:00 in Paris: 08:00 UTC in winter, 07:00 UTC once the clocks go forward.
    with freeze_time("2024-03-29 12:00:00"):
        jobs.schedule("morning", "words", {"words": []}, cron="0 9 * * *", timezone="Europe/Paris")
    fired: list[BatchJob] = []
    for day in ("2024-03-30", "2024-03-31", "2024-04-01"):
        now = jobs.schedules()[0].next_fire_at
        assert now is not None and now.date().isoformat() == day
        fired += jobs.fire_schedules(now)
    assert scheduled_for(fired) == [
        "2024-03-30T09:00:00+01:00",
        "2024-03-31T09:00:00+02:00",
        "2024-04-01T09:00:00+02:00",
    ]
    assert [j.created_at.strftime("%H:%M") for j in fired if j.created_at] == [
        "08:00",
        "07:00",
        "07:00",
    ]


def fire_through(jobs: BatchJobs, until: datetime) -> list[BatchJob]:
    """Step the schedules from one fire time to the next until ``until``, as a worker would."""
    fired: list[BatchJob] = []
    while True:
        due = min(s.next_fire_at for s in jobs.schedules() if s.next_fire_at)
        if due >= until:
            return fired
        fired += jobs.fire_schedules(due)


@pytest.mark.parametrize(
    ("day", "hours"),
    [("2024-03-31", 23), ("2024-10-27", 24)],  # clocks forward; clocks back
)
def test_an_hourly_schedule_fires_each_wall_clock_hour_once_on_dst_days(
    jobs: BatchJobs, day: str, hours: int
) -> None:
    start = datetime.fromisoformat(f"{day} 00:00").replace(tzinfo=PARIS)
    with freeze_time(start - timedelta(minutes=30)):
        jobs.schedule("hourly", "words", {"words": []}, cron="0 * * * *", timezone="Europe/Paris")
    fired = fire_through(jobs, start + timedelta(days=1))
    local = [datetime.fromisoformat(t).strftime("%d %H:%M") for t in scheduled_for(fired)]
    assert len(local) == hours and len(set(local)) == hours
    assert all(t.startswith(day[-2:]) for t in local)


def test_a_nightly_schedule_fires_once_a_night_through_both_dst_changes(jobs: BatchJobs) -> None:
    # 02:30 does not exist on 31 March and happens twice on 27 October in Paris.
    for month, first, last in (("03", 29, 3), ("10", 25, 29)):
        with freeze_time(f"2024-{month}-{first - 1} 12:00:00"):
            jobs.schedule(
                f"n{month}", "words", {"words": []}, cron="30 2 * * *", timezone="Europe/Paris"
            )
        stop = datetime(2024, int(month) + (month == "03"), last, 12, tzinfo=UTC)
        fired = fire_through(jobs, stop)
        jobs.unschedule(f"n{month}")
        days = [t[:10] for t in scheduled_for(fired)]
        assert len(days) == len(set(days)) == (6 if month == "03" else 5), days


# -- missed fire times ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("misfire", "expected"),
    [
        ("coalesce", ["2024-06-01T03:00:00+00:00"]),
        ("skip", []),
        (
            "all",
            ["2024-06-01T01:00:00+00:00", "2024-06-01T02:00:00+00:00", "2024-06-01T03:00:00+00:00"],
        ),
    ],
)
def test_fire_times_missed_while_down_make_jobs_by_policy(
    jobs: BatchJobs, misfire: str, expected: list[str]
) -> None:
    with freeze_time("2024-06-01 00:10:00") as clock:
        jobs.schedule("s", "words", {"words": []}, cron="0 * * * *", misfire=misfire)
        clock.move_to("2024-06-01 03:30:00")  # down through 01:00, 02:00 and 03:00
        fired = jobs.fire_schedules()
        assert scheduled_for(fired) == expected
        assert scheduled_for(every_job(jobs)) == expected
        assert jobs.schedules()[0].next_fire_at == at("2024-06-01 04:00")
        assert jobs.fire_schedules() == []
        clock.move_to("2024-06-01 04:00:00.5")  # back on time: every policy fires
        assert scheduled_for(jobs.fire_schedules()) == ["2024-06-01T04:00:00+00:00"]


def test_skip_still_fires_a_fire_time_that_is_a_little_late(jobs: BatchJobs) -> None:
    with freeze_time("2024-06-01 00:10:00"):
        jobs.schedule("s", "words", {"words": []}, cron="0 * * * *", misfire="skip")
    assert len(jobs.fire_schedules(at("2024-06-01 01:00:05"))) == 1


def test_coalesce_after_a_year_down_is_one_job_for_the_latest_time(jobs: BatchJobs) -> None:
    with freeze_time("2023-06-01 00:10:00"):
        jobs.schedule("s", "words", {"words": []}, cron="*/5 * * * *")
    fired = jobs.fire_schedules(at("2024-06-01 00:12:00"))
    assert scheduled_for(fired) == ["2024-06-01T00:10:00+00:00"]
    assert jobs.schedules()[0].next_fire_at == at("2024-06-01 00:15")


def test_all_makes_at_most_100_jobs_and_warns(
    jobs: BatchJobs, caplog: pytest.LogCaptureFixture
) -> None:
    with freeze_time("2024-06-01 00:00:00"):
        jobs.schedule("s", "words", {"words": []}, every=60, misfire="all")
    with caplog.at_level(logging.WARNING, logger="batchjobs.schedules"):
        fired = jobs.fire_schedules(at("2024-06-01 03:20:30"))  # 200 fire times missed
    assert len(fired) == MAX_CATCH_UP
    assert fired[0].context["scheduled_for"] == "2024-06-01T00:01:00+00:00"
    assert "missed more than 100 fire times" in caplog.text
    assert jobs.schedules()[0].next_fire_at == at("2024-06-01 03:21")


# -- exactly once -----------------------------------------------------------------------------


def test_a_stale_fire_writes_nothing(jobs: BatchJobs) -> None:
    with freeze_time("2024-06-01 10:15:00"):
        schedule = jobs.schedule("s", "words", {"words": []}, cron="30 * * * *")
    assert len(jobs.fire_schedules(at("2024-06-01 10:30"))) == 1
    job = jobs.service.draft("words", {"words": []})
    # The record read before the other fire: its revision and next_fire_at are spent.
    assert (
        jobs.store.fire_schedule(
            schedule,
            next_fire_at=at("2024-06-01 11:30"),
            jobs=[job],
            fired_at=None,
            now=at("2024-06-01 10:30"),
        )
        is None
    )
    assert len(every_job(jobs)) == 1
    jobs.pause_schedule("s")
    paused = jobs.schedules()[0]
    assert (
        jobs.store.fire_schedule(
            paused, next_fire_at=None, jobs=[job], fired_at=None, now=at("2024-06-01 11:30")
        )
        is None
    )
    assert len(every_job(jobs)) == 1


def test_threads_racing_on_one_schedule_fire_each_time_once(make_jobs: Any) -> None:
    with freeze_time("2024-06-01 00:00:00"):
        make_jobs().schedule("s", "words", {"words": []}, every=60, misfire="all")
    instances = [make_jobs() for _ in range(4)]
    go = threading.Barrier(len(instances))
    made: list[int] = []

    def race(jobs: BatchJobs) -> None:
        go.wait()
        made.append(
            sum(
                len(jobs.fire_schedules(at("2024-06-01 00:00") + timedelta(minutes=i)))
                for i in range(1, 31)
            )
        )

    threads = [threading.Thread(target=race, args=(j,)) for j in instances]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(made) == 30
    assert len(set(scheduled_for(every_job(instances[0])))) == 30


@pytest.mark.slow
def test_three_processes_racing_on_one_schedule_make_each_fire_once(
    jobs: BatchJobs, db_url: str | Path
) -> None:
    with freeze_time("2024-06-01 00:00:00"):
        schedule = jobs.schedule("race", "words", {"words": []}, every=60, misfire="all")
    assert schedule.next_fire_at == at("2024-06-01 00:01")
    racers = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.schedule_racer",
                str(db_url),
                "2024-06-01T00:01:00+00:00",
                "60",
                "100",
            ],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    try:
        for racer in racers:
            assert racer.stdout is not None and racer.stdout.readline().strip() == "ready"
        for racer in racers:  # all at once
            assert racer.stdin is not None
            racer.stdin.write("go\n")
            racer.stdin.flush()
        outputs = [racer.communicate(timeout=120) for racer in racers]
    finally:
        for racer in racers:
            if racer.poll() is None:
                racer.kill()
                racer.wait()
    assert [r.returncode for r in racers] == [0, 0, 0], [err for _, err in outputs]
    assert all("Traceback" not in err for _, err in outputs)
    made = [int(out) for out, _ in outputs]
    assert sum(made) == 100
    times = Counter(scheduled_for(every_job(jobs)))
    expected = {(at("2024-06-01 00:01") + timedelta(minutes=i)).isoformat() for i in range(100)}
    assert set(times) == expected and set(times.values()) == {1}
    assert jobs.schedules()[0].next_fire_at == at("2024-06-01 01:41")


def test_started_workers_fire_due_schedules(make_jobs: Any) -> None:
    jobs = make_jobs(poll_interval=0.05)
    created = threading.Event()
    seen: list[BatchJob] = []

    @jobs.subscribe("batch.completed")
    def on_completed(sender: Any, *, job: BatchJob, **extra: Any) -> None:
        seen.append(job)
        created.set()

    jobs.schedule("soon", "words", {"words": ["tick"]}, every=0.2)
    jobs.start()
    try:
        assert created.wait(10), "no scheduled job completed"
    finally:
        jobs.shutdown()
    assert seen[0].context["words"] == ["tick"] and "scheduled_for" in seen[0].context
    assert jobs.schedules()[0].last_job_id is not None


def test_start_fires_the_schedules_due_while_no_worker_ran(make_jobs: Any) -> None:
    jobs = make_jobs(poll_interval=60)
    with freeze_time("2024-06-01 00:00:00"):
        jobs.schedule("old", "words", {"words": []}, cron="0 * * * *")
    jobs.start()  # its first poll is a minute away: start itself fires
    try:
        [job] = every_job(jobs)
    finally:
        jobs.shutdown()
    assert job.context["scheduled_for"].endswith(":00:00+00:00")

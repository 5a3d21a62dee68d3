"""Recurring jobs: schedules whose fire times each create one batch job, exactly once.

A schedule is a row (``store.save_schedule``) holding its definition and the
fire time its next job is due at, ``next_fire_at``. ``RecurringJobs.fire_due``
is the single step: it reads the due schedules, works out which fire times
get a job (the misfire policy), and claims the fire with one guarded write
that advances ``next_fire_at`` from the value it read and inserts the jobs in
the same transaction (``store.fire_schedule``). However many processes run
that step at once, one of them wins each fire time; the others write nothing.

APScheduler's triggers compute fire times (``CronTrigger.from_crontab``,
``IntervalTrigger``); this module only asks them, in UTC, and never parses
a crontab beyond handing its day-of-week numbers over as names (below).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.combining import OrTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from .errors import BatchJobError, InvalidDataError, NotFoundError, StoreError
from .models import BatchJob, Schedule, utcnow
from .service import BatchJobService, check_json_object
from .store import Store
from .strategy import StrategyRegistry

__all__ = [
    "MAX_CATCH_UP",
    "MISFIRE_GRACE",
    "MISFIRE_POLICIES",
    "FirePlan",
    "RecurringJobs",
    "fire_times",
    "plan_fires",
]

log = logging.getLogger("batchjobs.schedules")

#: What a schedule does with the fire times it missed while no process ran it:
#: ``coalesce`` one job for the latest, ``skip`` none, ``all`` one each.
MISFIRE_POLICIES = ("coalesce", "skip", "all")
#: ``misfire="all"`` makes at most this many jobs at once; it warns and skips the rest.
MAX_CATCH_UP = 100
#: A fire time this late (at most half the gap to the next one) is not missed:
#: ``misfire="skip"`` still makes its job.
MISFIRE_GRACE = timedelta(seconds=30)
#: Names and ids: a letter or digit, then letters, digits, ``.``, ``_``, ``:``, ``-``.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,199}")
#: Crontab day-of-week numbers (0 and 7 are Sunday) as the names APScheduler 3 reads
#: the crontab way; its own numbers start the week on Monday.
_WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat", "sun")
_WEEKDAY_ITEM = re.compile(r"(\*|[0-7])(?:-([0-7]))?(?:/([1-9][0-9]*))?")
_TINY = timedelta(microseconds=1)


def _crontab_weekdays(field: str) -> str:
    """The day-of-week field with its numbers spelled as day names.

    APScheduler 3 numbers days from Monday (0) where a crontab numbers them
    from Sunday (0 or 7): ``1-5`` must mean Monday to Friday. A numeric item
    (``5``, ``1-5``, ``*/2``, ``0-6/3``) becomes the list of the days it
    selects; names and ``*`` pass through untouched.
    """
    if not any(c.isdigit() for c in field):
        return field
    days: list[str] = []
    for item in field.split(","):
        match = _WEEKDAY_ITEM.fullmatch(item)
        if match is None:
            if any(c.isdigit() for c in item):
                raise ValueError(f"day of week {item!r}: use 0-7 (0 and 7 are Sunday) or names")
            days.append(item)  # a name or a range of names: APScheduler reads those
            continue
        first, last, step = match.groups()
        if first == "*":
            start, end = 0, 6
        else:
            start, end = int(first), int(last if last is not None else first)
            if last is None and step is not None:
                end = 6  # "1/2": from Monday on, as a crontab reads it
        if start > end:
            raise ValueError(f"day of week {item!r}: the range runs backwards")
        days.extend(_WEEKDAYS[n] for n in range(start, end + 1, int(step or 1)))
    return ",".join(dict.fromkeys(days))  # Sunday as 0 and as 7: once


def _zone(name: Any) -> ZoneInfo:
    if not isinstance(name, str) or not name:
        raise InvalidDataError(f"timezone must be an IANA time zone name, not {name!r}")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidDataError(
            f"unknown timezone {name!r}: use an IANA name such as UTC or Europe/Paris"
        ) from None


@dataclass(frozen=True)
class _Timing:
    """A schedule's trigger, asked for fire times in UTC."""

    trigger: BaseTrigger
    #: The zone the trigger reads its times in.
    zone: ZoneInfo
    cron: bool

    def after(self, t: datetime) -> datetime | None:
        """The first fire time strictly after ``t``."""
        # Compared in UTC only: two times of one zone compare by wall clock, fold
        # ignored. Asked in the trigger's zone: given a UTC time in an hour the
        # clocks go back over, APScheduler 3 may answer that same instant.
        after = t.astimezone(timezone.utc)
        probe = t.astimezone(self.zone)
        while True:
            found = self.trigger.get_next_fire_time(probe, probe)
            if found is None:
                return None
            found_utc = found.astimezone(timezone.utc)
            # A wall-clock time the clocks go back over comes twice (fold=1 the
            # second time): a crontab means it once.
            if found_utc > after and not (self.cron and found.fold):
                return found_utc
            if found_utc > probe.astimezone(timezone.utc):
                probe = found
            else:
                probe = (probe.astimezone(timezone.utc) + timedelta(seconds=1)).astimezone(
                    self.zone
                )

    def at_or_after(self, t: datetime) -> datetime | None:
        """The first fire time at or after ``t``."""
        start = t.astimezone(timezone.utc)
        found = self.trigger.get_next_fire_time(
            None,
            t.astimezone(self.zone),
        )
        if found is None:
            return None
        found_utc = found.astimezone(timezone.utc)
        if found_utc >= start and not (self.cron and found.fold):
            return found_utc
        return self.after(max(found_utc, start - _TINY))

    def latest(self, first: datetime, now: datetime) -> datetime:
        """The last fire time in ``[first, now]``, ``first`` being one.

        Looks back from ``now`` in doubling windows, then walks forward: a
        schedule down for a year costs a few dozen trigger calls, not one per
        missed time.
        """
        width = timedelta(seconds=1)
        while True:
            start = max(first, now - width)
            found = self.at_or_after(start)
            if found is not None and found <= now:
                break
            if start == first:
                return first
            width *= 2
        while (following := self.after(found)) is not None and following <= now:
            found = following
        return found


def _timing(schedule: Schedule, anchor: datetime) -> _Timing:
    """The trigger of ``schedule``; an interval counts from ``anchor`` (one of its fire times)."""
    zone = _zone(schedule.timezone)
    if schedule.cron is not None:
        fields = schedule.cron.split()
        if len(fields) != 5:
            return _Timing(CronTrigger.from_crontab(schedule.cron, timezone=zone), zone, cron=True)
        minute, hour, day, month, weekday = fields
        weekdays = _crontab_weekdays(weekday)
        if day.startswith("*") or weekday.startswith("*"):
            crontab = f"{minute} {hour} {day} {month} {weekdays}"
            return _Timing(CronTrigger.from_crontab(crontab, timezone=zone), zone, cron=True)
        # Both days restricted: cron fires on a day matching either (APScheduler on one
        # matching both), so the earliest of a trigger for each.
        by_day = CronTrigger.from_crontab(f"{minute} {hour} {day} {month} *", timezone=zone)
        by_weekday = f"{minute} {hour} * {month} {weekdays}"
        either = OrTrigger([by_day, CronTrigger.from_crontab(by_weekday, timezone=zone)])
        return _Timing(either, zone, cron=True)
    assert schedule.every is not None
    return _Timing(
        IntervalTrigger(seconds=schedule.every.total_seconds(), start_date=anchor, timezone=zone),
        zone,
        cron=False,
    )


def fire_times(schedule: Schedule, after: datetime, count: int) -> list[datetime]:
    """The schedule's next ``count`` fire times strictly after ``after`` (UTC).

    For a cron schedule from any ``after``; for an interval, ``after`` is one
    of its fire times (``next_fire_at``) and the rest follow it.
    """
    timing = _timing(schedule, after)
    found: list[datetime] = []
    t = timing.after(after)
    while t is not None and len(found) < count:
        found.append(t)
        t = timing.after(t)
    return found


@dataclass(frozen=True)
class FirePlan:
    """What firing a due schedule at ``now`` does.

    ``times``: the fire times that get a job (oldest first; none with
    ``skip`` after a downtime); ``next_fire_at``: where the schedule goes on
    from (after ``now``); ``missed``: fire times passed over without a job
    (a lower bound when ``capped``: ``all`` hit ``MAX_CATCH_UP``).
    """

    times: list[datetime]
    next_fire_at: datetime | None
    missed: int = 0
    capped: bool = False


def plan_fires(schedule: Schedule, now: datetime) -> FirePlan:
    """Which fire times of a due ``schedule`` get a job at ``now``, by its misfire policy.

    Pure: time is the argument. ``schedule.next_fire_at`` must be at or before ``now``.
    """
    due = schedule.next_fire_at
    assert due is not None and due <= now, "plan_fires takes a due schedule"
    timing = _timing(schedule, due)
    following = timing.at_or_after(now + _TINY)
    if schedule.misfire == "all":
        times = [due]
        while len(times) < MAX_CATCH_UP:
            t = timing.after(times[-1])
            if t is None or t > now:
                return FirePlan(times, following)
            times.append(t)
        t = timing.after(times[-1])
        capped = t is not None and t <= now
        return FirePlan(times, following, missed=int(capped), capped=capped)
    latest = timing.latest(due, now)
    missed = 0 if latest == due else 1 + len(_between(timing, due, latest))
    if schedule.misfire == "coalesce":
        return FirePlan([latest], following, missed=missed)
    gap = (following - latest) if following is not None else MISFIRE_GRACE * 2
    on_time = now - latest <= min(MISFIRE_GRACE, gap / 2)
    return FirePlan([latest] if on_time else [], following, missed=missed + (not on_time))


def _between(timing: _Timing, first: datetime, last: datetime) -> list[datetime]:
    """Fire times strictly between ``first`` and ``last`` (for a log line: at most
    ``MAX_CATCH_UP`` of them are counted)."""
    found: list[datetime] = []
    t = timing.after(first)
    while t is not None and t < last and len(found) < MAX_CATCH_UP:
        found.append(t)
        t = timing.after(t)
    return found


def _check_every(every: Any) -> timedelta:
    if isinstance(every, bool) or not isinstance(every, (int, float, timedelta)):
        raise InvalidDataError(f"every must be a timedelta or seconds, not {every!r}")
    interval = every if isinstance(every, timedelta) else timedelta(seconds=every)
    if interval <= timedelta(0):
        raise InvalidDataError(f"every must be positive, not {every!r}")
    return interval


class RecurringJobs:
    """Schedules in one store; ``fire_due(now)`` makes the jobs that are due."""

    def __init__(self, store: Store, service: BatchJobService, registry: StrategyRegistry) -> None:
        self.store = store
        self.service = service
        self.registry = registry

    # -- definitions -------------------------------------------------------------

    def schedule(
        self,
        name: str,
        type: str,
        context: Mapping[str, Any] | None = None,
        *,
        cron: str | None = None,
        every: timedelta | float | None = None,
        timezone: str = "UTC",
        dry_run: bool = False,
        created_by: str | None = None,
        misfire: str = "coalesce",
        now: datetime | None = None,
    ) -> Schedule:
        """Store the schedule ``name``; its first job is due at its next fire time after ``now``.

        A schedule of that name is replaced (an application may declare its
        schedules at every start): the same definition changes nothing, a new
        timing starts from ``now``; its pause and its history stay.
        ``InvalidDataError`` for a bad name, type, crontab, interval,
        timezone, context or misfire policy; nothing is written then.
        """
        now = now or utcnow()
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise InvalidDataError(
                f"schedule name {name!r} must start with a letter or digit and hold only "
                "letters, digits, '.', '_', ':' and '-' (200 at most)"
            )
        if not isinstance(type, str):
            raise InvalidDataError(f"type must be a string, not {type.__class__.__name__}")
        self.registry.get(type)  # an unknown type: InvalidDataError naming the known ones
        context = check_json_object("context", context)
        if "scheduled_for" in context:
            raise InvalidDataError("context.scheduled_for is set by each fire; leave it out")
        if not isinstance(dry_run, bool):
            raise InvalidDataError(f"dry_run must be a boolean, not {dry_run!r}")
        if created_by is not None and not isinstance(created_by, str):
            raise InvalidDataError(f"created_by must be a string, not {created_by!r}")
        if misfire not in MISFIRE_POLICIES:
            raise InvalidDataError(
                f"misfire must be one of {', '.join(MISFIRE_POLICIES)}, not {misfire!r}"
            )
        if (cron is None) == (every is None):
            raise InvalidDataError("a schedule takes either cron or every, not both or neither")
        _zone(timezone)
        interval = None if every is None else _check_every(every)
        if cron is not None and not isinstance(cron, str):
            raise InvalidDataError(f"cron must be a crontab string, not {cron!r}")
        definition = Schedule(
            name=name,
            type=type,
            context=context,
            cron=None if cron is None else " ".join(cron.split()),
            every=interval,
            timezone=timezone,
            dry_run=dry_run,
            created_by=created_by,
            misfire=misfire,
        )
        first = self._first_fire(definition, now)
        while True:
            current = self.store.get_schedule(name)
            if current is None:
                stored = self.store.save_schedule(
                    definition.replace(next_fire_at=first, created_at=now, updated_at=now),
                    expect_revision=None,
                )
            else:
                same_timing = (current.cron, current.every, current.timezone) == (
                    definition.cron,
                    definition.every,
                    definition.timezone,
                )
                wanted = current.replace(
                    **{
                        k: getattr(definition, k)
                        for k in ("type", "context", "cron", "every", "timezone", "dry_run")
                    },
                    created_by=definition.created_by,
                    misfire=definition.misfire,
                    next_fire_at=current.next_fire_at if same_timing else first,
                )
                if wanted == current:
                    return current
                stored = self.store.save_schedule(
                    wanted.replace(updated_at=now), expect_revision=current.revision
                )
            if stored is not None:
                return stored
            # Declared or changed by another process meanwhile: decide again on what it wrote.

    def _first_fire(self, schedule: Schedule, now: datetime) -> datetime:
        """The first fire time after ``now``; an interval's is one interval away."""
        if schedule.every is not None:
            first = now + schedule.every
            if first.microsecond and not schedule.every % timedelta(seconds=1):
                # Whole seconds apart: on whole seconds, so scheduled_for reads plainly.
                first += timedelta(microseconds=1_000_000 - first.microsecond)
            return first
        try:
            timing = _timing(schedule, now)
        except ValueError as error:
            raise InvalidDataError(
                f"cron {schedule.cron!r} is not a valid 5-field crontab "
                f"(minute hour day month weekday): {error}"
            ) from None
        upcoming = timing.at_or_after(now + _TINY)
        if upcoming is None:
            raise InvalidDataError(f"cron {schedule.cron!r} never fires")
        return upcoming

    def get(self, name: str) -> Schedule:
        """The schedule ``name``; ``NotFoundError`` if there is none."""
        schedule = self.store.get_schedule(name) if isinstance(name, str) else None
        if schedule is None:
            raise NotFoundError(f"Schedule {name} was not found", id=name)
        return schedule

    def list_schedules(self) -> list[Schedule]:
        """Every schedule, by name."""
        return self.store.list_schedules()

    def remove(self, name: str) -> Schedule:
        """Remove the schedule ``name`` (its jobs stay); returns it as it was."""
        removed = self.store.delete_schedule(name) if isinstance(name, str) else None
        if removed is None:
            raise NotFoundError(f"Schedule {name} was not found", id=name)
        return removed

    def pause(self, name: str, now: datetime | None = None) -> Schedule:
        """Stop the schedule ``name`` from firing until ``resume``; pausing twice is a no-op."""
        now = now or utcnow()
        while True:
            current = self.get(name)
            if current.is_paused:
                return current
            stored = self.store.save_schedule(
                current.replace(paused_at=now, updated_at=now), expect_revision=current.revision
            )
            if stored is not None:
                return stored

    def resume(self, name: str, now: datetime | None = None) -> Schedule:
        """Let a paused schedule fire again, from its next fire time after ``now``.

        Fire times that passed while it was paused make no job: pausing is
        asking for none. Resuming a schedule that is not paused is a no-op.
        """
        now = now or utcnow()
        while True:
            current = self.get(name)
            if not current.is_paused:
                return current
            anchor = current.next_fire_at or now
            following = _timing(current, anchor).at_or_after(max(anchor, now + _TINY))
            stored = self.store.save_schedule(
                current.replace(paused_at=None, next_fire_at=following, updated_at=now),
                expect_revision=current.revision,
            )
            if stored is not None:
                return stored

    # -- firing ------------------------------------------------------------------

    def fire_due(self, now: datetime | None = None) -> list[BatchJob]:
        """The single step: fire every schedule due at ``now`` whose type is registered here.

        Returns the jobs this call created (those another process fired are
        not). The scheduler's workers call it every ``poll_interval``.
        """
        now = now or utcnow()
        if now.tzinfo is None:
            # Local time or UTC? Either guess would fire at the wrong hour somewhere.
            raise InvalidDataError(f"now must be timezone-aware, not {now!r}")
        created: list[BatchJob] = []
        for schedule in self.store.due_schedules(now, self.registry.types):
            try:
                created.extend(self._fire(schedule, now))
            except StoreError:
                raise  # the database's trouble, every schedule's: the caller backs off
            except Exception:
                # The strategy's code failed unexpectedly (a bug, a service away): the
                # fire stays due, to be tried again at the next poll; the others go on.
                log.exception("schedule %s: could not fire; trying again", schedule.name)
        return created

    def _fire(self, schedule: Schedule, now: datetime) -> list[BatchJob]:
        plan = plan_fires(schedule, now)
        zone = _zone(schedule.timezone)
        jobs: list[BatchJob] = []
        error = None
        try:
            for at in plan.times:
                context = {**schedule.context, "scheduled_for": at.astimezone(zone).isoformat()}
                jobs.append(
                    self.service.draft(
                        schedule.type,
                        context,
                        dry_run=schedule.dry_run,
                        created_by=schedule.created_by,
                        now=now,
                    )
                )
        except BatchJobError as refused:
            # The fire is still claimed: a definition its strategy refuses must
            # not be retried at every poll. The reason stays on the schedule.
            jobs, error = [], refused.message
        fired = self.store.fire_schedule(
            schedule,
            next_fire_at=plan.next_fire_at,
            jobs=jobs,
            fired_at=plan.times[-1] if plan.times else None,
            now=now,
            error=error,
        )
        if fired is None:
            return []  # fired by another process, or paused or changed meanwhile
        if error is not None:
            log.error("schedule %s: the fire at %s made no job: %s", schedule.name, now, error)
        if plan.capped:
            log.warning(
                "schedule %s missed more than %d fire times since %s; jobs were created for "
                "the first %d only (misfire='all')",
                schedule.name,
                MAX_CATCH_UP,
                schedule.next_fire_at,
                MAX_CATCH_UP,
            )
        elif plan.missed:
            log.info(
                "schedule %s: %d missed fire time(s) since %s (misfire=%r)",
                schedule.name,
                plan.missed,
                schedule.next_fire_at,
                schedule.misfire,
            )
        for job in jobs:
            self.service.created(job)
        return jobs

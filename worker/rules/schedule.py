"""The notice schedule and the lifecycle dates: pure functions of dates.

A *stage* is an offset from the expiry date: ``-3m`` (three calendar months
before), ``-15d``, ``0d`` (the expiry date itself), ``+30d``.  On any day only
the most urgent stage that has come due is sent, so a job that missed days
sends one notice, not a burst, and the stages it passed over are dropped.

Nothing here reads a clock: ``today`` is always an argument.
"""

from __future__ import annotations

import calendar
import functools
import re
from dataclasses import dataclass
from datetime import date, timedelta
from enum import Enum

#: A mailbox is expired from the day after its expiry for this many days; it
#: can still be renewed on the last of them.  From the next day it is deleted.
RENEWABLE_DAYS_AFTER_EXPIRY = 90
#: Notices start this many calendar months before expiry.
NOTICE_WINDOW_MONTHS = 3

_STAGE_RE = re.compile(r"([+-]?)([0-9]{1,3})([dm])")


class StageSyntaxError(ValueError):
    pass


class MailboxState(str, Enum):
    ACTIVE = "active"
    EXPIRED = "expired"
    DELETED = "deleted"


@dataclass(frozen=True, order=True)
class Stage:
    """One point of the schedule, such as ``-3m`` or ``+30d``."""

    days: int = 0
    months: int = 0

    @property
    def name(self) -> str:
        if self.months:
            return f"{self.months:+d}m"
        return "0d" if self.days == 0 else f"{self.days:+d}d"

    @property
    def after_expiry(self) -> bool:
        return self.months > 0 or self.days > 0

    def on(self, expires_on: date) -> date:
        """The date this stage falls on, for a mailbox expiring on ``expires_on``."""
        if self.months:
            return add_months(expires_on, self.months)
        return expires_on + timedelta(days=self.days)

    def __str__(self) -> str:
        return self.name


def parse_stage(text: str) -> Stage:
    match = _STAGE_RE.fullmatch(text.strip())
    if not match:
        raise StageSyntaxError(f"{text!r} is not a stage such as -3m, -15d, 0d or +30d")
    sign, number, unit = match.groups()
    value = int(number) * (-1 if sign == "-" else 1)
    if value and not sign:
        raise StageSyntaxError(f"{text!r} needs a sign: -{number}{unit} (before expiry) or +{number}{unit} (after)")
    return Stage(months=value) if unit == "m" else Stage(days=value)


def parse_stages(text: str) -> tuple[Stage, ...]:
    """Parse a comma-separated schedule and check that it can work.

    Besides the syntax, a schedule is refused when one of its stages could
    fall before the notice window or after deletion, or when a stage in days
    could fall on the same date as a stage in months for some expiry (or on
    either side of it, depending on the expiry): on such a date only one of
    the two would go out, so the other would be silently lost.
    """
    stages = [parse_stage(part) for part in text.split(",") if part.strip()]
    if not stages:
        raise StageSyntaxError("the schedule is empty")
    names = [stage.name for stage in stages]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise StageSyntaxError(f"stage {duplicates[0]} is listed twice")
    window_shortest, _ = month_span_days(NOTICE_WINDOW_MONTHS)
    for stage in stages:
        if stage.months < -NOTICE_WINDOW_MONTHS:
            raise StageSyntaxError(f"stage {stage} is earlier than the {NOTICE_WINDOW_MONTHS}-month notice window")
        if stage.months > 0:
            raise StageSyntaxError(f"stage {stage}: give stages after expiry in days, such as +30d")
        if stage.days > RENEWABLE_DAYS_AFTER_EXPIRY:
            raise StageSyntaxError(
                f"stage {stage} falls after deletion (+{RENEWABLE_DAYS_AFTER_EXPIRY}d is the last day)"
            )
        if stage.days < -window_shortest:
            raise StageSyntaxError(
                f"stage {stage} can fall before the {NOTICE_WINDOW_MONTHS}-month notice window "
                f"({NOTICE_WINDOW_MONTHS} calendar months can be as short as {window_shortest} days)"
            )
    for month_stage in (stage for stage in stages if stage.months):
        shortest, longest = month_span_days(-month_stage.months)
        for day_stage in (stage for stage in stages if not stage.months):
            if -longest <= day_stage.days <= -shortest:
                raise StageSyntaxError(
                    f"stages {day_stage} and {month_stage} can fall on the same date "
                    f"({month_stage} is {shortest} to {longest} days before expiry): "
                    f"move {day_stage} outside -{longest}d..-{shortest}d"
                )
    return tuple(stages)


def add_months(day: date, months: int) -> date:
    """Calendar months, clamped at the month's end: 31 March - 1 month = 28 February."""
    index = day.year * 12 + (day.month - 1) + months
    year, month = divmod(index, 12)
    month += 1
    return date(year, month, min(day.day, calendar.monthrange(year, month)[1]))


@functools.cache
def month_span_days(months: int) -> tuple[int, int]:
    """The fewest and most days that ``months`` calendar months back from an expiry can span.

    Three months are 89 days before 1 May and 92 before 31 May (clamped to 28
    February).  Worked out over four years, which hold every combination.
    """
    spans = {
        (expires_on - add_months(expires_on, -months)).days
        for expires_on in (date(2001, 1, 1) + timedelta(days=offset) for offset in range(4 * 366))
    }
    return min(spans), max(spans)


def add_years(day: date, years: int) -> date:
    """The same day ``years`` later; 29 February moves to 28 February."""
    year = day.year + years
    if day.month == 2 and day.day == 29 and not calendar.isleap(year):
        return date(year, 2, 28)
    return day.replace(year=year)


#: The schedule for manual mailboxes and mailboxes on a domain (docs/domain.md, "The notice schedule").
DEFAULT_STAGES: tuple[Stage, ...] = parse_stages("-3m,-2m,-1m,-15d,-7d,-1d,0d,+1d,+30d,+60d,+83d")


def last_renewable_day(expires_on: date) -> date:
    return expires_on + timedelta(days=RENEWABLE_DAYS_AFTER_EXPIRY)


def deletion_date(expires_on: date) -> date:
    """The first day on which the mailbox is deleted (the 91st after expiry)."""
    return expires_on + timedelta(days=RENEWABLE_DAYS_AFTER_EXPIRY + 1)


def mailbox_state(expires_on: date, today: date) -> MailboxState:
    if today <= expires_on:
        return MailboxState.ACTIVE
    if today < deletion_date(expires_on):
        return MailboxState.EXPIRED
    return MailboxState.DELETED


@functools.lru_cache(maxsize=8192)
def stage_dates(stages: tuple[Stage, ...], expires_on: date) -> tuple[tuple[date, Stage], ...]:
    """The stages of one expiry cycle in the order they fall.

    Two stages that fall on the same date (possible only with a custom
    schedule mixing months and days) keep their configured order.  Cached: a
    notice batch or an import decides thousands of mailboxes that share a few
    expiry dates (on a peak day, one), and this was an eighth of a notice
    batch's time (bench/daily_peak.py).
    """
    dated = [(stage.on(expires_on), index, stage) for index, stage in enumerate(stages)]
    dated.sort()
    return tuple((day, stage) for day, _, stage in dated)


def due_stage(stages: tuple[Stage, ...], expires_on: date, today: date) -> Stage | None:
    """The most urgent stage that has come due by ``today``, or None.

    None before the first stage and once the mailbox is deleted.
    """
    if mailbox_state(expires_on, today) is MailboxState.DELETED:
        return None
    due = None
    for day, stage in stage_dates(stages, expires_on):
        if day > today:
            break
        due = stage
    return due


def next_action_on(stages: tuple[Stage, ...], expires_on: date, today: date) -> date | None:
    """The first date after ``today`` on which a stage of this cycle falls, or None."""
    for day, _stage in stage_dates(stages, expires_on):
        if day > today and day < deletion_date(expires_on):
            return day
    return None


def first_action_on(stages: tuple[Stage, ...], expires_on: date) -> date | None:
    """Where a new expiry cycle starts: the date of its first stage."""
    dated = stage_dates(stages, expires_on)
    return dated[0][0] if dated else None


def superseded_stages(stages: tuple[Stage, ...], expires_on: date, since: date | None, due: Stage) -> list[Stage]:
    """The stages dated from ``since`` up to ``due``, not included: passed over for good."""
    if since is None:
        return []
    skipped = []
    for day, stage in stage_dates(stages, expires_on):
        if stage == due:
            break
        if day >= since:
            skipped.append(stage)
    return skipped

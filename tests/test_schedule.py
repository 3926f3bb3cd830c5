"""The notice schedule and the lifecycle dates: pure, no database.

The simulation below plays one mailbox through the daily scan exactly as the
scan uses these functions: a mailbox is looked at only when its
``next_action_on`` has come, gets the most urgent due stage unless the ledger
already has it, and then has ``next_action_on`` moved to the next stage date.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from datetime import date, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from worker.rules.schedule import (
    DEFAULT_STAGES,
    MailboxState,
    Stage,
    StageSyntaxError,
    add_months,
    add_years,
    deletion_date,
    due_stage,
    first_action_on,
    last_renewable_day,
    mailbox_state,
    month_span_days,
    next_action_on,
    parse_stage,
    parse_stages,
    stage_dates,
    superseded_stages,
)

DEFAULT_NAMES = ["-3m", "-2m", "-1m", "-15d", "-7d", "-1d", "0d", "+1d", "+30d", "+60d", "+83d"]
FIRST_EXPIRY = date(2024, 1, 1)
LAST_EXPIRY = date(2032, 12, 31)
ALL_EXPIRIES = [FIRST_EXPIRY + timedelta(days=n) for n in range((LAST_EXPIRY - FIRST_EXPIRY).days + 1)]


# -- the simulation --------------------------------------------------------------------------


def simulate(stages: tuple[Stage, ...], expires_on: date, run_days: Iterable[date]) -> list[tuple[date, str]]:
    """The (date, stage name) notices one mailbox gets when the job runs on ``run_days``."""
    ledger: set[tuple[date, str]] = set()
    sent: list[tuple[date, str]] = []
    next_on = first_action_on(stages, expires_on)
    for today in run_days:
        if next_on is None or next_on > today:
            continue
        due = due_stage(stages, expires_on, today)
        if due is not None and (expires_on, due.name) not in ledger:
            ledger.add((expires_on, due.name))
            sent.append((today, due.name))
        next_on = next_action_on(stages, expires_on, today)
    return sent


def lifetime(expires_on: date) -> list[date]:
    """Every day from four months before expiry to 100 days after."""
    start = add_months(expires_on, -4)
    return [start + timedelta(days=n) for n in range((expires_on + timedelta(days=100) - start).days + 1)]


def expected_when_every_day_runs(stages: tuple[Stage, ...], expires_on: date) -> list[tuple[date, str]]:
    return sorted((stage.on(expires_on), stage.name) for stage in stages)


# -- calendar arithmetic -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("day", "months", "expected"),
    [
        (date(2027, 3, 31), -1, date(2027, 2, 28)),
        (date(2028, 3, 31), -1, date(2028, 2, 29)),
        (date(2100, 3, 31), -1, date(2100, 2, 28)),  # not a leap year
        (date(2000, 3, 31), -1, date(2000, 2, 29)),  # a leap year
        (date(2027, 5, 31), -3, date(2027, 2, 28)),
        (date(2027, 5, 31), -1, date(2027, 4, 30)),
        (date(2026, 12, 31), 2, date(2027, 2, 28)),
        (date(2027, 12, 31), 2, date(2028, 2, 29)),
        (date(2027, 1, 15), -1, date(2026, 12, 15)),
        (date(2027, 2, 28), 1, date(2027, 3, 28)),
        (date(2027, 1, 31), 13, date(2028, 2, 29)),
        (date(2027, 1, 31), -12, date(2026, 1, 31)),
        (date(2027, 6, 15), 0, date(2027, 6, 15)),
    ],
)
def test_add_months_clamps_at_the_end_of_the_month(day, months, expected):
    assert add_months(day, months) == expected


@pytest.mark.parametrize(
    ("day", "years", "expected"),
    [
        (date(2028, 2, 29), 1, date(2029, 2, 28)),
        (date(2028, 2, 29), 4, date(2032, 2, 29)),
        (date(2028, 2, 29), 2, date(2030, 2, 28)),
        (date(2028, 2, 28), 1, date(2029, 2, 28)),
        (date(2027, 3, 1), 1, date(2028, 3, 1)),
        (date(2027, 12, 31), 5, date(2032, 12, 31)),
        (date(2096, 2, 29), 4, date(2100, 2, 28)),
    ],
)
def test_add_years_moves_29_february_to_28(day, years, expected):
    assert add_years(day, years) == expected


def test_month_spans():
    assert month_span_days(1) == (28, 31)
    assert month_span_days(2) == (59, 62)
    assert month_span_days(3) == (89, 92)


# -- the stages and their dates ----------------------------------------------------------------


def test_default_stages():
    assert [stage.name for stage in DEFAULT_STAGES] == DEFAULT_NAMES
    assert [stage.after_expiry for stage in DEFAULT_STAGES] == [False] * 7 + [True] * 4


@pytest.mark.parametrize(
    ("expires_on", "dates"),
    [
        (
            date(2027, 5, 31),
            [
                "2027-02-28",
                "2027-03-31",
                "2027-04-30",
                "2027-05-16",
                "2027-05-24",
                "2027-05-30",
                "2027-05-31",
                "2027-06-01",
                "2027-06-30",
                "2027-07-30",
                "2027-08-22",
            ],
        ),
        (
            date(2028, 2, 29),
            [
                "2027-11-29",
                "2027-12-29",
                "2028-01-29",
                "2028-02-14",
                "2028-02-22",
                "2028-02-28",
                "2028-02-29",
                "2028-03-01",
                "2028-03-30",
                "2028-04-29",
                "2028-05-22",
            ],
        ),
        (
            date(2026, 3, 31),
            [
                "2025-12-31",
                "2026-01-31",
                "2026-02-28",
                "2026-03-16",
                "2026-03-24",
                "2026-03-30",
                "2026-03-31",
                "2026-04-01",
                "2026-04-30",
                "2026-05-30",
                "2026-06-22",
            ],
        ),
        (
            date(2024, 12, 31),
            [
                "2024-09-30",
                "2024-10-31",
                "2024-11-30",
                "2024-12-16",
                "2024-12-24",
                "2024-12-30",
                "2024-12-31",
                "2025-01-01",
                "2025-01-30",
                "2025-03-01",
                "2025-03-24",
            ],
        ),
        (
            date(2027, 1, 1),
            [
                "2026-10-01",
                "2026-11-01",
                "2026-12-01",
                "2026-12-17",
                "2026-12-25",
                "2026-12-31",
                "2027-01-01",
                "2027-01-02",
                "2027-01-31",
                "2027-03-02",
                "2027-03-25",
            ],
        ),
    ],
)
def test_each_default_stage_date(expires_on, dates):
    expected = [(date.fromisoformat(day), name) for day, name in zip(dates, DEFAULT_NAMES, strict=True)]
    assert [(stage.on(expires_on), stage.name) for stage in DEFAULT_STAGES] == expected
    assert [(day, stage.name) for day, stage in stage_dates(DEFAULT_STAGES, expires_on)] == expected
    assert first_action_on(DEFAULT_STAGES, expires_on) == expected[0][0]


# -- lifecycle dates -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("today", "state"),
    [
        (date(2027, 2, 28), MailboxState.ACTIVE),
        (date(2027, 5, 31), MailboxState.ACTIVE),  # the expiry date itself
        (date(2027, 6, 1), MailboxState.EXPIRED),  # +1
        (date(2027, 8, 29), MailboxState.EXPIRED),  # +90, the last renewable day
        (date(2027, 8, 30), MailboxState.DELETED),  # +91
        (date(2028, 1, 1), MailboxState.DELETED),
    ],
)
def test_mailbox_state_boundaries(today, state):
    assert mailbox_state(date(2027, 5, 31), today) is state


def test_deletion_date_and_last_renewable_day():
    assert last_renewable_day(date(2027, 5, 31)) == date(2027, 8, 29)
    assert deletion_date(date(2027, 5, 31)) == date(2027, 8, 30)
    assert last_renewable_day(date(2028, 2, 29)) == date(2028, 5, 29)
    assert deletion_date(date(2028, 2, 29)) == date(2028, 5, 30)
    assert deletion_date(date(2024, 12, 31)) == date(2025, 4, 1)


# -- parsing -------------------------------------------------------------------------------------


def test_parse_stage():
    assert parse_stage("-3m") == Stage(months=-3)
    assert parse_stage(" -15d ") == Stage(days=-15)
    assert parse_stage("0d") == Stage()
    assert parse_stage("+0d").name == "0d"
    assert parse_stage("-0d").name == "0d"
    assert parse_stage("+30d") == Stage(days=30)
    assert parse_stage("+30d").name == "+30d"
    assert str(parse_stage("-2m")) == "-2m"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("-3m,-2m,-1m,-15d,-7d,-1d,0d,+1d,+30d,+60d,+83d", DEFAULT_NAMES),
        (" -1m , 0d ,, +30d ", ["-1m", "0d", "+30d"]),
        ("+30d,-7d", ["+30d", "-7d"]),  # kept as configured; dates sort them
        ("0d", ["0d"]),
        ("+90d", ["+90d"]),  # the last renewable day
        ("-89d", ["-89d"]),  # always within three calendar months
        ("-3m,-88d,-1m,-32d,-27d", ["-3m", "-88d", "-1m", "-32d", "-27d"]),
        ("-2m,-63d,-58d", ["-2m", "-63d", "-58d"]),
    ],
)
def test_parse_stages_accepts(text, expected):
    assert [stage.name for stage in parse_stages(text)] == expected


def test_parse_stages_default_text_gives_the_defaults():
    assert parse_stages(",".join(DEFAULT_NAMES)) == DEFAULT_STAGES


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "the schedule is empty"),
        (" , ,", "the schedule is empty"),
        ("-3m,-1d,-3m", "stage -3m is listed twice"),
        ("0d,+0d", "stage 0d is listed twice"),
        ("3m", "'3m' needs a sign: -3m (before expiry) or +3m (after)"),
        ("-1m,15d", "'15d' needs a sign: -15d (before expiry) or +15d (after)"),
        ("+91d", "stage +91d falls after deletion (+90d is the last day)"),
        ("-1d,+120d", "stage +120d falls after deletion (+90d is the last day)"),
        ("-4m", "stage -4m is earlier than the 3-month notice window"),
        ("-90d", "stage -90d can fall before the 3-month notice window (3 calendar months can be as short as 89 days)"),
        (
            "-100d",
            "stage -100d can fall before the 3-month notice window (3 calendar months can be as short as 89 days)",
        ),
        ("+1m", "stage +1m: give stages after expiry in days, such as +30d"),
        ("-1m,+2m", "stage +2m: give stages after expiry in days, such as +30d"),
        (
            "-1m,-30d",
            "stages -30d and -1m can fall on the same date (-1m is 28 to 31 days before expiry): move -30d outside -31d..-28d",
        ),
        (
            "-28d,-1m",
            "stages -28d and -1m can fall on the same date (-1m is 28 to 31 days before expiry): move -28d outside -31d..-28d",
        ),
        (
            "-2m,-60d",
            "stages -60d and -2m can fall on the same date (-2m is 59 to 62 days before expiry): move -60d outside -62d..-59d",
        ),
        (
            "-3m,-89d",
            "stages -89d and -3m can fall on the same date (-3m is 89 to 92 days before expiry): move -89d outside -92d..-89d",
        ),
        ("-3w", "'-3w' is not a stage such as -3m, -15d, 0d or +30d"),
        ("-1000d", "'-1000d' is not a stage such as -3m, -15d, 0d or +30d"),
        ("-3M", "'-3M' is not a stage such as -3m, -15d, 0d or +30d"),
        ("- 3m", "'- 3m' is not a stage such as -3m, -15d, 0d or +30d"),
        ("-3m;-1m", "'-3m;-1m' is not a stage such as -3m, -15d, 0d or +30d"),
        ("-\u0663m", "'-\u0663m' is not a stage such as -3m, -15d, 0d or +30d"),  # an Arabic-Indic digit
        ("-3m\n-1m", "'-3m\\n-1m' is not a stage such as -3m, -15d, 0d or +30d"),
    ],
)
def test_parse_stages_refuses(text, message):
    with pytest.raises(StageSyntaxError) as caught:
        parse_stages(text)
    assert str(caught.value) == message
    assert "\n" not in str(caught.value)


# -- what is due -----------------------------------------------------------------------------------


def test_due_stage_and_next_action_on_around_one_expiry():
    expires_on = date(2027, 5, 31)
    assert due_stage(DEFAULT_STAGES, expires_on, date(2027, 2, 27)) is None
    assert next_action_on(DEFAULT_STAGES, expires_on, date(2027, 2, 27)) == date(2027, 2, 28)
    assert due_stage(DEFAULT_STAGES, expires_on, date(2027, 2, 28)).name == "-3m"
    assert due_stage(DEFAULT_STAGES, expires_on, date(2027, 3, 30)).name == "-3m"
    assert next_action_on(DEFAULT_STAGES, expires_on, date(2027, 2, 28)) == date(2027, 3, 31)
    assert due_stage(DEFAULT_STAGES, expires_on, date(2027, 5, 20)).name == "-15d"
    assert due_stage(DEFAULT_STAGES, expires_on, date(2027, 5, 31)).name == "0d"
    assert due_stage(DEFAULT_STAGES, expires_on, date(2027, 8, 22)).name == "+83d"
    assert due_stage(DEFAULT_STAGES, expires_on, date(2027, 8, 29)).name == "+83d"  # already sent: the ledger says so
    assert next_action_on(DEFAULT_STAGES, expires_on, date(2027, 8, 22)) is None
    assert due_stage(DEFAULT_STAGES, expires_on, date(2027, 8, 30)) is None  # deleted
    assert due_stage(DEFAULT_STAGES, expires_on, date(2030, 1, 1)) is None


def test_superseded_stages():
    expires_on = date(2027, 5, 31)
    minus_1m = Stage(months=-1)
    assert superseded_stages(DEFAULT_STAGES, expires_on, date(2027, 2, 28), minus_1m) == [
        Stage(months=-3),
        Stage(months=-2),
    ]
    assert superseded_stages(DEFAULT_STAGES, expires_on, date(2027, 3, 1), minus_1m) == [Stage(months=-2)]
    assert superseded_stages(DEFAULT_STAGES, expires_on, date(2027, 4, 30), minus_1m) == []
    assert superseded_stages(DEFAULT_STAGES, expires_on, None, minus_1m) == []


# -- the lifetime of one mailbox -------------------------------------------------------------------


def test_lifetime_of_a_mailbox_every_day():
    expires_on = date(2027, 5, 31)
    sent = simulate(DEFAULT_STAGES, expires_on, lifetime(expires_on))
    assert sent == [
        (date(2027, 2, 28), "-3m"),
        (date(2027, 3, 31), "-2m"),
        (date(2027, 4, 30), "-1m"),
        (date(2027, 5, 16), "-15d"),
        (date(2027, 5, 24), "-7d"),
        (date(2027, 5, 30), "-1d"),
        (date(2027, 5, 31), "0d"),
        (date(2027, 6, 1), "+1d"),
        (date(2027, 6, 30), "+30d"),
        (date(2027, 7, 30), "+60d"),
        (date(2027, 8, 22), "+83d"),
    ]
    assert all(day < deletion_date(expires_on) for day, _ in sent)


@pytest.mark.parametrize("expires_on", [date(2028, 2, 29), date(2024, 12, 31), date(2026, 3, 31), date(2027, 1, 1)])
def test_lifetime_sends_each_stage_on_its_date(expires_on):
    sent = simulate(DEFAULT_STAGES, expires_on, lifetime(expires_on))
    assert [name for _, name in sent] == DEFAULT_NAMES
    assert sent == [(stage.on(expires_on), stage.name) for stage in DEFAULT_STAGES]


def test_lifetime_with_missed_days_sends_only_the_most_urgent():
    expires_on = date(2027, 5, 31)
    down = {date(2027, 2, 28) + timedelta(days=n) for n in range(80)}  # 28 Feb .. 18 May
    down |= {date(2027, 5, 30), date(2027, 5, 31)}
    down |= {date(2027, 6, 30) + timedelta(days=n) for n in range(61)}  # 30 Jun .. 29 Aug
    run_days = [day for day in lifetime(expires_on) if day not in down]
    assert simulate(DEFAULT_STAGES, expires_on, run_days) == [
        (date(2027, 5, 19), "-15d"),  # -3m, -2m and -1m superseded
        (date(2027, 5, 24), "-7d"),
        (date(2027, 6, 1), "+1d"),  # -1d and 0d superseded
        # +30d, +60d and +83d superseded, then deleted: the job came back on the deletion date
    ]


def test_every_expiry_2024_to_2032_job_running_every_day():
    for expires_on in ALL_EXPIRIES:
        assert simulate(DEFAULT_STAGES, expires_on, lifetime(expires_on)) == expected_when_every_day_runs(
            DEFAULT_STAGES, expires_on
        ), expires_on


# -- the property ----------------------------------------------------------------------------------


@st.composite
def schedules(draw) -> tuple[Stage, ...]:
    """A valid custom schedule: some month stages, then day stages that never collide with them."""
    months = draw(st.sets(st.sampled_from([-1, -2, -3]), max_size=3))
    blocked = set()
    for count in months:
        shortest, longest = month_span_days(-count)
        blocked |= set(range(-longest, -shortest + 1))
    allowed = [days for days in range(-89, 91) if days not in blocked]
    days = draw(st.sets(st.sampled_from(allowed), min_size=0 if months else 1, max_size=12))
    names = [f"{count:+d}m" for count in months] + [Stage(days=count).name for count in days]
    draw(st.randoms(use_true_random=False)).shuffle(names)
    return parse_stages(",".join(names))


def check_run(stages: tuple[Stage, ...], expires_on: date, run_days: list[date]) -> list[tuple[date, str]]:
    sent = simulate(stages, expires_on, run_days)
    ran = set(run_days)
    dated = stage_dates(stages, expires_on)
    order = [stage.name for _, stage in dated]
    names = [name for _, name in sent]
    days = [day for day, _ in sent]
    end = deletion_date(expires_on)

    # (a) each stage at most once per cycle
    assert len(names) == len(set(names))
    # (b) at most one notice per run day, and only on run days
    assert len(days) == len(set(days))
    assert set(days) <= ran
    # (c) in schedule order
    assert [order.index(name) for name in names] == sorted(order.index(name) for name in names)
    # (d) the stage sent is the most urgent one due that day (worked out here, not by due_stage) ...
    for day, name in sent:
        most_urgent = max((stage_day, index) for index, (stage_day, _) in enumerate(dated) if stage_day <= day)
        assert name == order[most_urgent[1]]
    # ... and every stage goes out on its own date whenever the job ran on that date
    for stage_day, stage in dated:
        if stage_day in ran:
            assert (stage_day, stage.name) in sent
    # (e) nothing before the first stage, nothing from the deletion date on
    assert all(dated[0][0] <= day < end for day in days)
    # (f) a stage is sent exactly when the job ran between its date and the next stage's date
    #     (the first such run day); otherwise it was superseded and never comes later
    bounds = [stage_day for stage_day, _ in dated[1:]] + [end]
    expected = []
    for (stage_day, stage), until in zip(dated, bounds, strict=True):
        window = [day for day in run_days if stage_day <= day < until]
        if window:
            expected.append((window[0], stage.name))
    assert sent == expected
    return sent


def run_days_for(expires_on: date, miss_rate: float, rng: random.Random) -> list[date]:
    return [day for day in lifetime(expires_on) if rng.random() >= miss_rate]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    expires_on=st.dates(FIRST_EXPIRY, LAST_EXPIRY),
    miss_rate=st.sampled_from([0.0, 0.05, 0.3, 0.7, 0.95, 1.0]) | st.floats(0.0, 1.0),
    rng=st.randoms(use_true_random=False),
)
def test_property_default_schedule_with_missed_days(expires_on, miss_rate, rng):
    run_days = run_days_for(expires_on, miss_rate, rng)
    sent = check_run(DEFAULT_STAGES, expires_on, run_days)
    if miss_rate == 0.0:
        # (g) a job that runs every day sends every stage, each on its date
        assert sent == expected_when_every_day_runs(DEFAULT_STAGES, expires_on)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    stages=schedules(),
    expires_on=st.dates(FIRST_EXPIRY, LAST_EXPIRY),
    miss_rate=st.sampled_from([0.0, 0.3, 0.9]) | st.floats(0.0, 1.0),
    rng=st.randoms(use_true_random=False),
)
def test_property_custom_schedule_with_missed_days(stages, expires_on, miss_rate, rng):
    run_days = run_days_for(expires_on, miss_rate, rng)
    sent = check_run(stages, expires_on, run_days)
    if miss_rate == 0.0:
        assert sent == expected_when_every_day_runs(stages, expires_on)
    # (g) whatever was missed, running every day sends exactly all the stages
    assert check_run(stages, expires_on, lifetime(expires_on)) == expected_when_every_day_runs(stages, expires_on)

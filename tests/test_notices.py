"""The notice rules (pure) and the scan's database pieces (real PostgreSQL, and SQLite)."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import pytest

from tests.factories import make_mailbox
from worker import migrate
from worker.db import make_engine, make_session_factory
from worker.models import Mailbox, WorkerState
from worker.notices import (
    SCAN_LEASE,
    claim_daily_run,
    decide_notice,
    due_mailbox_batches,
    earliest_action_on,
    reconcile_schedule,
    record_daily_run,
)
from worker.schedule import DEFAULT_STAGES, parse_stages

EXPIRES = date(2027, 3, 31)
NOW = datetime(2027, 3, 24, 5, 0, tzinfo=timezone.utc)


def decide(today: date, **overrides):
    arguments = dict(
        stages=DEFAULT_STAGES,
        expires_on=EXPIRES,
        on_domain=False,
        auto_renew=False,
        pending_since=today,
        today=today,
        already_sent=frozenset(),
    )
    arguments.update(overrides)
    return decide_notice(**arguments)


class TestDecideNotice:
    def test_the_due_stage_before_expiry_is_an_expiry_notice(self):
        decision = decide(date(2027, 3, 24))
        assert (decision.kind, decision.stage.name, decision.next_action_on) == ("expiry-notice", "-7d", date(2027, 3, 30))

    def test_after_expiry_it_is_an_expired_notice(self):
        decision = decide(date(2027, 4, 30))
        assert (decision.kind, decision.stage.name, decision.next_action_on) == ("expired-notice", "+30d", date(2027, 5, 30))

    def test_a_domain_mailbox_gets_domain_notices_before_and_after(self):
        assert decide(date(2027, 3, 24), on_domain=True).kind == "domain-expiry-notice"
        assert decide(date(2027, 4, 1), on_domain=True).kind == "domain-expiry-notice"

    def test_auto_renew_is_skipped_but_still_scheduled(self):
        decision = decide(date(2027, 3, 24), auto_renew=True)
        assert (decision.stage, decision.skip_reason, decision.next_action_on) == (None, "auto-renew", date(2027, 3, 30))

    def test_already_sent_is_skipped(self):
        decision = decide(date(2027, 3, 26), already_sent=frozenset({"-7d"}))
        assert (decision.stage, decision.skip_reason, decision.next_action_on) == (None, "already-sent", date(2027, 3, 30))

    def test_deleted_gets_nothing_ever_again(self):
        decision = decide(date(2027, 6, 30))
        assert (decision.stage, decision.skip_reason, decision.next_action_on) == (None, "deleted", None)

    def test_stages_passed_over_are_counted_as_superseded(self):
        decision = decide(date(2027, 3, 25), pending_since=date(2027, 3, 16))
        assert decision.stage.name == "-7d"
        assert [stage.name for stage in decision.superseded] == ["-15d"]

    def test_earliest_action_on(self):
        assert earliest_action_on(DEFAULT_STAGES, EXPIRES, date(2027, 3, 25)) == date(2027, 3, 25)
        assert earliest_action_on(DEFAULT_STAGES, EXPIRES, date(2026, 11, 1)) == date(2026, 12, 31)
        assert earliest_action_on(DEFAULT_STAGES, EXPIRES, date(2027, 6, 30)) is None


def sqlite_factory(tmp_path):
    url = f"sqlite:///{tmp_path / 'notices.sqlite3'}"
    migrate.upgrade(url)
    return make_session_factory(make_engine(url))


@pytest.fixture(params=["postgresql", "sqlite"])
def any_session_factory(request, tmp_path):
    if request.param == "postgresql":
        return request.getfixturevalue("session_factory")
    return sqlite_factory(tmp_path)


class TestDailyRunClaim:
    def test_a_date_is_claimed_once(self, any_session_factory):
        with any_session_factory() as session, session.begin():
            assert claim_daily_run(session, EXPIRES, NOW) is True
        with any_session_factory() as session, session.begin():
            assert claim_daily_run(session, EXPIRES, NOW + timedelta(minutes=5)) is False
        with any_session_factory() as session, session.begin():
            assert claim_daily_run(session, EXPIRES + timedelta(days=1), NOW) is True

    def test_a_stale_unfinished_claim_is_taken_over_once(self, any_session_factory):
        with any_session_factory() as session, session.begin():
            claim_daily_run(session, EXPIRES, NOW)
        later = NOW + SCAN_LEASE + timedelta(seconds=1)
        with any_session_factory() as session, session.begin():
            assert claim_daily_run(session, EXPIRES, later) is True
        with any_session_factory() as session, session.begin():
            assert claim_daily_run(session, EXPIRES, later + timedelta(seconds=1)) is False

    def test_a_finished_scan_is_never_taken_over(self, any_session_factory):
        with any_session_factory() as session, session.begin():
            claim_daily_run(session, EXPIRES, NOW)
            record_daily_run(session, EXPIRES, NOW, {"batches": 1})
        with any_session_factory() as session, session.begin():
            assert claim_daily_run(session, EXPIRES, NOW + timedelta(days=2)) is False


def test_batches_never_split_a_reference_address(session_factory):
    with session_factory() as session, session.begin():
        for number in range(50):
            make_mailbox(session, expires_on=EXPIRES, reference_email=f"titolare{number % 7}@example.it")
    with session_factory() as session:
        batches = list(due_mailbox_batches(session, date(2027, 3, 24), batch_size=4))
        owner = {m.id: m.holder.reference_email for m in session.query(Mailbox)}
    assert sorted(mailbox_id for batch in batches for mailbox_id in batch) == sorted(owner)
    addresses_per_batch = [{owner[mailbox_id] for mailbox_id in batch} for batch in batches]
    for index, addresses in enumerate(addresses_per_batch):
        for other in addresses_per_batch[index + 1 :]:
            assert not addresses & other


def test_batches_hold_exactly_the_mailboxes_due_by_today(any_session_factory):
    """PostgreSQL and SQLite alike: due on or before today, never after, never without a date."""
    today = date(2027, 3, 24)
    layout = [  # (reference address, next_action_on)
        ("b@example.it", today),
        ("a@example.it", today - timedelta(days=40)),
        ("c@example.it", today + timedelta(days=1)),  # not yet due
        ("b@example.it", today - timedelta(days=1)),
        ("a@example.it", today),
        ("b@example.it", today),
        ("d@example.it", None),  # deleted: no next action
        ("e@example.it", today),
        ("a@example.it", date(2026, 12, 31)),
    ]
    ids = []
    with any_session_factory() as session, session.begin():
        for reference_email, next_action_on in layout:
            mailbox = make_mailbox(session, expires_on=EXPIRES, reference_email=reference_email)
            mailbox.next_action_on = next_action_on
            ids.append(mailbox.id)
    b1, a1, _c, b2, a2, b3, _d, e1, a3 = ids
    a, b, e = {a1, a2, a3}, {b1, b2, b3}, {e1}

    def batches(day, batch_size):
        with any_session_factory() as session:
            return sorted((set(batch) for batch in due_mailbox_batches(session, day, batch_size)), key=min)

    # A batch is closed once it holds batch_size mailboxes, with the whole of its last address.
    assert batches(today, 1) == sorted([a, b, e], key=min)
    four = batches(today, 4)  # whichever address comes first: 3 + 3 and 1, or 3 + 1 and 3
    assert set().union(*four) == a | b | e
    assert all(batch in (a | b, a | e, b | e, a, b, e) for batch in four)
    assert sorted(map(len, four)) in ([1, 6], [3, 4])
    assert batches(today, 100) == [a | b | e]
    assert batches(date(2027, 2, 12), 2) == [{a1, a3}]
    assert batches(date(2026, 1, 1), 2) == []


def test_a_changed_schedule_brings_next_action_on_forward(any_session_factory):
    late_schedule = parse_stages("-1m,0d")
    with any_session_factory() as session, session.begin():
        mailbox = make_mailbox(session, expires_on=EXPIRES, stages=late_schedule)
        deleted = make_mailbox(session, expires_on=date(2026, 1, 1), stages=late_schedule)
        session.get(Mailbox, deleted.id).next_action_on = None
    assert mailbox.next_action_on == date(2027, 2, 28)

    assert reconcile_schedule(any_session_factory, late_schedule, date(2026, 12, 1)) == 0  # first record
    assert reconcile_schedule(any_session_factory, late_schedule, date(2026, 12, 1)) is None  # unchanged
    assert reconcile_schedule(any_session_factory, DEFAULT_STAGES, date(2026, 12, 1)) == 1
    with any_session_factory() as session:
        assert session.get(Mailbox, mailbox.id).next_action_on == date(2026, 12, 31)  # the new -3m stage
        assert session.get(Mailbox, deleted.id).next_action_on is None
        assert session.get(WorkerState, "notice_stages").value == ",".join(s.name for s in DEFAULT_STAGES)


def test_migration_0006_copies_the_reference_address_onto_each_mailbox(tmp_path):
    from sqlalchemy import text

    url = f"sqlite:///{tmp_path / 'migrate.sqlite3'}"
    migrate.upgrade(url, "0005")
    engine = make_engine(url)
    with engine.begin() as connection:
        connection.execute(text("INSERT INTO accounts (id, login) VALUES (1, 'a@example.it')"))
        connection.execute(text(
            "INSERT INTO holders (id, account_id, holder_key, name, kind, reference_email)"
            " VALUES (1, 1, 'k', 'Mario Rossi', 'private', 'mario@example.it')"
        ))
        connection.execute(text(
            "INSERT INTO mailboxes (id, address, account_id, holder_id, plan, extra_space_gb, extra_archive_gb,"
            " used_space_mb, expires_on, auto_renew, renewal_years, promo, language)"
            " VALUES (1, 'm@pec.example.it', 1, 1, 'standard', 0, 0, 0, '2027-03-31', 0, 1, 0, 'it')"
        ))
    engine.dispose()
    migrate.upgrade(url)
    engine = make_engine(url)
    with engine.connect() as connection:
        assert connection.execute(text("SELECT reference_email FROM mailboxes")).scalar_one() == "mario@example.it"
    engine.dispose()

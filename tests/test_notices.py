"""The notice rules (pure) and the scan's database pieces (real PostgreSQL, and SQLite)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest
from sqlalchemy import select, text

from tests.support.factories import make_mailbox
from worker.mail.message_ids import installation_id, message_id_for
from worker.rules.notices import decide_notice, earliest_action_on
from worker.rules.schedule import DEFAULT_STAGES, parse_stages
from worker.services.charges import CHARGE_NOTICE, DEFAULT_CHARGE_PLAN
from worker.services.daily import SCAN_LEASE, claim_daily_run, record_daily_run
from worker.services.notices import due_mailbox_batches, process_notice_batch, reconcile_schedule
from worker.store import migrate
from worker.store.db import make_engine, make_session_factory
from worker.store.models import Mailbox, NoticeLedgerEntry, OutboxMessage, WorkerState

EXPIRES = date(2027, 3, 31)
NOW = datetime(2027, 3, 24, 5, 0, tzinfo=UTC)


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
        assert (decision.kind, decision.stage.name, decision.next_action_on) == (
            "expiry-notice",
            "-7d",
            date(2027, 3, 30),
        )

    def test_after_expiry_it_is_an_expired_notice(self):
        decision = decide(date(2027, 4, 30))
        assert (decision.kind, decision.stage.name, decision.next_action_on) == (
            "expired-notice",
            "+30d",
            date(2027, 5, 30),
        )

    def test_a_domain_mailbox_gets_domain_notices_before_and_after(self):
        assert decide(date(2027, 3, 24), on_domain=True).kind == "domain-expiry-notice"
        assert decide(date(2027, 4, 1), on_domain=True).kind == "domain-expiry-notice"

    def test_auto_renew_is_skipped_but_still_scheduled(self):
        decision = decide(date(2027, 3, 24), auto_renew=True)
        assert (decision.stage, decision.skip_reason, decision.next_action_on) == (
            None,
            "auto-renew",
            date(2027, 3, 30),
        )

    def test_already_sent_is_skipped(self):
        decision = decide(date(2027, 3, 26), already_sent=frozenset({"-7d"}))
        assert (decision.stage, decision.skip_reason, decision.next_action_on) == (
            None,
            "already-sent",
            date(2027, 3, 30),
        )

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
    url = f"sqlite:///{tmp_path / 'migrate.sqlite3'}"
    migrate.upgrade(url, "0005")
    engine = make_engine(url)
    with engine.begin() as connection:
        connection.execute(text("INSERT INTO accounts (id, login) VALUES (1, 'a@example.it')"))
        connection.execute(
            text(
                "INSERT INTO holders (id, account_id, holder_key, name, kind, reference_email)"
                " VALUES (1, 1, 'k', 'Mario Rossi', 'private', 'mario@example.it')"
            )
        )
        connection.execute(
            text(
                "INSERT INTO mailboxes (id, address, account_id, holder_id, plan, extra_space_gb, extra_archive_gb,"
                " used_space_mb, expires_on, auto_renew, renewal_years, promo, language)"
                " VALUES (1, 'm@pec.example.it', 1, 1, 'standard', 0, 0, 0, '2027-03-31', 0, 1, 0, 'it')"
            )
        )
    engine.dispose()
    migrate.upgrade(url)
    engine = make_engine(url)
    with engine.connect() as connection:
        assert connection.execute(text("SELECT reference_email FROM mailboxes")).scalar_one() == "mario@example.it"
    engine.dispose()


def _batch_outcome(factory, today: date) -> dict:
    """A notice batch over a mixed fleet, and every row it wrote, keyed by mailbox address."""
    with factory() as session, session.begin():
        mailboxes = [
            make_mailbox(
                session,
                expires_on=EXPIRES,
                address="uno@pec.example.it",
                reference_email="anna@example.it",
                holder_name="Niccolò D'Àrgento <b>&amp;</b>",
            ),
            make_mailbox(
                session,
                expires_on=EXPIRES,
                address="due@pec.example.it",
                reference_email="Anna@Example.it",
                holder_name="Niccolò D'Àrgento <b>&amp;</b>",
            ),
            make_mailbox(
                session,
                expires_on=EXPIRES,
                domain="studio-è.example",
                address="info@pec.studio-è.example",
                reference_email="studio@example.it",
                english=True,
            ),
            make_mailbox(
                session,
                expires_on=EXPIRES - timedelta(days=10),
                address="tardi@pec.example.it",
                reference_email="tardi@example.it",
            ),
            make_mailbox(
                session,
                expires_on=EXPIRES - timedelta(days=400),
                address="cancellata@pec.example.it",
                reference_email="cancellata@example.it",
            ),
            make_mailbox(
                session,
                expires_on=EXPIRES,
                card=True,
                address="carta@pec.example.it",
                reference_email="carta@example.it",
            ),
        ]
        for mailbox in mailboxes:
            mailbox.next_action_on = today
        # The auto-renew one was told 30 days before: its charge is due, not a notice.
        session.add(
            NoticeLedgerEntry(
                mailbox_id=mailboxes[-1].id,
                cycle_expires_on=EXPIRES,
                stage=DEFAULT_CHARGE_PLAN.notice_stage.name,
                kind=CHARGE_NOTICE,
                business_date=EXPIRES - timedelta(days=30),
            )
        )
        ids = [mailbox.id for mailbox in mailboxes]
        address_of = {mailbox.id: mailbox.address for mailbox in mailboxes}
    with factory() as session, session.begin():
        result = process_notice_batch(
            session, ids, today=today, stages=DEFAULT_STAGES, now=NOW, mail_domain="pec-provider.example"
        )
    with factory() as session:
        messages = {row.id: row for row in session.scalars(select(OutboxMessage))}
        # Ids (and so the Message-IDs, made from them) differ between the two databases:
        # a message is named by its mailboxes' addresses, and its Message-ID checked here.
        name_of = {}
        for row in messages.values():
            members = [mailbox["id"] for mailbox in row.context["mailboxes"]]
            keys = [
                (member, cycle.isoformat(), row.stage)
                for member, cycle in session.execute(
                    select(Mailbox.id, Mailbox.expires_on).where(Mailbox.id.in_(members))
                )
            ]
            assert row.message_id == message_id_for(
                keys, "pec-provider.example", installation_id=installation_id(session)
            )
            name_of[row.id] = tuple(address_of[member] for member in members)
        outbox = sorted(
            (
                name_of[row.id],
                row.kind,
                row.stage,
                row.language,
                row.to_address,
                row.business_date,
                {**row.context, "mailboxes": [{**m, "id": address_of[m["id"]]} for m in row.context["mailboxes"]]},
                row.status,
                row.attempts,
                row.created_at,
            )
            for row in messages.values()
        )
        ledger = sorted(
            (
                address_of[row.mailbox_id],
                row.cycle_expires_on,
                row.stage,
                row.kind,
                row.business_date,
                name_of[row.outbox_message_id],
            )
            for row in session.scalars(select(NoticeLedgerEntry))
            if row.outbox_message_id is not None
        )
        next_actions = {address_of[m.id]: m.next_action_on for m in session.scalars(select(Mailbox))}
    return {
        "outbox": outbox,
        "outbox_ids_returned": sorted(name_of[outbox_id] for outbox_id in result.outbox_ids),
        "ledger": ledger,
        "next_action_on": next_actions,
        "charges_due": [address_of[mailbox_id] for mailbox_id in result.charges_due],
        "counts": (result.examined, dict(result.notices), dict(result.emails), dict(result.skipped), result.superseded),
    }


def test_the_batch_writes_the_same_rows_on_postgresql_and_sqlite(session_factory, tmp_path):
    """The batch's Core statements give the same outbox messages (context included), ledger rows
    and next dates on both databases (their dialects differ: JSON, dates, arrays of ids)."""
    today = EXPIRES - timedelta(days=7)
    on_postgresql = _batch_outcome(session_factory, today)
    on_sqlite = _batch_outcome(sqlite_factory(tmp_path), today)
    assert on_postgresql == on_sqlite
    # And what they wrote is what the rules say.
    assert on_postgresql["counts"][1] == {
        ("expiry-notice", "-7d"): 2,
        ("domain-expiry-notice", "-7d"): 1,
        ("expired-notice", "+1d"): 1,
    }
    assert on_postgresql["charges_due"] == ["carta@pec.example.it"]
    assert on_postgresql["counts"][3] == {"deleted": 1, "charge-due": 1}
    (joint,) = [message for message in on_postgresql["outbox"] if message[4] == "anna@example.it"]
    assert joint[0] == ("due@pec.example.it", "uno@pec.example.it")
    assert joint[6]["holder_name"] == "Niccolò D'Àrgento <b>&amp;</b>"
    assert on_postgresql["outbox_ids_returned"] == sorted(message[0] for message in on_postgresql["outbox"])
    assert len(on_postgresql["ledger"]) == 4

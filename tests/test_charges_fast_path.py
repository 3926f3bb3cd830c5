"""The charges' fast path (PostgreSQL through psycopg) writes what the ORM path writes.

``charge_mailbox`` claims a plain charge and records its success with a few prepared
statements on PostgreSQL, and hands everything else to the ORM path.  Here the same
days of the same mailboxes, one of each kind (a success, every decline, a lost answer,
no card, a charge notice still due, a retry, a mailbox renewed or switched off while its
charge is at the gateway, a receipt's stage or Message-ID already taken), run through
both paths on PostgreSQL, and through the ORM path on SQLite: every row of every table
the charges write (ids included), what each run reports, and the charge log lines are
the same.  The sandbox gateway's own fast path (one autocommit statement a call) is
covered by the same rows of ``sandbox_charges``.
"""

from __future__ import annotations

import logging
from datetime import date, timedelta

import pytest
import time_machine
from sqlalchemy import select, text, update

from tests.conftest import make_settings
from tests.factories import make_mailbox
from tests.test_charges import CHARGE_DAY, EXPIRES, at_morning, mark_charge_notice_sent
from worker.services import charges
from worker.store import migrate
from worker.store.db import make_engine, make_session_factory, psycopg_engine
from worker.mail.emails import INSTALLATION_ID_KEY, installation_id, message_id_for
from worker.gateways.sandbox import SandboxGateway
from worker.store.models import Base, Mailbox, NoticeLedgerEntry, OutboxMessage, OutboxStatus, WorkerState
from worker.services.runtime import Runtime

#: What the charges write (and what they read, for the mailboxes).
TABLES = (
    "outbox_context_text",
    "mailboxes",
    "charge_intents",
    "sandbox_charges",
    "notice_ledger",
    "outbox_messages",
    "renewal_orders",
    "renewal_order_lines",
    "payments",
)
#: Random by design (the order's URL id).
RANDOM_COLUMNS = {("renewal_orders", "public_id")}
#: Each database is its own installation: the runs compared share this one, so their Message-IDs agree.
INSTALLATION = "c0ffee0123456789abcdef0123456789"


class ChangingGateway:
    """The real sandbox; for the keys given, something changes the mailbox while the charge is at
    the gateway (after the sandbox recorded it, before the answer is recorded)."""

    def __init__(self, inner: SandboxGateway, session_factory, changes: dict):
        self._inner = inner
        self._session_factory = session_factory
        self._changes = changes  # mailbox id -> values for its row
        self.name = inner.name

    def charge(self, **kwargs):
        answer = self._inner.charge(**kwargs)
        mailbox_id = int(kwargs["idempotency_key"].split(":")[1])
        if mailbox_id in self._changes:
            with self._session_factory() as session, session.begin():
                session.execute(update(Mailbox).where(Mailbox.id == mailbox_id).values(**self._changes[mailbox_id]))
        return answer

    def lookup(self, key):
        return self._inner.lookup(key)

    def close(self):
        self._inner.close()


def _seed(session_factory) -> dict[str, int]:
    """One mailbox of each case, due on the charge day; their ids by name."""
    cases = {
        "success": dict(token="pm_card_visa"),
        "success_en_two_years": dict(token="pm_card_visa", language="en", plan="premium", years=2, extras=(5, 10)),
        "paypal": dict(token="paypal_ok"),
        "soft": dict(token="pm_card_chargeDeclinedInsufficientFunds"),
        "hard": dict(token="pm_card_chargeDeclined"),
        "authentication": dict(token="pm_card_authenticationRequired"),
        "unknown_token": dict(token="pm_no_such_card"),
        "timeout": dict(token="pm_sandbox_timeout"),
        "no_method": dict(token=None),
        "not_told": dict(token="pm_card_visa", notified=False),
        "card_expiring": dict(token="pm_card_visa", card=date(2027, 2, 28)),
        # First charged on the retry day (-5d), whose stage is taken.
        "stage_taken": dict(token="pm_card_visa", due=CHARGE_DAY + timedelta(days=2)),
        "message_id_taken": dict(token="pm_card_visa", due=CHARGE_DAY + timedelta(days=2)),
        "renewed_meanwhile": dict(token="pm_card_visa"),
        "switched_off_meanwhile": dict(token="pm_card_visa"),
        "retry": dict(token="pm_card_visa", attempt_before="soft_decline"),
        "unresolved": dict(token="pm_card_visa", attempt_before="started"),
    }
    ids = {}
    with session_factory() as session, session.begin():
        session.merge(WorkerState(key=INSTALLATION_ID_KEY, value=INSTALLATION))
        assert installation_id(session) == INSTALLATION  # and what an engine read before is forgotten
        for number, (name, case) in enumerate(cases.items()):
            mailbox = make_mailbox(
                session,
                expires_on=EXPIRES,
                auto_renew=True,
                payment_method=case["token"],
                language=case.get("language", "it"),
                plan=case.get("plan", "standard"),
                reference_email=f"Titolare.{number}@Example.it",
                holder_name=f"Titolare {number}",
                address=f"casella{number}@pec.example.it",
            )
            mailbox.card_expires_on = case.get("card")
            mailbox.renewal_years = case.get("years", 1)
            mailbox.extra_space_gb, mailbox.extra_archive_gb = case.get("extras", (0, 0))
            mailbox.next_action_on = case.get("due", CHARGE_DAY)
            if case.get("notified", True):
                mark_charge_notice_sent(session, mailbox)
            ids[name] = mailbox.id
        session.flush()
        for name in ("retry", "unresolved"):
            mailbox = session.get(Mailbox, ids[name])
            session.execute(
                text(
                    "INSERT INTO charge_intents (mailbox_id, cycle_expires_on, attempt, idempotency_key, amount_cents,"
                    " currency, payment_method, years, status, business_date, created_at)"
                    " VALUES (:id, :cycle, 1, :key, 4880, 'EUR', 'pm_card_visa', 1, :status, :day, :at)"
                ),
                {
                    "id": mailbox.id, "cycle": EXPIRES, "key": charges.idempotency_key(mailbox.id, EXPIRES, 1),
                    "status": cases[name]["attempt_before"], "day": CHARGE_DAY, "at": at_morning(CHARGE_DAY),
                },
            )  # fmt: skip
        # The receipt's stage (-5d on the retry day) already used in this cycle's ledger: no receipt.
        session.add(
            NoticeLedgerEntry(
                mailbox_id=ids["stage_taken"], cycle_expires_on=EXPIRES, stage="-5d", kind="expiry-notice",
                business_date=CHARGE_DAY,
            )
        )  # fmt: skip
        # A message with the receipt's Message-ID already in the outbox (no ledger row): no receipt either.
        session.add(
            OutboxMessage(
                message_id=message_id_for(
                    [(ids["message_id_taken"], EXPIRES.isoformat(), "-5d")], "pec-provider.example",
                    installation_id=INSTALLATION,
                ),
                kind="charge-succeeded", stage="-5d", language="it", to_address="someone@example.it",
                business_date=CHARGE_DAY, context={}, status=OutboxStatus.PENDING.value, attempts=0,
                created_at=at_morning(CHARGE_DAY),
            )
        )  # fmt: skip
    return ids


def _snapshot(session_factory) -> dict[str, list[tuple]]:
    tables = {table.name: table for table in Base.metadata.sorted_tables}
    snapshot = {}
    with session_factory() as session:
        for name in TABLES[1:]:
            table = tables[name]
            columns = [c for c in table.c if (name, c.name) not in RANDOM_COLUMNS]
            snapshot[name] = [tuple(row) for row in session.execute(select(*columns).order_by(table.c.id))]
        # The JSON column keeps the text it was given: the same text, not only the same value.
        snapshot["outbox_context_text"] = session.scalars(
            text("SELECT CAST(context AS TEXT) FROM outbox_messages ORDER BY id")
        ).all()
    return snapshot


def _run_days(tmp_path, database_url: str, session_factory, *, fast: bool, caplog) -> dict:
    settings = make_settings(tmp_path, database_url=database_url)
    rt = Runtime(settings)
    rt.session_factory = session_factory
    ids = _seed(session_factory)
    sandbox = SandboxGateway(session_factory, clock=rt.clock)
    gateway = ChangingGateway(
        sandbox,
        session_factory,
        {
            ids["renewed_meanwhile"]: {"expires_on": date(2028, 3, 31)},  # a manual payment, say
            ids["switched_off_meanwhile"]: {"auto_renew": False},
        },
    )
    reports = []
    try:
        # The charge day, the same day again, and the retry day (the soft decline's retry, and the two
        # whose receipt's stage -5d is taken); every mailbox is offered each time.
        days = (CHARGE_DAY, CHARGE_DAY, CHARGE_DAY + timedelta(days=2))
        for day in days:
            caplog.clear()
            with caplog.at_level(logging.INFO, logger="worker"), time_machine.travel(at_morning(day), tick=False):
                result = charges.run_charges(
                    session_factory, gateway, list(ids.values()), today=day, clock=rt.clock,
                    mail_domain=rt.mail_domain, concurrency=1, fast=fast,
                )  # fmt: skip
            lines = sorted(
                record.getMessage()
                for record in caplog.records
                if record.name in ("worker.services.charges", "worker.gateways.sandbox") and record.levelno >= logging.INFO
            )
            reports.append((result.as_dict(), sorted(result.outbox_ids), dict(result.emails), lines))
    finally:
        rt.close()
    return {"ids": ids, "reports": reports, "rows": _snapshot(session_factory)}


def _check_the_cases_happened(outcome: dict) -> None:
    """The scenario reaches what it is for (so an equality of two empty results proves nothing)."""
    rows, ids = outcome["rows"], outcome["ids"]
    mailboxes = {row[0]: row for row in rows["mailboxes"]}
    column = list(Mailbox.__table__.c.keys()).index("expires_on")
    expires = {mailbox_id: row[column] for mailbox_id, row in mailboxes.items()}
    assert expires[ids["success"]] == date(2028, 3, 31)
    assert expires[ids["success_en_two_years"]] == date(2029, 3, 31)
    assert expires[ids["stage_taken"]] == expires[ids["message_id_taken"]] == date(2028, 3, 31)
    assert expires[ids["hard"]] == EXPIRES
    first_day = outcome["reports"][0][0]["outcomes"]
    assert first_day["succeeded"] >= 5 and first_day["failed"] >= 4 and first_day["retry"] >= 1
    assert first_day["succeeded-already-renewed"] == 1
    assert outcome["reports"][1][0]["gateway_charges"] == 0  # the same day again charges nothing
    receipts = [row for row in rows["notice_ledger"] if row[4] == "charge-succeeded"]
    assert {row[1] for row in receipts} >= {ids["success"], ids["paypal"], ids["retry"], ids["unresolved"]}
    assert ids["stage_taken"] not in {row[1] for row in receipts}
    assert ids["message_id_taken"] not in {row[1] for row in receipts}


@pytest.fixture
def fast_and_reference(tmp_path, database_url, session_factory, engine, caplog):
    fast = _run_days(tmp_path / "fast", database_url, session_factory, fast=True, caplog=caplog)
    with engine.begin() as connection:
        names = ", ".join(f'"{table.name}"' for table in Base.metadata.sorted_tables)
        connection.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
    reference = _run_days(tmp_path / "orm", database_url, make_session_factory(engine), fast=False, caplog=caplog)
    return fast, reference


def test_the_fast_path_is_taken_on_postgresql_only(session_factory, tmp_path):
    assert psycopg_engine(session_factory) is session_factory.kw["bind"]
    sqlite = make_engine(f"sqlite:///{tmp_path / 'charges.db'}")
    try:
        assert psycopg_engine(make_session_factory(sqlite)) is None
    finally:
        sqlite.dispose()


def test_the_fast_path_writes_the_rows_of_the_orm_path_on_postgresql(fast_and_reference):
    fast, reference = fast_and_reference
    _check_the_cases_happened(reference)
    assert fast["ids"] == reference["ids"]
    for name in TABLES:
        assert fast["rows"][name] == reference["rows"][name], name
    assert fast["reports"] == reference["reports"]


def test_the_fast_path_writes_the_rows_of_the_orm_path_on_sqlite(fast_and_reference, tmp_path, caplog):
    fast, _reference = fast_and_reference
    url = f"sqlite:///{tmp_path / 'charges.sqlite3'}"
    migrate.upgrade(url)
    engine = make_engine(url)
    try:
        factory = make_session_factory(engine)
        assert psycopg_engine(factory) is None  # SQLite: the ORM path
        on_sqlite = _run_days(tmp_path / "sqlite", url, factory, fast=True, caplog=caplog)
    finally:
        engine.dispose()
    assert on_sqlite["ids"] == fast["ids"]
    on_sqlite, on_postgresql = _outbox_by_message_id(on_sqlite), _outbox_by_message_id(fast)
    for name in TABLES:
        assert on_sqlite["rows"][name] == on_postgresql["rows"][name], name
    assert on_sqlite["reports"] == on_postgresql["reports"]


def _outbox_by_message_id(outcome: dict) -> dict:
    """Outbox ids replaced by Message-IDs: PostgreSQL's sequence also moves on an INSERT that
    does nothing (ON CONFLICT), SQLite's rowid does not, so the ids after one differ."""
    rows = outcome["rows"]
    message_ids = {row[0]: row[1] for row in rows["outbox_messages"]}
    renamed = dict(rows)
    renamed["outbox_messages"] = [row[1:] for row in rows["outbox_messages"]]
    at = list(NoticeLedgerEntry.__table__.c.keys()).index("outbox_message_id")
    renamed["notice_ledger"] = [(*row[:at], message_ids.get(row[at]), *row[at + 1 :]) for row in rows["notice_ledger"]]
    reports = [
        (summary, sorted(message_ids[i] for i in outbox_ids), emails, lines)
        for summary, outbox_ids, emails, lines in outcome["reports"]
    ]
    return {**outcome, "rows": renamed, "reports": reports}

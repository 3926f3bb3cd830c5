"""Every case of the charge work, on PostgreSQL and on SQLite.

The same days of the same mailboxes, one of each kind (a success, every decline, a lost
answer, no card, a charge notice still due, a retry, an unresolved intent, a mailbox
renewed or switched off while its charge is at the gateway, a receipt's stage or
Message-ID already taken), run on PostgreSQL, where each case must end as the rule says,
and on SQLite, where every row of every table the charges write, what each run reports,
and the charge log lines must be those of PostgreSQL: the charge work is one set of
SQLAlchemy statements, and the dialects' differences (``FOR UPDATE SKIP LOCKED``,
``RETURNING``, ``ON CONFLICT``) must not change what it does.
"""

from __future__ import annotations

import logging
from datetime import date, timedelta

import time_machine
from sqlalchemy import select, text, update

from tests.support.charges import CHARGE_DAY, EXPIRES, at_morning, mark_charge_notice_sent
from tests.support.factories import make_mailbox
from tests.support.outbox_rows import outbox_message
from tests.support.settings import make_settings
from worker.gateways.sandbox import SandboxGateway
from worker.mail.message_ids import INSTALLATION_ID_KEY, installation_id, message_id_for
from worker.rules.auto_renew import idempotency_key
from worker.services import charges
from worker.services.runtime import Runtime
from worker.store import migrate
from worker.store.db import make_engine, make_session_factory
from worker.store.models import (
    Base,
    ChargeIntent,
    Mailbox,
    NoticeLedgerEntry,
    OutboxMessage,
    OutboxStatus,
    WorkerState,
)

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

    def refund(self, **kwargs):
        return self._inner.refund(**kwargs)

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
                card_expires_on=case.get("card"),
                renewal_years=case.get("years", 1),
                extra_space_gb=case.get("extras", (0, 0))[0],
                extra_archive_gb=case.get("extras", (0, 0))[1],
                next_action_on=case.get("due", CHARGE_DAY),
            )
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
                    "id": mailbox.id,
                    "cycle": EXPIRES,
                    "key": idempotency_key(mailbox.id, EXPIRES, 1),
                    "status": cases[name]["attempt_before"],
                    "day": CHARGE_DAY,
                    "at": at_morning(CHARGE_DAY),
                },
            )
        # The receipt's stage (-5d on the retry day) already used in this cycle's ledger: no receipt.
        session.add(
            NoticeLedgerEntry(
                mailbox_id=ids["stage_taken"],
                cycle_expires_on=EXPIRES,
                stage="-5d",
                kind="expiry-notice",
                business_date=CHARGE_DAY,
            )
        )
        # A message with the receipt's Message-ID already in the outbox (no ledger row): no receipt either.
        session.add(
            outbox_message(
                message_id=message_id_for(
                    [(ids["message_id_taken"], EXPIRES.isoformat(), "-5d")],
                    "pec-provider.example",
                    installation_id=INSTALLATION,
                ),
                kind="charge-succeeded",
                stage="-5d",
                language="it",
                to_address="someone@example.it",
                business_date=CHARGE_DAY,
                context={},
                status=OutboxStatus.PENDING.value,
                attempts=0,
                created_at=at_morning(CHARGE_DAY),
            )
        )
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


def _run_days(tmp_path, database_url: str, session_factory, *, caplog) -> dict:
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
                    session_factory,
                    gateway,
                    list(ids.values()),
                    today=day,
                    clock=rt.clock,
                    mail_domain=rt.mail_domain,
                    concurrency=1,
                )
            lines = sorted(
                record.getMessage()
                for record in caplog.records
                if record.name.startswith(("worker.services.charges", "worker.gateways.sandbox"))
                and record.levelno >= logging.INFO
            )
            reports.append((result.as_dict(), sorted(result.outbox_ids), dict(result.emails), lines))
    finally:
        rt.close()
    return {"ids": ids, "reports": reports, "rows": _snapshot(session_factory)}


RENEWED = date(2028, 3, 31)
#: Each case at the end of the three days: its expiry, its intents (attempt, status), and the
#: charge emails in its cycle's ledger (stage, kind; the charge notice left out).
EXPECTED = {
    "success": (RENEWED, [(1, "succeeded")], {("-7d", "charge-succeeded")}),
    "success_en_two_years": (date(2029, 3, 31), [(1, "succeeded")], {("-7d", "charge-succeeded")}),
    "paypal": (RENEWED, [(1, "succeeded")], {("-7d", "charge-succeeded")}),
    "soft": (EXPIRES, [(1, "soft_decline"), (2, "soft_decline")], set()),
    "hard": (EXPIRES, [(1, "hard_decline")], {("-7d", "charge-failed")}),
    # Waiting for the holder's authentication: no charge-failed before the last charge day, no second attempt.
    "authentication": (EXPIRES, [(1, "requires_authentication")], set()),
    "unknown_token": (EXPIRES, [(1, "hard_decline")], {("-7d", "charge-failed")}),
    "timeout": (RENEWED, [(1, "succeeded")], {("-7d", "charge-succeeded")}),
    "no_method": (EXPIRES, [], {("-7d", "charge-failed")}),
    "not_told": (EXPIRES, [], set()),  # never charged before the charge notice (the scan sends it)
    "card_expiring": (RENEWED, [(1, "succeeded")], {("-7d", "charge-succeeded")}),
    # First charged on the retry day: attempt 2; the day's stage is taken, so no receipt.
    "stage_taken": (RENEWED, [(2, "succeeded")], {("-5d", "expiry-notice")}),
    "message_id_taken": (RENEWED, [(2, "succeeded")], set()),
    # Renewed by a manual payment while the charge was at the gateway: not moved twice, no receipt.
    "renewed_meanwhile": (RENEWED, [(1, "succeeded")], set()),
    # Auto-renew switched off while the charge was at the gateway: the charge service leaves it.
    "switched_off_meanwhile": (EXPIRES, [(1, "started")], set()),
    "retry": (RENEWED, [(1, "soft_decline"), (2, "succeeded")], {("-5d", "charge-succeeded")}),
    # In flight (younger than the reconcile minutes) on the charge day; looked up, then charged, two days later.
    "unresolved": (RENEWED, [(1, "succeeded")], {("-5d", "charge-succeeded")}),
}


def _cases(session_factory, ids: dict[str, int]) -> dict[str, tuple]:
    with session_factory() as session:
        expires = dict(session.execute(select(Mailbox.id, Mailbox.expires_on)).all())
        intents: dict[int, list] = {}
        for mailbox_id, attempt, status in session.execute(
            select(ChargeIntent.mailbox_id, ChargeIntent.attempt, ChargeIntent.status).order_by(
                ChargeIntent.mailbox_id, ChargeIntent.attempt
            )
        ):
            intents.setdefault(mailbox_id, []).append((attempt, status))
        ledger: dict[int, set] = {}
        for mailbox_id, stage, kind in session.execute(
            select(NoticeLedgerEntry.mailbox_id, NoticeLedgerEntry.stage, NoticeLedgerEntry.kind).where(
                NoticeLedgerEntry.cycle_expires_on == EXPIRES, NoticeLedgerEntry.kind != "charge-notice"
            )
        ):
            ledger.setdefault(mailbox_id, set()).add((stage, kind))
    return {
        name: (expires[mailbox_id], intents.get(mailbox_id, []), ledger.get(mailbox_id, set()))
        for name, mailbox_id in ids.items()
    }


def test_every_case_ends_as_the_rule_says_on_postgresql(tmp_path, database_url, session_factory, caplog):
    outcome = _run_days(tmp_path, database_url, session_factory, caplog=caplog)
    ids = outcome["ids"]
    assert _cases(session_factory, ids) == EXPECTED
    first_day, same_day_again, retry_day = (summary for summary, *_ in outcome["reports"])
    assert first_day["outcomes"] == {
        "succeeded": 5,
        "failed": 3,
        "authentication-required": 1,
        "retry": 2,
        "idle": 1,
        "succeeded-already-renewed": 1,
        "skipped": 4,
    }
    assert (first_day["gateway_charges"], first_day["gateway_lookups"], first_day["errors"]) == (11, 1, 0)
    assert (same_day_again["gateway_charges"], same_day_again["gateway_lookups"]) == (0, 0)
    assert (retry_day["gateway_charges"], retry_day["gateway_lookups"], retry_day["errors"]) == (5, 1, 0)
    # The gateway saw each attempt's key once (the retry case's first attempt was declined before these days).
    with session_factory() as session:
        keys = session.scalars(
            text("SELECT idempotency_key FROM sandbox_charges WHERE payment_method NOT LIKE 'refund:%'")
        ).all()
        # The charge that succeeded for a cycle renewed meanwhile went back, once, automatically.
        refunds = session.execute(text("SELECT kind, status, amount_cents FROM gateway_refunds")).all()
        assert [(kind, status) for kind, status, _ in refunds] == [("automatic", "succeeded")]
        assert (
            session.scalar(text("SELECT count(*) FROM sandbox_charges WHERE payment_method LIKE 'refund:sbx_ch_%'"))
            == 1
        )
        # The holder is told of it: payment-refunded about the mailbox's auto-renew charge.
        (told,) = session.scalars(select(OutboxMessage).where(OutboxMessage.kind == "payment-refunded")).all()
        assert told.context["refund"] == {
            "amount_cents": refunds[0].amount_cents,
            "kind": "automatic",
            "method": "card",
            "charge": True,
        }
        assert [mailbox["id"] for mailbox in told.context["mailboxes"]] == [ids["renewed_meanwhile"]]
    expected_keys = [
        idempotency_key(ids[name], EXPIRES, attempt)
        for name, (_expiry, attempts, _ledger) in EXPECTED.items()
        for attempt, _status in attempts
        if (name, attempt) != ("retry", 1)
    ]
    assert sorted(keys) == sorted(expected_keys)
    # Each receipt, charge-failed and authentication email is in the outbox, as the runs reported.
    emails = [summary_emails for _summary, _ids, summary_emails, _lines in outcome["reports"]]
    assert emails[0] == {
        ("charge-succeeded", "-7d"): 5,
        ("charge-failed", "-7d"): 3,
        ("charge-authentication-required", "-7d"): 1,
    }
    assert emails[2] == {("charge-succeeded", "-5d"): 2}


def test_sqlite_writes_the_rows_postgresql_writes(tmp_path, database_url, session_factory, caplog):
    on_postgresql = _run_days(tmp_path / "postgresql", database_url, session_factory, caplog=caplog)
    url = f"sqlite:///{tmp_path / 'charges.sqlite3'}"
    migrate.upgrade(url)
    sqlite = make_engine(url)
    try:
        factory = make_session_factory(sqlite)
        on_sqlite = _run_days(tmp_path / "sqlite", url, factory, caplog=caplog)
        assert _cases(factory, on_sqlite["ids"]) == EXPECTED
    finally:
        sqlite.dispose()
    assert on_sqlite["ids"] == on_postgresql["ids"]
    on_sqlite, on_postgresql = _outbox_by_message_id(on_sqlite), _outbox_by_message_id(on_postgresql)
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

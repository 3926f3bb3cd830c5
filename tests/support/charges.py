"""Auto-renew mailboxes, the days they are charged on, and what the gateway and the SMTP server saw.

Its ``runtime`` fixture (registered in ``tests/conftest.py``) mails to the loopback SMTP server;
the web tests define their own.
"""

from __future__ import annotations

import email
import email.policy
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
import time_machine
from sqlalchemy import select

from tests.support.factories import make_mailbox
from tests.support.settings import make_settings
from worker.gateways.sandbox import list_charges
from worker.rules import auto_renew
from worker.services import charges
from worker.services.daily import run_day
from worker.services.runtime import Runtime
from worker.store.models import Mailbox, NoticeLedgerEntry

ROME = ZoneInfo("Europe/Rome")
EXPIRES = date(2027, 3, 31)
CHARGE_DAY = date(2027, 3, 24)


def at_morning(day: date) -> datetime:
    return datetime.combine(day, time(6, 0), tzinfo=ROME)


def build_runtime(tmp_path, database_url, session_factory, smtp_server, **overrides) -> Runtime:
    settings = make_settings(
        tmp_path,
        database_url=database_url,
        mail_backend="smtp",
        smtp_host=smtp_server.host,
        smtp_port=smtp_server.port,
        **overrides,
    )
    rt = Runtime(settings)
    rt.session_factory = session_factory
    return rt


def received(smtp_server):
    return [email.message_from_bytes(m.data, policy=email.policy.default) for m in smtp_server.messages]


def run_on(rt: Runtime, day: date):
    with time_machine.travel(at_morning(day), tick=False):
        return run_day(rt, day)


def mark_charge_notice_sent(session, mailbox: Mailbox) -> None:
    """As if this cycle's charge notice went out on its day (tests that start at the charge)."""
    # A cycle that an import forced back to an earlier expiry may have had its notice already.
    sent = session.scalar(
        select(NoticeLedgerEntry.id).where(
            NoticeLedgerEntry.mailbox_id == mailbox.id,
            NoticeLedgerEntry.cycle_expires_on == mailbox.expires_on,
            NoticeLedgerEntry.stage == charges.CHARGE_NOTICE_STAGE.name,
        )
    )
    if sent is not None:
        return
    session.add(
        NoticeLedgerEntry(
            mailbox_id=mailbox.id,
            cycle_expires_on=mailbox.expires_on,
            stage=auto_renew.CHARGE_NOTICE_STAGE.name,
            kind=auto_renew.CHARGE_NOTICE,
            business_date=auto_renew.CHARGE_NOTICE_STAGE.on(mailbox.expires_on),
        )
    )


def add_auto_renew(
    rt: Runtime, token: str | None, *, expires_on: date = EXPIRES, notified: bool = False, **kwargs
) -> Mailbox:
    with rt.session_factory() as session, session.begin():
        mailbox = make_mailbox(session, expires_on=expires_on, auto_renew=True, payment_method=token, **kwargs)
        if notified:
            mark_charge_notice_sent(session, mailbox)
        return mailbox


def walk(rt: Runtime, smtp_server, first: date, last: date) -> list[tuple[date, str, str]]:
    """Run every day from ``first`` to ``last``; the emails sent, as (day, kind, stage)."""
    sent = []
    day = first
    while day <= last:
        before = len(smtp_server.messages)
        run_on(rt, day)
        for message in received(smtp_server)[before:]:
            sent.append((day, message["X-PEC-Renewal-Kind"], message["X-PEC-Renewal-Stage"]))
        day += timedelta(days=1)
    return sent


def gateway_record(rt: Runtime) -> list[dict]:
    return list_charges(rt.session_factory)


def text_of(message) -> str:
    return message.get_body(("plain",)).get_content()


@pytest.fixture
def runtime(tmp_path, database_url, session_factory, smtp_server):
    rt = build_runtime(tmp_path, database_url, session_factory, smtp_server)
    yield rt
    rt.close()

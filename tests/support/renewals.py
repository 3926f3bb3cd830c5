"""Renewals made here, through the real services: an order paid by bank transfer, an auto-renew charge."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

from sqlalchemy import select

from tests.support.charges import mark_charge_notice_sent
from worker.gateways.sandbox import SandboxGateway
from worker.rules.links import MAILBOX, RenewalLink
from worker.rules.schedule import DEFAULT_STAGES
from worker.services import charges, orders, payments
from worker.services.orders import MailboxChoice
from worker.store.models import Mailbox, RenewalOrder

#: The domain of the Message-IDs of the emails the charge work writes.
MAIL_DOMAIN = "pec-provider.example"
#: The mailbox the renewals are made for unless told otherwise.
ADDRESS = "user1@pec.example.it"


def at(day: date) -> datetime:
    """9:00 UTC of ``day``: the moment a renewal step of that business day happens."""
    return datetime.combine(day, time(9, 0), tzinfo=UTC)


def the_mailbox(session, address: str = ADDRESS) -> Mailbox:
    return session.scalars(select(Mailbox).where(Mailbox.address == address)).one()


def place_order(
    session_factory,
    settings,
    *,
    plan: str,
    years: int,
    today: date,
    address: str = ADDRESS,
    method: str = "bank_transfer",
) -> RenewalOrder:
    """An order confirmed from the mailbox's link, as the holder makes it on the link pages."""
    with session_factory() as session:
        box = the_mailbox(session, address)
        now = at(today)
        order = orders.start_order(session, RenewalLink(MAILBOX, box.id, box.expires_on), today, now)
        choice = MailboxChoice(box.id, plan, 0, 0, confirm_archive_deletion=True)
        orders.choose_mailboxes(session, order, [choice], today)
        orders.set_holder(session, order, orders.holder_form_data(order))
        orders.choose_payment(session, order, method, years, today)
        orders.accept_terms(session, order, now)
        orders.confirm_order(session, order, now=now, today=today, settings=settings)
        session.commit()
        return order


def register(session_factory, settings, order: RenewalOrder, today: date) -> payments.RegistrationResult:
    """The order's bank transfer, registered on ``today``."""
    with session_factory() as session:
        result = payments.register_payment(
            session,
            order_number=order.order_number,
            amount_cents=order.total_cents,
            method="bank_transfer",
            reference=f"CRO {order.order_number}",
            now=at(today),
            today=today,
            settings=settings,
        )
        session.commit()
        return result


def charge(session_factory, address: str, today: date, gateway=None, seller=None) -> charges.ChargeRun:
    """One auto-renew mailbox's charge work of the day, after its charge notice went out, committed without
    the batch's numbering step (as when the process dies between the two)."""
    mailbox_id = _due(session_factory, address, today)
    return charges.charge_mailbox(
        session_factory,
        gateway or SandboxGateway(session_factory),
        mailbox_id,
        today=today,
        clock=lambda: at(today),
        stages=DEFAULT_STAGES,
        mail_domain=MAIL_DOMAIN,
        seller=seller,
    )


def charge_batch(session_factory, addresses: list[str], today: date, seller=None, concurrency: int = 1):
    """A charge batch of these auto-renew mailboxes (after their charge notices), numbering step included."""
    return charges.run_charges(
        session_factory,
        SandboxGateway(session_factory),
        [_due(session_factory, address, today) for address in addresses],
        today=today,
        clock=lambda: at(today),
        stages=DEFAULT_STAGES,
        mail_domain=MAIL_DOMAIN,
        seller=seller,
        concurrency=concurrency,
    )


def _due(session_factory, address: str, today: date) -> int:
    with session_factory() as session, session.begin():
        box = the_mailbox(session, address)
        if box.expires_on - today <= timedelta(days=30):
            mark_charge_notice_sent(session, box)
        return box.id

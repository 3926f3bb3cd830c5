"""Registering a payment: the step that completes a renewal.

:func:`register_payment` registers one payment of a confirmed order, by hand
(``pec-renewal payments register``), from a bank statement, or after a
successful gateway charge.  It is idempotent by ``(order, reference)``: the
same payment registered twice is registered once.  A wrong amount, an unknown
or unconfirmed order, an order already paid by another payment, or a mailbox
renewed or deleted since the order: refused with :class:`PaymentRefused`, and
nothing changes.

On registration each mailbox's expiry moves forward by the order's years from
its OLD expiry (29 February goes to 28 February), the plan and extras take
effect (a move to Standard drops the archive), the holder data confirmed in
the order takes effect, card and PayPal store the payment method and switch
auto-renew on with the chosen frequency, ``next_action_on`` restarts at the
first stage of the new cycle, a ``renewal-completed`` email is queued (an
``order-confirmation`` of the order still waiting in the outbox is withdrawn), and the
platform's events are written (``mailbox.renewed``, and ``mailbox.plan_changed``,
``mailbox.reactivated`` and ``auto_renew.changed`` where they apply).
Old links then show "already renewed", since the expiry moved on.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from config.settings import Settings
from worker.events.queue import paid_by_order, renewal_events, write_events
from worker.rules import einvoice, pricing, schedule
from worker.rules.holder_data import HolderData
from worker.rules.schedule import Stage
from worker.rules.vocabulary import GATEWAY_METHODS, PAYMENT_METHODS, Plan
from worker.services import invoices
from worker.services.orders import HOLDER_FIELDS, RENEWAL_COMPLETED, queue_order_email, withdraw_confirmation
from worker.services.orders.summary import split_payment
from worker.services.platform_events import set_auto_renew
from worker.store.models import (
    Holder,
    Mailbox,
    OrderStatus,
    Payment,
    RenewalOrder,
    RenewalOrderLine,
)

REFERENCE_MAX = 200


class PaymentRefused(Exception):
    """The payment cannot be registered; nothing changed.  ``code`` names why, ``str()`` says it."""

    def __init__(self, code: str, message: str, *, order_number: str | None = None):
        self.code = code
        self.order_number = order_number
        super().__init__(message)


@dataclass(frozen=True)
class RenewedMailbox:
    address: str
    old_expires_on: date
    new_expires_on: date
    plan: str


@dataclass(frozen=True)
class RegistrationResult:
    order_number: str
    #: False when this payment was already registered (nothing changed this time).
    registered: bool
    payment_id: int
    amount_cents: int
    method: str
    renewed: tuple[RenewedMailbox, ...] = ()


def register_payment(
    session: Session,
    *,
    order_number: str,
    amount_cents: int,
    method: str,
    reference: str,
    now: datetime,
    today: date,
    settings: Settings,
    stages: tuple[Stage, ...] | None = None,
    payment_token: str | None = None,
    card_expires_on: date | None = None,
) -> RegistrationResult:
    """Register one payment of a confirmed order; see the module's docstring.

    ``reference``: the bank's reference, the slip's number or the gateway's
    charge key; with the order it is the idempotency key.  ``payment_token``:
    for card / PayPal, the stored method to charge at the next renewals, and ``card_expires_on``
    its card's expiry when the gateway told it.
    ``stages``: the notice schedule (default ``settings.notice_stages``).
    Locks the order row, so two registrations of one order run one after the
    other.  The caller commits.
    """
    stages = settings.notice_stages if stages is None else stages
    number = (order_number or "").strip().upper()
    reference = " ".join((reference or "").split())[:REFERENCE_MAX]
    if method not in PAYMENT_METHODS:
        raise PaymentRefused("bad_method", f"{method!r} is not one of {', '.join(PAYMENT_METHODS)}")
    if not reference:
        raise PaymentRefused("bad_reference", "a payment needs a reference (the bank's, the slip's or the gateway's)")
    if not isinstance(amount_cents, int) or amount_cents <= 0:
        raise PaymentRefused("bad_amount", f"{amount_cents!r} is not a positive amount")
    order = session.scalar(select(RenewalOrder).where(RenewalOrder.order_number == number).with_for_update())
    if order is None:
        raise PaymentRefused("unknown_order", f"no order {number or '(empty)'}", order_number=number or None)
    existing = session.scalar(select(Payment).where(Payment.order_id == order.id, Payment.reference == reference))
    if existing is not None:
        if existing.amount_cents != amount_cents:
            raise PaymentRefused(
                "reference_reused",
                f"{number}: the reference {reference!r} was already registered for "
                f"{pricing.format_amount(existing.amount_cents)} EUR, not {pricing.format_amount(amount_cents)}",
                order_number=number,
            )
        return RegistrationResult(number, False, existing.id, existing.amount_cents, existing.method)
    _check_payable(order, number, amount_cents)
    lines = [line for line in order.lines if line.selected]
    mailboxes = {
        mailbox.id: mailbox
        for mailbox in session.scalars(
            select(Mailbox).where(Mailbox.id.in_([line.mailbox_id for line in lines])).with_for_update()
        )
    }
    for line in lines:
        _check_still_renewable(mailboxes[line.mailbox_id], line, number, today)
    holder = _holder_for(session, order)
    old_plans = {line.mailbox_id: mailboxes[line.mailbox_id].plan for line in lines}
    renewed = tuple(
        _renew(
            mailboxes[line.mailbox_id], line, order.years or 1, holder, method, payment_token, stages, card_expires_on
        )
        for line in lines
    )
    _tell_the_platform(session, lines, mailboxes, old_plans, method, payment_token, number, now=now, today=today)
    payment = Payment(
        order_id=order.id,
        method=method,
        amount_cents=amount_cents,
        reference=reference,
        registered_at=now,
        business_date=today,
    )
    session.add(payment)
    order.status = OrderStatus.PAID.value
    order.paid_at = now
    order.payment_method = method
    session.flush()
    invoice = _invoice(session, order, lines, mailboxes, holder or order.holder, payment, settings)
    # An "awaiting payment" confirmation not sent yet would now be false (a card paid at the
    # checkout seconds after confirming): it is withdrawn, and renewal-completed says it all.
    withdraw_confirmation(session, order, settings)
    queue_order_email(
        session, order, RENEWAL_COMPLETED, now=now, today=today, settings=settings, extra={"invoice": invoice}
    )
    return RegistrationResult(number, True, payment.id, amount_cents, method, renewed)


def _invoice(
    session: Session,
    order: RenewalOrder,
    lines: list[RenewalOrderLine],
    mailboxes: dict[int, Mailbox],
    holder: Holder,
    payment: Payment,
    settings: Settings,
) -> dict[str, Any]:
    """The order's invoice, from the holder data as confirmed, in this transaction; its courtesy copy."""
    priced = pricing.price_order(
        [
            pricing.LineInput(mailboxes[line.mailbox_id].address, line.plan, line.extra_space_gb, line.extra_archive_gb)
            for line in lines
        ],
        order.years or 1,
        split_payment=split_payment(order),
    )
    invoice_lines = einvoice.lines_for(
        priced.lines, {mailboxes[line.mailbox_id].address: line.old_expires_on for line in lines}
    )
    buyer = invoices.buyer_from_holder(holder, split_payment=split_payment(order))
    record = invoices.record_invoice(
        session.connection(),
        seller=settings.seller,
        buyer=buyer,
        lines=invoice_lines,
        paid_cents=payment.amount_cents,
        payment_method=payment.method,
        reference=order.order_number or "",
        mailbox_id=lines[0].mailbox_id,
        today=payment.business_date,
        now=payment.registered_at,
        order_id=order.id,
    )
    # Numbered in this transaction (a registration is rare: the year's counter is held to its commit).
    record = next((done for done in invoices.number_pending_invoices(session) if done.id == record.id), record)
    document = einvoice.InvoiceDocument(
        einvoice.INVOICE,
        record.document_number or "",
        record.issued_on or payment.business_date,
        buyer,
        invoice_lines,
        einvoice.totals_of(invoice_lines),
        payment.method,
        order.order_number or "",
    )
    return invoices.courtesy_copy(record, settings.seller, document)


def _check_payable(order: RenewalOrder, number: str, amount_cents: int) -> None:
    """Refuse a payment of an order already paid, not confirmed (or cancelled), or of another amount."""
    if order.status == OrderStatus.PAID.value:
        raise PaymentRefused(
            "already_paid",
            f"{number} is already paid (on {order.paid_at:%Y-%m-%d}); this payment was not registered: refund it",
            order_number=number,
        )
    if order.status != OrderStatus.AWAITING_PAYMENT.value:
        raise PaymentRefused("not_payable", f"{number} is {order.status}, not awaiting payment", order_number=number)
    if amount_cents != order.total_cents:
        raise PaymentRefused(
            "wrong_amount",
            f"{number}: the amount is {pricing.format_amount(amount_cents)} EUR but the order's total is "
            f"{pricing.format_amount(order.total_cents or 0)} EUR; nothing registered",
            order_number=number,
        )


def _check_still_renewable(mailbox: Mailbox, line: RenewalOrderLine, number: str, today: date) -> None:
    """Refuse a payment for a mailbox renewed since the order, moved onto a domain, or deleted."""
    if mailbox.expires_on != line.old_expires_on:
        raise PaymentRefused(
            "mailbox_changed",
            f"{number}: {mailbox.address} expires on {mailbox.expires_on}, not {line.old_expires_on} as when "
            "ordered (renewed by another order?); nothing registered",
            order_number=number,
        )
    if mailbox.domain_id is not None:
        raise PaymentRefused("on_domain", f"{number}: {mailbox.address} is on a domain", order_number=number)
    if schedule.mailbox_state(mailbox.expires_on, today) is schedule.MailboxState.DELETED:
        raise PaymentRefused(
            "mailbox_deleted",
            f"{number}: {mailbox.address} was deleted on {schedule.deletion_date(mailbox.expires_on)} and "
            "cannot be renewed; nothing registered: refund the payment",
            order_number=number,
        )


def _renew(
    mailbox: Mailbox,
    line: RenewalOrderLine,
    years: int,
    holder: Holder | None,
    method: str,
    payment_token: str | None,
    stages: tuple[Stage, ...],
    card_expires_on: date | None = None,
) -> RenewedMailbox:
    """The order line takes effect on its mailbox: the new expiry, plan and extras, holder, auto-renew."""
    new_expires_on = schedule.add_years(line.old_expires_on, years)
    mailbox.expires_on = new_expires_on
    mailbox.plan = line.plan
    mailbox.extra_space_gb = line.extra_space_gb
    mailbox.extra_archive_gb = line.extra_archive_gb if line.plan != Plan.STANDARD.value else 0
    mailbox.renewal_years = years
    if method in GATEWAY_METHODS and payment_token:
        if mailbox.payment_method != payment_token:
            mailbox.card_expires_on = card_expires_on  # None: not known for a new token
        mailbox.payment_method = payment_token
    mailbox.next_action_on = schedule.first_action_on(stages, new_expires_on)
    if holder is not None:
        mailbox.holder_id = holder.id
        mailbox.reference_email = holder.reference_email
    line.new_expires_on = new_expires_on
    return RenewedMailbox(mailbox.address, line.old_expires_on, new_expires_on, line.plan)


def _tell_the_platform(
    session: Session,
    lines: list[RenewalOrderLine],
    mailboxes: dict[int, Mailbox],
    old_plans: dict[int, str],
    method: str,
    payment_token: str | None,
    number: str,
    *,
    now: datetime,
    today: date,
) -> None:
    """The platform's events of the renewed mailboxes, and auto-renew switched on by a card or PayPal."""
    events = []
    for line in lines:
        mailbox = mailboxes[line.mailbox_id]
        assert line.new_expires_on is not None
        events += renewal_events(
            mailbox_id=mailbox.id,
            address=mailbox.address,
            old_expires_on=line.old_expires_on,
            new_expires_on=line.new_expires_on,
            old_plan=old_plans[mailbox.id],
            plan=mailbox.plan,
            extra_space_gb=mailbox.extra_space_gb,
            extra_archive_gb=mailbox.extra_archive_gb,
            years=mailbox.renewal_years,
            paid_by=paid_by_order(number),
            today=today,
        )
    write_events(session, events, now=now, business_date=today)
    if method in GATEWAY_METHODS and payment_token:
        for line in lines:
            set_auto_renew(session, mailboxes[line.mailbox_id], True, source="payment", now=now, today=today)


def _holder_for(session: Session, order: RenewalOrder) -> Holder | None:
    """The holder row for the data confirmed in the order (found or created), or None if unchanged."""
    if not order.holder_data:
        return None
    data = HolderData(**{name: order.holder_data.get(name) for name in HOLDER_FIELDS})
    current = order.holder
    if all(getattr(current, name) == getattr(data, name) for name in HOLDER_FIELDS):
        return None
    key = data.holder_key
    holder = session.scalar(select(Holder).where(Holder.account_id == order.account_id, Holder.holder_key == key))
    if holder is None:
        holder = Holder(
            account_id=order.account_id, holder_key=key, **{name: getattr(data, name) for name in HOLDER_FIELDS}
        )
        session.add(holder)
        session.flush()
    return holder

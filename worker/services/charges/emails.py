"""What the auto-renew emails carry, and how one is written for one mailbox.

The ``charge`` part of an email's context is plain data (amounts in cents, dates in ISO
form, the payment method already masked): the relay renders it later from the outbox row.
The functions read a mailbox through the attributes of :class:`MailboxFacts`, which an
ORM ``Mailbox`` and a row of the charge service's or the scan's selects both have.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import Connection, insert, or_, select
from sqlalchemy.orm import Session

from worker.gateways import describe_payment_method
from worker.mail.queue import NewEmail, queue_email
from worker.rules import pricing, schedule
from worker.rules.auto_renew import DEFAULT_CHARGE_PLAN, ChargePlan, charge_on
from worker.rules.schedule import Stage
from worker.rules.vocabulary import CARD, PAYPAL, PUBLIC_ADMINISTRATION
from worker.services.orders.summary import split_payment
from worker.store.models import ChargeIntent, GatewayRefund, Mailbox, NoticeLedgerEntry

_INSERT_LEDGER = insert(NoticeLedgerEntry.__table__)


class MailboxFacts(Protocol):
    """What the emails read of a mailbox."""

    @property
    def id(self) -> int: ...
    @property
    def address(self) -> str: ...
    @property
    def plan(self) -> str: ...
    @property
    def extra_space_gb(self) -> int | None: ...
    @property
    def extra_archive_gb(self) -> int | None: ...
    @property
    def renewal_years(self) -> int | None: ...
    @property
    def expires_on(self) -> date: ...
    @property
    def payment_method(self) -> str | None: ...
    @property
    def card_expires_on(self) -> date | None: ...
    @property
    def language(self) -> str: ...
    @property
    def holder_kind(self) -> str: ...


class Recipient(MailboxFacts, Protocol):
    """A mailbox an email is written about: also where it goes, and whom it greets."""

    @property
    def reference_email(self) -> str: ...
    @property
    def holder_name(self) -> str: ...


def charge_price(
    mailbox: MailboxFacts, years: int | None = None, plan: ChargePlan = DEFAULT_CHARGE_PLAN
) -> pricing.OrderSummary:
    """The renewal's price for the mailbox's current plan and extras, VAT (22%) included in the total;
    a public administration's total is the taxable amount under split payment
    (``plan.split_payment_for_pa``), as its orders are: it pays the VAT to the Treasury itself."""
    line = pricing.LineInput(mailbox.address, mailbox.plan, mailbox.extra_space_gb or 0, mailbox.extra_archive_gb or 0)
    split = plan.split_payment_for_pa and mailbox.holder_kind == PUBLIC_ADMINISTRATION
    return pricing.price_order([line], years or mailbox.renewal_years or 1, split_payment=split)


def charge_context(
    mailbox: MailboxFacts,
    *,
    cycle_expires_on: date | None = None,
    today: date | None = None,
    plan: ChargePlan = DEFAULT_CHARGE_PLAN,
    **extra: Any,
) -> dict[str, Any]:
    """The ``charge`` part of an auto-renew email's context: plain data, the method already masked.

    With ``today``, the charge date shown is never before tomorrow (a late charge notice).
    """
    cycle = cycle_expires_on or mailbox.expires_on
    charge_day = charge_on(cycle, plan)
    if today is not None:
        charge_day = max(charge_day, today + timedelta(days=1))
    price = charge_price(mailbox, plan=plan)
    context = {
        "amount_cents": price.total_cents,
        "subtotal_cents": price.subtotal_cents,
        "vat_cents": price.vat_cents,
        "vat_percent": price.vat_percent,
        "split_payment": price.split_payment,
        "years": price.years,
        "charge_on": charge_day.isoformat(),
        "method": describe_payment_method(mailbox.payment_method, mailbox.language),
        "card_expires_on": mailbox.card_expires_on.isoformat() if mailbox.card_expires_on else None,
        "new_expires_on": schedule.add_years(cycle, price.years).isoformat(),
    }
    context.update(extra)
    return context


def receipt_context(
    mailbox: MailboxFacts,
    *,
    cycle_expires_on: date,
    years: int,
    amount_cents: int,
    charged_on: date,
    reference: str | None,
    plan: ChargePlan = DEFAULT_CHARGE_PLAN,
) -> dict[str, Any]:
    """The ``charge`` part of a charge-succeeded email: what the charge paid for its cycle."""
    return _charged_context(
        mailbox, cycle_expires_on, years, amount_cents, plan, charged_on=charged_on.isoformat(), reference=reference
    )


def _charged_context(
    mailbox: MailboxFacts, cycle_expires_on: date, years: int, amount_cents: int, plan: ChargePlan, **extra: Any
) -> dict[str, Any]:
    """The ``charge`` part of an email about a charge of ``amount_cents`` for ``years`` of the
    cycle ending on ``cycle_expires_on``: its amount split into taxable and VAT, and the expiry
    it buys; ``extra`` adds the email's own fields."""
    price = charge_price(mailbox, years, plan)
    return charge_context(
        mailbox,
        cycle_expires_on=cycle_expires_on,
        plan=plan,
        amount_cents=amount_cents,
        subtotal_cents=price.subtotal_cents,
        # Under split payment the VAT is not in the amount: the administration pays it to the Treasury.
        vat_cents=price.vat_cents if price.split_payment else amount_cents - price.subtotal_cents,
        years=years,
        new_expires_on=schedule.add_years(cycle_expires_on, years).isoformat(),
        **extra,
    )


def failure_context(
    mailbox: MailboxFacts,
    *,
    cycle_expires_on: date,
    order: Any,
    reason: str,
    plan: ChargePlan = DEFAULT_CHARGE_PLAN,
) -> dict[str, Any]:
    """The ``charge`` part of a charge-failed email: why, and the unpaid renewal order it leads to
    (its number, amounts and years)."""
    return charge_context(
        mailbox,
        cycle_expires_on=cycle_expires_on,
        plan=plan,
        amount_cents=order.total_cents,
        subtotal_cents=order.subtotal_cents,
        vat_cents=order.vat_cents,
        split_payment=split_payment(order),
        years=order.years,
        reason=reason,
        order_number=order.order_number,
    )


def skipped_context(
    mailbox: MailboxFacts, *, order: Any, today: date, plan: ChargePlan = DEFAULT_CHARGE_PLAN
) -> dict[str, Any]:
    """The ``charge`` part of a charge-skipped email: the holder's order awaiting payment (its
    number, amount, years and method), and the last day on which cancelling it still lets the
    charge be made (the day before the last charge day: the charge runs on the day after)."""
    cancel_by = mailbox.expires_on - timedelta(days=min(plan.charge_days) + 1)
    return charge_context(
        mailbox,
        plan=plan,
        amount_cents=order.total_cents,
        subtotal_cents=order.subtotal_cents,
        vat_cents=order.vat_cents,
        split_payment=split_payment(order),
        years=order.years,
        order_number=order.order_number,
        order_method=order.payment_method,
        charge_on=today.isoformat(),
        cancel_by=cancel_by.isoformat(),
        new_expires_on=schedule.add_years(mailbox.expires_on, order.years).isoformat(),
    )


def authentication_context(
    mailbox: MailboxFacts,
    *,
    cycle_expires_on: date,
    intent_id: int,
    years: int,
    amount_cents: int,
    authenticate_by: date,
    plan: ChargePlan = DEFAULT_CHARGE_PLAN,
) -> dict[str, Any]:
    """The ``charge`` part of a charge-authentication-required email: the charge waiting (its
    intent, whose signed link the relay writes), and the day it is given up."""
    return _charged_context(
        mailbox,
        cycle_expires_on,
        years,
        amount_cents,
        plan,
        intent_id=intent_id,
        authenticate_by=authenticate_by.isoformat(),
    )


def mailbox_context(mailbox: MailboxFacts, cycle_expires_on: date) -> dict[str, Any]:
    return {
        "id": mailbox.id,
        "address": mailbox.address,
        "expires_on": cycle_expires_on.isoformat(),
        "plan": mailbox.plan,
        "domain": None,
    }


def method_kind(token: str) -> str:
    """The payment method of a stored token: PayPal's billing agreements, or else a card."""
    return PAYPAL if describe_payment_method(token, "it") == "PayPal" else CARD


#: What the outbox names the ``payment-refunded`` email of a charge: not a stage of the schedule.
REFUND_EMAIL_STAGE = "0d"


def queue_charge_refund_email(
    session: Session, refund: GatewayRefund, *, mail_domain: str, today: date, now: datetime
) -> int | None:
    """``payment-refunded`` about the auto-renew charge ``refund`` gave back (a charge of a mailbox
    renewed meanwhile), to the mailbox's reference address, in the caller's transaction.

    The charge is found by the refund's payment reference (the gateway's charge id, or its
    idempotency key); the Message-ID is the refund's own (``resend``), so asking again writes
    nothing.  No ledger row: the email is no stage of the cycle.  Returns the outbox id, or None.
    """
    intent = session.scalar(
        select(ChargeIntent).where(
            or_(
                ChargeIntent.reference == refund.payment_reference,
                ChargeIntent.idempotency_key == refund.payment_reference,
            )
        )
    )
    if intent is None:
        return None
    mailbox = session.get(Mailbox, intent.mailbox_id)
    if mailbox is None:
        return None
    queued = queue_email(
        session,
        NewEmail(
            about=[(mailbox.id, intent.cycle_expires_on.isoformat(), REFUND_EMAIL_STAGE)],
            kind="payment-refunded",
            stage=REFUND_EMAIL_STAGE,
            language=mailbox.language,
            to_address=mailbox.reference_email.lower(),
            context={
                "holder_name": mailbox.holder.name,
                "holder_kind": mailbox.holder.kind,
                "mailboxes": [mailbox_context(mailbox, intent.cycle_expires_on)],
                "refund": {
                    "amount_cents": refund.amount_cents,
                    "kind": refund.kind,
                    "method": method_kind(intent.payment_method),
                    "charge": True,
                },
            },
            resend=f"refund-{refund.id}",
        ),
        mail_domain=mail_domain,
        business_date=today,
        now=now,
    )
    return None if queued is None else queued.id


def queue_mailbox_email(
    connection: Connection,
    mailbox: Recipient,
    *,
    cycle_expires_on: date,
    stage: Stage,
    kind: str,
    context: dict[str, Any],
    today: date,
    now: datetime,
    mail_domain: str,
) -> int | None:
    """Write one email about one mailbox's cycle: its outbox row (through the outbox's one
    writer, :func:`worker.mail.queue.queue_email`) and its ledger row, in the caller's transaction.

    The caller has checked that the cycle's ledger does not hold ``stage`` (the ledger's key
    is unique: a row written meanwhile fails the transaction).  Returns the outbox id, or
    None when the outbox already holds the email's Message-ID: nothing is written then.
    """
    queued = queue_email(
        connection,
        NewEmail(
            about=[(mailbox.id, cycle_expires_on.isoformat(), stage.name)],
            kind=kind,
            stage=stage.name,
            language=mailbox.language,
            to_address=mailbox.reference_email.lower(),
            context={
                "holder_name": mailbox.holder_name,
                "holder_kind": mailbox.holder_kind,
                "mailboxes": [mailbox_context(mailbox, cycle_expires_on)],
                **context,
            },
        ),
        mail_domain=mail_domain,
        business_date=today,
        now=now,
    )
    if queued is None:
        return None
    connection.execute(
        _INSERT_LEDGER,
        {
            "mailbox_id": mailbox.id,
            "cycle_expires_on": cycle_expires_on,
            "stage": stage.name,
            "kind": kind,
            "business_date": today,
            "outbox_message_id": queued.id,
        },
    )
    return queued.id


def queue_authentication_email(
    connection: Connection,
    mailbox: Recipient,
    *,
    cycle_expires_on: date,
    stage: Stage,
    attempt: int,
    context: dict[str, Any],
    today: date,
    now: datetime,
    mail_domain: str,
) -> int | None:
    """Write the charge-authentication-required email of one charge attempt: its outbox row only.

    The charge's intent is its record (its move to ``requires_authentication`` happens once), so
    it takes no ledger row: the day's stage stays free for the receipt once the holder
    authenticates.  Its Message-ID is the day's ledger key with the attempt as resend nonce, one
    of its own.  Returns the outbox id, or None when that Message-ID is already queued.
    """
    queued = queue_email(
        connection,
        NewEmail(
            about=[(mailbox.id, cycle_expires_on.isoformat(), stage.name)],
            kind="charge-authentication-required",
            stage=stage.name,
            language=mailbox.language,
            to_address=mailbox.reference_email.lower(),
            context={
                "holder_name": mailbox.holder_name,
                "holder_kind": mailbox.holder_kind,
                "mailboxes": [mailbox_context(mailbox, cycle_expires_on)],
                **context,
            },
            resend=f"authentication-{attempt}",
        ),
        mail_domain=mail_domain,
        business_date=today,
        now=now,
    )
    return None if queued is None else queued.id


__all__ = [
    "MailboxFacts",
    "authentication_context",
    "queue_authentication_email",
    "Recipient",
    "charge_context",
    "charge_price",
    "failure_context",
    "mailbox_context",
    "method_kind",
    "queue_charge_refund_email",
    "queue_mailbox_email",
    "receipt_context",
    "skipped_context",
]

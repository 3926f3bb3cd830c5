"""The operator's desk: one mailbox in full, a notice sent again, orders listed or cancelled, a fresh link.

Every function takes an open session and the time (``today``, ``now``) as
arguments; the caller commits.  A request that cannot be met raises
:class:`DeskRefused`, whose text is the one line the command prints, and
nothing is written.  ``pec-renewal mailbox show``, ``notices resend``,
``orders list``, ``orders cancel`` and ``links issue`` (``worker/cli/desk.py``)
are thin layers over this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from sqlalchemy import exists, func, select
from sqlalchemy.orm import Session, joinedload, selectinload

from config.settings import Settings
from worker.gateways import describe_payment_method, mask_token
from worker.mail.queue import NewEmail, queue_email
from worker.rules import pricing, schedule
from worker.rules.links import LinkSigner
from worker.rules.schedule import Stage
from worker.services import charges, orders, reminders
from worker.services.report import mailbox_steps
from worker.store.models import (
    ChargeIntent,
    Mailbox,
    NoticeLedgerEntry,
    OrderStatus,
    OutboxMessage,
    OutboxStatus,
    RenewalOrder,
    RenewalOrderLine,
)

#: Order statuses, for ``orders list --status``.
ORDER_STATUSES = tuple(status.value for status in OrderStatus)
#: Gateway states of an order whose card / PayPal payment has no final answer yet.
UNRESOLVED_GATEWAY_STATES = charges.UNRESOLVED
#: The key, in a re-sent message's context, of the outbox message it replaces.
RESEND_OF = "resend_of"
#: A notice's status when the renderer refused its mailbox (``notice_ledger.refused_reason``).
REFUSED = "refused"


class DeskRefused(Exception):
    """The request cannot be met; ``str()`` says why in one line.  Nothing was written."""


class NoSuchMailbox(DeskRefused):
    """No mailbox has this address."""


class LinkRefused(DeskRefused):
    """The mailbox cannot be renewed with a link: ``reason`` is ``on_domain`` or ``deleted``."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


# -- Finding a mailbox ---------------------------------------------------------------------------


def normalise_address(address: str) -> str:
    return (address or "").strip().lower()


def find_mailbox(session: Session, address: str, *, for_update: bool = False) -> Mailbox:
    """The mailbox with this address (any case), with its holder, account and domain; or DeskRefused."""
    query = (
        select(Mailbox)
        .options(joinedload(Mailbox.holder), joinedload(Mailbox.account), joinedload(Mailbox.domain))
        .where(Mailbox.address == normalise_address(address))
    )
    if for_update:
        query = query.with_for_update(of=Mailbox)
    mailbox = session.scalars(query).first()
    if mailbox is None:
        raise NoSuchMailbox(f"no mailbox {normalise_address(address) or '(empty)'}")
    return mailbox


# -- mailbox show ----------------------------------------------------------------------------------


def _iso(value: date | datetime | None) -> str | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.isoformat(timespec="seconds")
    return value.isoformat()


def refused_reason(entry: NoticeLedgerEntry) -> str | None:
    """Why the renderer left this mailbox out of its email, or None."""
    return entry.refused_reason


def clear_refused_reason(entry: NoticeLedgerEntry) -> None:
    """A notice sent again is no longer refused (the mailbox's data was corrected first)."""
    entry.refused_reason = None


def _delivery(message: OutboxMessage) -> dict[str, Any]:
    return {
        "message_id": message.message_id,
        "to_address": message.to_address,
        "status": message.status,
        "attempts": message.attempts,
        "sent_at": _iso(message.sent_at),
        "created_at": _iso(message.created_at),
        "last_error": message.last_error,
    }


def _earlier_deliveries(session: Session, message: OutboxMessage | None) -> list[dict[str, Any]]:
    """The messages a re-sent notice replaced, newest first (each re-send names the one before)."""
    earlier = []
    seen = set()
    while message is not None and isinstance(message.context, dict):
        previous_id = message.context.get(RESEND_OF)
        if not isinstance(previous_id, int) or previous_id in seen:
            break
        seen.add(previous_id)
        message = session.get(OutboxMessage, previous_id)
        if message is not None:
            earlier.append(_delivery(message))
    return earlier


def _notices(session: Session, mailbox: Mailbox) -> list[dict[str, Any]]:
    rows = session.execute(
        select(NoticeLedgerEntry, OutboxMessage)
        .outerjoin(OutboxMessage, OutboxMessage.id == NoticeLedgerEntry.outbox_message_id)
        .where(NoticeLedgerEntry.mailbox_id == mailbox.id)
        .order_by(NoticeLedgerEntry.cycle_expires_on, NoticeLedgerEntry.business_date, NoticeLedgerEntry.id)
    ).all()
    notices = []
    for entry, message in rows:
        reason = refused_reason(entry)
        delivery = _delivery(message) if message is not None else {}
        notices.append(
            {
                "kind": entry.kind,
                "stage": entry.stage,
                "cycle_expires_on": _iso(entry.cycle_expires_on),
                "business_date": _iso(entry.business_date),
                "status": REFUSED if reason else delivery.get("status", "unknown"),
                "refused_reason": reason,
                "message_id": delivery.get("message_id"),
                "to_address": delivery.get("to_address"),
                "sent_at": delivery.get("sent_at"),
                "attempts": delivery.get("attempts"),
                "last_error": delivery.get("last_error"),
                "earlier_deliveries": _earlier_deliveries(session, message),
            }
        )
    return notices


def _orders(session: Session, mailbox: Mailbox) -> list[dict[str, Any]]:
    orders = session.scalars(
        select(RenewalOrder)
        .options(selectinload(RenewalOrder.payments), selectinload(RenewalOrder.lines))
        .where(exists().where(RenewalOrderLine.order_id == RenewalOrder.id, RenewalOrderLine.mailbox_id == mailbox.id))
        .order_by(RenewalOrder.created_at, RenewalOrder.id)
    ).all()
    result = []
    for order in orders:
        line = next(line for line in order.lines if line.mailbox_id == mailbox.id)
        result.append(
            {
                **order_summary(order),
                "line": {
                    "selected": line.selected,
                    "old_plan": line.old_plan,
                    "plan": line.plan,
                    "extra_space_gb": line.extra_space_gb,
                    "extra_archive_gb": line.extra_archive_gb,
                    "old_expires_on": _iso(line.old_expires_on),
                    "new_expires_on": _iso(line.new_expires_on),
                },
                "payments": [
                    {
                        "method": payment.method,
                        "amount_cents": payment.amount_cents,
                        "amount": f"{pricing.format_amount(payment.amount_cents)} EUR",
                        "reference": payment.reference,
                        "registered_at": _iso(payment.registered_at),
                        "business_date": _iso(payment.business_date),
                    }
                    for payment in order.payments
                ],
            }
        )
    return result


def _charges(session: Session, mailbox: Mailbox) -> list[dict[str, Any]]:
    intents = session.scalars(
        select(ChargeIntent)
        .where(ChargeIntent.mailbox_id == mailbox.id)
        .order_by(ChargeIntent.cycle_expires_on, ChargeIntent.attempt)
    ).all()
    return [
        {
            "cycle_expires_on": _iso(intent.cycle_expires_on),
            "attempt": intent.attempt,
            "status": intent.status,
            "amount_cents": intent.amount_cents,
            "amount": f"{pricing.format_amount(intent.amount_cents)} {intent.currency}",
            "payment_method": mask_token(intent.payment_method),
            "idempotency_key": intent.idempotency_key,
            "reference": intent.reference,
            "decline_code": intent.decline_code,
            "business_date": _iso(intent.business_date),
            "created_at": _iso(intent.created_at),
            "resolved_at": _iso(intent.resolved_at),
        }
        for intent in intents
    ]


def next_step(session: Session, mailbox: Mailbox, *, today: date, stages: tuple[Stage, ...], plan: charges.ChargePlan):
    """What the job does next for this mailbox and when (:mod:`worker.services.report`'s forecast), or None."""
    if mailbox.next_action_on is None:
        return None
    first_day = max(mailbox.next_action_on, today)
    last_day = schedule.deletion_date(mailbox.expires_on)
    if first_day > last_day:
        return None
    steps = mailbox_steps(session, mailbox, stages=stages, plan=plan, first_day=first_day, last_day=last_day)
    return steps[0] if steps else None


def mailbox_details(
    session: Session, mailbox: Mailbox, *, today: date, stages: tuple[Stage, ...], plan: charges.ChargePlan
) -> dict[str, Any]:
    """Everything about one mailbox, as plain data (``mailbox show --json``)."""
    holder = mailbox.holder
    step = next_step(session, mailbox, today=today, stages=stages, plan=plan)
    method = mailbox.payment_method
    return {
        "address": mailbox.address,
        "id": mailbox.id,
        "account": mailbox.account.login,
        "holder": {
            "name": holder.name,
            "kind": holder.kind,
            "tax_code": holder.tax_code,
            "vat_number": holder.vat_number,
            "postal_address": holder.postal_address,
            "einvoice": holder.sdi_code or holder.einvoice_pec or holder.office_code,
        },
        "reference_email": mailbox.reference_email,
        "language": mailbox.language,
        "plan": mailbox.plan,
        "extras": {"space_gb": mailbox.extra_space_gb or 0, "archive_gb": mailbox.extra_archive_gb or 0},
        "used_space_mb": mailbox.used_space_mb,
        "domain": (
            {"name": mailbox.domain.name, "expires_on": _iso(mailbox.domain.expires_on)} if mailbox.domain else None
        ),
        "expires_on": _iso(mailbox.expires_on),
        "state": schedule.mailbox_state(mailbox.expires_on, today).value,
        "last_renewable_on": _iso(schedule.last_renewable_day(mailbox.expires_on)),
        "deletion_on": _iso(schedule.deletion_date(mailbox.expires_on)),
        "renewal_years": mailbox.renewal_years,
        "promo": bool(mailbox.promo),
        "auto_renew": bool(mailbox.auto_renew),
        "payment_method": (
            {"description": describe_payment_method(method, "en"), "masked": mask_token(method)} if method else None
        ),
        "card_expires_on": _iso(mailbox.card_expires_on),
        "next_action": step.describe() if step is not None else None,
        "next_action_on": _iso(step.day) if step is not None else None,
        "notices": _notices(session, mailbox),
        "orders": _orders(session, mailbox),
        "charges": _charges(session, mailbox),
        # The holder's opt-out of the expiry reminders (List-Unsubscribe, "Non intendo rinnovare").
        "opt_outs": reminders.opt_outs(mailbox),
    }


# -- notices resend --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Resent:
    address: str
    kind: str
    stage: str
    cycle_expires_on: date
    to_address: str
    message_id: str
    outbox_id: int
    previous_to_address: str | None
    previous_status: str | None


def _latest_notice(session: Session, mailbox: Mailbox) -> NoticeLedgerEntry | None:
    return session.scalars(
        select(NoticeLedgerEntry)
        .where(NoticeLedgerEntry.mailbox_id == mailbox.id, NoticeLedgerEntry.cycle_expires_on == mailbox.expires_on)
        .order_by(NoticeLedgerEntry.business_date.desc(), NoticeLedgerEntry.id.desc())
        .limit(1)
    ).first()


def _resend_number(session: Session, previous: OutboxMessage | None) -> int:
    """1 for the first re-send of a notice, then one more for each re-send before it."""
    return 1 + len(_earlier_deliveries(session, previous)) if previous is not None else 1


def resend_latest_notice(session: Session, address: str, *, today: date, now: datetime, mail_domain: str) -> Resent:
    """Queue the current cycle's latest notice again, to the mailbox's current reference address.

    A new outbox message with a new Message-ID, about this mailbox only, from
    the data the notice was written with (its kind, stage and charge details)
    and the mailbox's current address, plan and holder; the relay delivers it
    like any other.  The notice's ledger row then points to it, and its
    context names the message it replaces (``resend_of``), so ``mailbox show``
    lists both.  Refused: no notice in the current cycle, a deleted mailbox,
    or the same copy still waiting in the outbox.
    """
    mailbox = find_mailbox(session, address, for_update=True)
    if schedule.mailbox_state(mailbox.expires_on, today) is schedule.MailboxState.DELETED:
        raise DeskRefused(
            f"{mailbox.address} was deleted on {schedule.deletion_date(mailbox.expires_on)}: there is nothing to renew"
        )
    entry = _latest_notice(session, mailbox)
    if entry is None:
        raise DeskRefused(
            f"{mailbox.address} has no notice in its current cycle (expiry {mailbox.expires_on}): nothing to send again"
        )
    previous = session.get(OutboxMessage, entry.outbox_message_id) if entry.outbox_message_id is not None else None
    to_address = mailbox.reference_email.lower()
    if previous is not None and previous.status == OutboxStatus.PENDING.value and previous.to_address == to_address:
        raise DeskRefused(
            f"{mailbox.address}: its {entry.kind} {entry.stage} to {to_address} is still waiting in the outbox"
            f" (Message-ID <{previous.message_id}>): the relay delivers it; nothing was queued"
        )
    context = dict(previous.context) if previous is not None and isinstance(previous.context, dict) else {}
    context["holder_name"] = mailbox.holder.name
    context["holder_kind"] = mailbox.holder.kind
    context["mailboxes"] = [
        {
            "id": mailbox.id,
            "address": mailbox.address,
            "expires_on": entry.cycle_expires_on.isoformat(),
            "plan": mailbox.plan,
            "domain": mailbox.domain.name if mailbox.domain is not None else None,
        }
    ]
    if previous is not None:
        context[RESEND_OF] = previous.id
    queued = queue_email(
        session,
        NewEmail(
            about=[(mailbox.id, entry.cycle_expires_on.isoformat(), entry.stage)],
            kind=entry.kind,
            stage=entry.stage,
            language=mailbox.language,
            to_address=to_address,
            context=context,
            resend=_resend_number(session, previous),
        ),
        mail_domain=mail_domain,
        business_date=today,
        now=now,
    )
    if queued is None:
        raise DeskRefused(f"{mailbox.address}: the same re-send of its {entry.kind} {entry.stage} is already queued")
    entry.outbox_message_id = queued.id
    clear_refused_reason(entry)
    session.flush()
    return Resent(
        address=mailbox.address,
        kind=entry.kind,
        stage=entry.stage,
        cycle_expires_on=entry.cycle_expires_on,
        to_address=to_address,
        message_id=queued.message_id,
        outbox_id=queued.id,
        previous_to_address=previous.to_address if previous is not None else None,
        previous_status=previous.status if previous is not None else None,
    )


# -- orders ----------------------------------------------------------------------------------------


def _holder_name(order: RenewalOrder) -> str | None:
    data = order.holder_data or {}
    return data.get("name") or (order.holder.name if order.holder is not None else None)


def order_summary(order: RenewalOrder) -> dict[str, Any]:
    total = order.total_cents
    return {
        "order_number": order.order_number,
        "status": order.status,
        "origin": order.origin,
        "cycle_expires_on": _iso(order.link_cycle),
        "holder": _holder_name(order),
        "payment_method": order.payment_method,
        "years": order.years,
        "total_cents": total,
        "total": f"{pricing.format_amount(total)} EUR" if total is not None else None,
        "gateway_state": order.gateway_state,
        "created_at": _iso(order.created_at),
        "confirmed_at": _iso(order.confirmed_at),
        "paid_at": _iso(order.paid_at),
    }


def check_order_status(status: str | None) -> str | None:
    if status is not None and status not in ORDER_STATUSES:
        raise DeskRefused(f"{status!r} is not an order status; valid: {', '.join(ORDER_STATUSES)}")
    return status


def list_orders(session: Session, status: str | None = None) -> list[dict[str, Any]]:
    """Every order (or those with ``status``), oldest first, with the mailboxes it renews."""
    query = (
        select(RenewalOrder)
        .options(
            selectinload(RenewalOrder.lines).joinedload(RenewalOrderLine.mailbox),
            joinedload(RenewalOrder.holder),
        )
        .order_by(RenewalOrder.id)
    )
    if check_order_status(status) is not None:
        query = query.where(RenewalOrder.status == status)
    return [
        {
            **order_summary(order),
            "mailboxes": [line.mailbox.address for line in order.lines if line.selected],
        }
        for order in session.scalars(query)
    ]


@dataclass(frozen=True)
class Cancelled:
    order_number: str
    already: bool
    previous_status: str
    #: The expiry cycle of the link the order belongs to: that link now leads to the cancelled order.
    cycle_expires_on: date


def cancel_order(session: Session, order_number: str, *, settings: Settings) -> Cancelled:
    """Cancel a confirmed or draft order (:func:`worker.services.orders.cancel_order`, as the
    holder's own cancel); a paid or lapsed one, or one with a card / PayPal payment still
    unresolved, is refused (DeskRefused).  Cancelling twice changes nothing."""
    number = (order_number or "").strip().upper()
    order = session.scalars(
        select(RenewalOrder)
        .options(selectinload(RenewalOrder.payments))
        .where(RenewalOrder.order_number == number)
        .with_for_update(of=RenewalOrder)
    ).first()
    if order is None:
        raise DeskRefused(f"no order {number or '(empty)'}")
    if order.status == OrderStatus.PAID.value:
        paid = ", ".join(
            f"{p.method} {pricing.format_amount(p.amount_cents)} EUR ({p.reference})" for p in order.payments
        )
        raise DeskRefused(
            f"{number} cannot be cancelled: it is paid (on {order.paid_at:%Y-%m-%d}: {paid or 'payment registered'})"
            " and the renewal it paid for is done"
        )
    if order.status == OrderStatus.CANCELLED.value:
        return Cancelled(number, True, order.status, order.link_cycle)
    if order.gateway_state in UNRESOLVED_GATEWAY_STATES:
        raise DeskRefused(
            f"{number} cannot be cancelled now: its card/PayPal payment has no final answer yet"
            f" ({order.gateway_state}); it is reconciled first, then cancel it again if it is still unpaid"
        )
    if order.status == OrderStatus.LAPSED.value:
        raise DeskRefused(f"{number} cannot be cancelled: it lapsed unpaid at its mailboxes' deletion date")
    previous = order.status
    orders.cancel_order(session, order, settings=settings)
    return Cancelled(number, False, previous, order.link_cycle)


# -- links issue -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class IssuedLink:
    address: str
    url: str
    cycle_expires_on: date
    #: The first day the mailbox no longer exists (and the link no longer renews it).
    deletion_on: date


def issue_link(session: Session, signer: LinkSigner, address: str, *, today: date) -> IssuedLink:
    """A fresh signed Rinnova link of the mailbox's current cycle (the one its notices carry).

    Any day before the deletion date: a renewal before the notices start extends
    from the current expiry like any other.  The desk's ``links issue`` and the
    renewal-links API (``worker/web/api.py``) both issue links here.  Raises
    :class:`NoSuchMailbox`, or :class:`LinkRefused` for a mailbox on a customer
    domain or deleted.
    """
    mailbox = find_mailbox(session, address)
    if mailbox.domain_id is not None:
        raise LinkRefused(
            f"{mailbox.address} is on the customer domain {mailbox.domain.name}: it is renewed with the domain"
            f" (expiry {mailbox.domain.expires_on}), not with a link",
            "on_domain",
        )
    deletion_on = schedule.deletion_date(mailbox.expires_on)
    if schedule.mailbox_state(mailbox.expires_on, today) is schedule.MailboxState.DELETED:
        raise LinkRefused(
            f"{mailbox.address} was deleted on {deletion_on}: it can no longer be renewed",
            "deleted",
        )
    url = signer.renewal_url(mailbox.id, mailbox.expires_on)
    return IssuedLink(mailbox.address, url, mailbox.expires_on, deletion_on)


# -- Charges that never reached the gateway ------------------------------------------------------


def failed_without_charge_attempt(session: Session, business_date: date | None = None) -> int:
    """charge-failed emails (of ``business_date``, or ever) about a cycle with no charge intent:
    the gateway was never called for them (the cycle reached the worker after its charge days,
    or the mailbox had no payment method)."""
    query = (
        select(func.count())
        .select_from(NoticeLedgerEntry)
        .where(
            NoticeLedgerEntry.kind == charges.CHARGE_FAILED,
            ~exists().where(
                ChargeIntent.mailbox_id == NoticeLedgerEntry.mailbox_id,
                ChargeIntent.cycle_expires_on == NoticeLedgerEntry.cycle_expires_on,
            ),
        )
    )
    if business_date is not None:
        query = query.where(NoticeLedgerEntry.business_date == business_date)
    return session.scalar(query) or 0


__all__ = [
    "DeskRefused",
    "LinkRefused",
    "NoSuchMailbox",
    "ORDER_STATUSES",
    "cancel_order",
    "failed_without_charge_attempt",
    "find_mailbox",
    "issue_link",
    "list_orders",
    "mailbox_details",
    "resend_latest_notice",
]

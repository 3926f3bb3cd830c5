"""An order's life after it is started: the holder cancels it or changes its payment method,
the daily run lapses it, and an auto-renew charge finds it pending.

- :func:`cancel_order`: an unpaid order (draft or awaiting payment) is cancelled, by the
  holder from the order's page or by the support desk (``orders cancel``).  Its link's
  cycle is free again: the holder may start a new order from the same link.
- :func:`change_payment_method`: a confirmed order awaiting payment takes another method
  (after a declined card, or a bank transfer the holder would rather pay by card); a new
  ``order-confirmation`` with the new instructions replaces the one not yet sent.
- :func:`lapse_orders`: on its mailboxes' deletion date an order still unpaid can no longer
  be paid; the daily run closes it as ``lapsed``.
- :func:`pending_manual_order`: the order a holder confirmed for a mailbox's cycle and has
  not paid yet; the auto-renew charge is not made while it is pending.

An order whose card or PayPal attempt has no final answer yet (``gateway_state`` started or
unknown) is neither cancelled nor changed: money may have moved.  The caller commits.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, select
from sqlalchemy.orm import Session

from config.settings import Settings
from worker.mail.message_ids import OrderEmail
from worker.mail.queue import withdraw_emails
from worker.rules import schedule
from worker.rules.vocabulary import GATEWAY_METHODS, PAYMENT_METHODS
from worker.services.orders.emails import ORDER_CONFIRMATION, mail_domain, queue_order_email
from worker.services.orders.errors import OrderNotOpen, OrderValidationError
from worker.services.orders.messages import message
from worker.services.orders.steps import payment_options
from worker.services.orders.summary import earliest_deletion_on, order_language
from worker.store.db import one_of
from worker.store.models import (
    OPEN_ORDER_STATUSES,
    OrderOrigin,
    OrderStatus,
    RenewalOrder,
    RenewalOrderLine,
)

#: A card or PayPal attempt whose answer is not recorded yet.
UNRESOLVED_GATEWAY_STATES = ("started", "unknown")


def _refuse_unless_open(order: RenewalOrder) -> None:
    """Refuse, in the holder's language, an order that is paid, closed, or has a payment in progress."""
    language = order_language(order)
    if order.status == OrderStatus.PAID.value:
        raise OrderNotOpen({"order": message("order_paid", language)})
    if order.status == OrderStatus.CANCELLED.value:
        raise OrderNotOpen({"order": message("order_cancelled", language)})
    if order.status == OrderStatus.LAPSED.value:
        raise OrderNotOpen({"order": message("order_lapsed", language)})
    if order.gateway_state in UNRESOLVED_GATEWAY_STATES:
        raise OrderNotOpen({"order": message("payment_in_progress", language)})


def withdraw_confirmation(session: Session, order: RenewalOrder, settings: Settings) -> int:
    """Withdraw the order's ``order-confirmation`` emails still waiting in the outbox: they say
    "awaiting payment" with instructions that are no longer true.  Returns how many."""
    if order.order_number is None:
        return 0
    about = OrderEmail(ORDER_CONFIRMATION, order.order_number)
    return withdraw_emails(session, about, mail_domain(settings), resends=order.method_changes or 0)


def cancel_order(session: Session, order: RenewalOrder, *, settings: Settings) -> bool:
    """Cancel an unpaid order; False when it was already cancelled (nothing changes).

    Locks the order row first, so a cancel and a payment of the same order run one after the
    other.  Refused (:class:`OrderNotOpen`) for a paid or lapsed order and while a card or
    PayPal attempt has no final answer.  The confirmation still waiting in the outbox is
    withdrawn.
    """
    session.refresh(order, with_for_update=True)
    if order.status == OrderStatus.CANCELLED.value:
        return False
    _refuse_unless_open(order)
    order.status = OrderStatus.CANCELLED.value
    session.flush()
    withdraw_confirmation(session, order, settings)
    return True


def change_payment_method(
    session: Session, order: RenewalOrder, method: str, *, now: datetime, today: date, settings: Settings
) -> RenewalOrder:
    """Another payment method for a confirmed order awaiting payment (its amount and years stay).

    The method must still be in time (:func:`~worker.services.orders.payment_options`).
    The same method again changes nothing.  Otherwise the confirmation not yet sent is
    withdrawn and a new ``order-confirmation`` with the new instructions is queued (a new
    message, with a Message-ID of its own).  Card and PayPal are then paid at the checkout.
    """
    session.refresh(order, with_for_update=True)
    _refuse_unless_open(order)
    language = order_language(order)
    if order.status != OrderStatus.AWAITING_PAYMENT.value:
        raise OrderNotOpen({"order": message("order_not_confirmed", language)})
    offered = {option.method: option for option in payment_options(session, order, today)}
    if method not in PAYMENT_METHODS:
        raise OrderValidationError({"method": message("method_unknown", language)})
    if not offered[method].available:
        raise OrderValidationError({"method": offered[method].reason or message("method_unknown", language)})
    if method == order.payment_method:
        return order
    order.payment_method = method
    if method not in GATEWAY_METHODS:
        order.gateway_state = None  # a declined attempt says nothing about a bank transfer
    withdraw_confirmation(session, order, settings)
    order.method_changes = (order.method_changes or 0) + 1
    session.flush()
    queue_order_email(
        session, order, ORDER_CONFIRMATION, now=now, today=today, settings=settings, resend=order.method_changes
    )
    return order


@dataclass(frozen=True)
class LapseResult:
    #: The order numbers (or public ids of drafts) closed as lapsed.
    lapsed: tuple[str, ...] = ()
    #: Those left open because a card or PayPal attempt has no final answer (for an operator).
    held: tuple[str, ...] = ()


def lapse_orders(session: Session, today: date) -> LapseResult:
    """Close as ``lapsed`` every unpaid order (draft or awaiting payment) on or after the deletion
    date of one of its mailboxes: it can no longer be paid, and its link's cycle is over.

    Reads only the open orders (a partial index) with a line whose mailbox expiry is old
    enough, then applies the exact rule.  An order with a card or PayPal attempt that has no
    final answer is left open and listed in ``held``: money may have moved.
    """
    bound = today - timedelta(days=schedule.RENEWABLE_DAYS_AFTER_EXPIRY + 1)
    candidates = session.scalars(
        select(RenewalOrder)
        .where(
            RenewalOrder.status.in_(OPEN_ORDER_STATUSES),
            RenewalOrder.id.in_(
                select(RenewalOrderLine.order_id).where(
                    RenewalOrderLine.selected.is_(True), RenewalOrderLine.old_expires_on <= bound
                )
            ),
        )
        .order_by(RenewalOrder.id)
        .with_for_update(skip_locked=True)
    ).all()
    lapsed, held = [], []
    for order in candidates:
        deletion_on = earliest_deletion_on(order)
        if deletion_on is None or deletion_on > today:
            continue
        name = order.order_number or order.public_id
        if order.gateway_state in UNRESOLVED_GATEWAY_STATES:
            held.append(name)
            continue
        order.status = OrderStatus.LAPSED.value
        lapsed.append(name)
    session.flush()
    return LapseResult(tuple(lapsed), tuple(held))


#: The holder's own order for a mailbox's cycle, confirmed and not yet paid.
_PENDING_MANUAL_ORDER = (
    select(
        RenewalOrder.id,
        RenewalOrder.order_number,
        RenewalOrder.payment_method,
        RenewalOrder.total_cents,
        RenewalOrder.subtotal_cents,
        RenewalOrder.vat_cents,
        RenewalOrder.years,
        RenewalOrder.link_target,
    )
    .join(RenewalOrderLine, RenewalOrderLine.order_id == RenewalOrder.id)
    .where(
        RenewalOrderLine.selected.is_(True),
        RenewalOrder.status == OrderStatus.AWAITING_PAYMENT.value,
        RenewalOrder.origin == OrderOrigin.LINK.value,
    )
    .order_by(RenewalOrder.id)
)


def pending_orders(session: Session, keys: Iterable[tuple[int, date]]) -> dict[tuple[int, date], dict[str, Any]]:
    """The orders awaiting payment of these ``(mailbox id, cycle)`` pairs, as the notices mention
    them: ``{"number", "amount_cents", "method"}`` by pair (the oldest order of a pair).  One query."""
    wanted = set(keys)
    if not wanted:
        return {}
    rows = session.execute(
        select(
            RenewalOrderLine.mailbox_id,
            RenewalOrderLine.old_expires_on,
            RenewalOrder.order_number,
            RenewalOrder.total_cents,
            RenewalOrder.payment_method,
        )
        .join(RenewalOrder, RenewalOrder.id == RenewalOrderLine.order_id)
        .where(
            one_of(session, RenewalOrderLine.mailbox_id, sorted({mailbox_id for mailbox_id, _cycle in wanted})),
            RenewalOrderLine.selected.is_(True),
            RenewalOrder.status == OrderStatus.AWAITING_PAYMENT.value,
        )
        .order_by(RenewalOrder.id.desc())
    ).all()
    found: dict[tuple[int, date], dict[str, Any]] = {}
    for mailbox_id, cycle, number, total_cents, method in rows:
        if (mailbox_id, cycle) in wanted and number is not None and total_cents:
            found[(mailbox_id, cycle)] = {"number": number, "amount_cents": total_cents, "method": method}
    return found


def pending_manual_order(executor: Session | Connection, mailbox_id: int, cycle: date) -> Any | None:
    """The order the holder confirmed for ``mailbox_id``'s expiry ``cycle`` and has not paid (the
    oldest, if several), as a row (``id``, ``order_number``, ``payment_method``, ``total_cents``,
    ``subtotal_cents``, ``vat_cents``, ``years``), or None.  An unpaid order left by a failed
    charge is not one: it follows the charge."""
    return executor.execute(
        _PENDING_MANUAL_ORDER.where(
            RenewalOrderLine.mailbox_id == mailbox_id, RenewalOrderLine.old_expires_on == cycle
        ).limit(1)
    ).first()

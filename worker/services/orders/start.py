"""Starting an order: the one order of a link (target and expiry cycle), and finding it again.

:func:`start_order` answers the link page's POST; :func:`create_unpaid_renewal_order`
is the order a failed auto-renew charge leaves, keyed like the mailbox's own
link so that the link in the ``charge-failed`` email leads to it.  Both are
idempotent: a link has one order, whoever creates it first.
"""

from __future__ import annotations

import secrets
from datetime import date, datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from worker.rules import pricing
from worker.rules.links import MAILBOX, RenewalLink
from worker.services.orders.errors import LinkNotUsable
from worker.services.orders.link import (
    LinkState,
    LinkView,
    MailboxSummary,
    describe_link,
    holder_language,
    mailbox_summary,
    order_for_link,
)
from worker.services.orders.summary import (
    holder_snapshot,
    order_number_for,
    update_totals,
)
from worker.store.models import (
    Mailbox,
    OrderOrigin,
    OrderStatus,
    RenewalOrder,
    RenewalOrderLine,
)


def _new_order(
    *, account_id: int, holder_id: int, target: str, target_id: int, cycle: date, language: str | None, now: datetime
) -> RenewalOrder:
    return RenewalOrder(
        public_id=secrets.token_urlsafe(24),
        account_id=account_id,
        holder_id=holder_id,
        status=OrderStatus.DRAFT.value,
        origin=OrderOrigin.LINK.value,
        link_target=target,
        link_target_id=target_id,
        link_cycle=cycle,
        language=holder_language(language),
        mailboxes_confirmed=False,
        gateway_attempts=0,
        created_at=now,
    )


def _line_for(mailbox: Mailbox, *, selected: bool) -> RenewalOrderLine:
    return RenewalOrderLine(
        mailbox=mailbox,
        mailbox_id=mailbox.id,
        old_expires_on=mailbox.expires_on,
        old_plan=mailbox.plan,
        selected=selected,
        plan=mailbox.plan,
        extra_space_gb=mailbox.extra_space_gb or 0,
        extra_archive_gb=mailbox.extra_archive_gb or 0,
        archive_deletion_confirmed=False,
    )


def _insert_once(session: Session, order: RenewalOrder) -> RenewalOrder:
    """Add ``order``; if another transaction created the order of the same link first, return that one."""
    try:
        with session.begin_nested():
            session.add(order)
            session.flush()
    except IntegrityError:
        existing = order_for_link(session, order.link_target, order.link_target_id, order.link_cycle)
        if existing is None:
            raise
        return existing
    return order


def start_order(session: Session, link: RenewalLink, today: date, now: datetime) -> RenewalOrder:
    """The open order of this link, created on the first call (POST only).

    Idempotent: the same link (target + expiry cycle) always gives the same
    order, whatever its status.  Raises :class:`LinkNotUsable` when
    :func:`describe_link` does not allow an order (``on_domain``, ``deleted``,
    ``already_renewed``, ``not_found``).  The order starts with one line per
    orderable mailbox, with the current plan and extras (for auto-renew
    mailboxes in an account or group order the line starts not selected:
    ``RenewalOrderLine.selected``).  The caller commits.
    """
    existing = order_for_link(session, link.target, link.target_id, link.expires_on)
    if existing is not None:
        return existing
    view = describe_link(session, link, today)
    if view.state not in (LinkState.RENEWABLE, LinkState.AUTO_RENEW):
        raise LinkNotUsable(view.state)
    if link.target == MAILBOX:
        return _insert_once(session, _mailbox_order(session, link, now))
    return _insert_once(session, _account_order(session, link, view, now))


def _mailbox_order(session: Session, link: RenewalLink, now: datetime) -> RenewalOrder:
    mailbox = session.get(Mailbox, link.target_id)
    assert mailbox is not None
    order = _new_order(
        account_id=mailbox.account_id, holder_id=mailbox.holder_id, target=MAILBOX, target_id=mailbox.id,
        cycle=link.expires_on, language=mailbox.language, now=now,
    )  # fmt: skip
    order.lines.append(_line_for(mailbox, selected=True))
    return order


def _account_order(session: Session, link: RenewalLink, view: LinkView, now: datetime) -> RenewalOrder:
    """The order of an account link, or of a group link (whose mailboxes are all of one account)."""
    mailboxes = [session.get(Mailbox, summary.id) for summary in view.mailboxes if summary.orderable]
    holder_source = next((mailbox for mailbox in mailboxes if not mailbox.auto_renew), mailboxes[0])
    order = _new_order(
        account_id=holder_source.account_id, holder_id=holder_source.holder_id, target=link.target,
        target_id=link.target_id, cycle=link.expires_on, language=view.language, now=now,
    )  # fmt: skip
    for mailbox in mailboxes:
        order.lines.append(_line_for(mailbox, selected=not mailbox.auto_renew))
    return order


def find_order(session: Session, public_id: str) -> RenewalOrder | None:
    """The order with this public id (from the URL / signed session), or None."""
    if not isinstance(public_id, str) or not 1 <= len(public_id) <= 64:
        return None
    return session.scalar(select(RenewalOrder).where(RenewalOrder.public_id == public_id))


def find_order_by_number(session: Session, order_number: str) -> RenewalOrder | None:
    return session.scalar(select(RenewalOrder).where(RenewalOrder.order_number == order_number.strip().upper()))


def order_mailboxes(session: Session, order: RenewalOrder, today: date) -> list[MailboxSummary]:
    """The mailboxes of the order's lines, for the step pages (in address order)."""
    summaries = [mailbox_summary(line.mailbox, today) for line in order.lines]
    return sorted(summaries, key=lambda summary: summary.address)


def create_unpaid_renewal_order(
    session: Session,
    mailbox: Mailbox,
    years: int,
    now: datetime,
    today: date,
    *,
    split_payment_for_pa: bool | None = None,
) -> RenewalOrder:
    """The unpaid renewal order ("in attesa di pagamento") after a failed auto-renew charge.

    Created confirmed (``awaiting_payment``, with its order number, no
    payment method yet) for the mailbox's current plan and extras, ``years``
    years, keyed like the mailbox's own link for this expiry cycle: the link
    in the charge-failed email (``signer.renewal_url(mailbox.id,
    mailbox.expires_on)``) leads to it (``describe_link`` says
    ``renewable``), and it may be paid by any method although auto-renew is on
    (``choose_payment`` is allowed on it).  Idempotent per (mailbox,
    expiry cycle): an order the holder had already started from that link is
    marked as such and returned.  Queues no email (the caller's
    ``charge-failed`` email carries the link).  The caller commits.
    ``split_payment_for_pa`` (``SPLIT_PAYMENT_FOR_PA``, as the charge was priced): a public
    administration's order asks the taxable amount; None asks the total, VAT included.
    """
    if mailbox.domain_id is not None:
        raise ValueError("a mailbox on a domain has no renewal order")
    existing = order_for_link(session, MAILBOX, mailbox.id, mailbox.expires_on)
    if existing is not None:
        if existing.status != OrderStatus.PAID.value:
            existing.origin = OrderOrigin.AUTO_RENEW_FAILED.value
            session.flush()
        return existing
    if pricing.check_years(years, bool(mailbox.promo)) is not None:
        years = min(max(int(years), 1), pricing.max_years(bool(mailbox.promo)))
    order = _new_order(
        account_id=mailbox.account_id, holder_id=mailbox.holder_id, target=MAILBOX, target_id=mailbox.id,
        cycle=mailbox.expires_on, language=mailbox.language, now=now,
    )  # fmt: skip
    order.origin = OrderOrigin.AUTO_RENEW_FAILED.value
    order.holder = mailbox.holder
    order.holder_data = holder_snapshot(mailbox.holder)
    order.lines.append(_line_for(mailbox, selected=True))
    order.mailboxes_confirmed = True
    order.years = years
    update_totals(order, split_payment_for_pa)
    order = _insert_once(session, order)
    if order.order_number is None:
        order.order_number = order_number_for(order.id, today.year)
        order.status = OrderStatus.AWAITING_PAYMENT.value
        order.confirmed_at = now
        session.flush()
    return order

"""Orders walked through the service's steps, from a mailbox's link to its confirmation."""

from __future__ import annotations

from datetime import UTC, date, datetime

from worker.rules.links import MAILBOX, RenewalLink
from worker.services import orders
from worker.services.orders import MailboxChoice

TODAY = date(2027, 3, 1)
#: The expiry of the mailboxes the order tests renew unless told otherwise.
EXPIRES = date(2027, 4, 30)
NOW = datetime(2027, 3, 1, 9, 30, tzinfo=UTC)


def link_for(mailbox, expires_on=None) -> RenewalLink:
    return RenewalLink(MAILBOX, mailbox.id, expires_on or mailbox.expires_on)


def complete_order(
    session,
    settings,
    mailbox,
    *,
    method="bank_transfer",
    years=1,
    plan=None,
    extra_space_gb=0,
    extra_archive_gb=0,
    holder=None,
    today=TODAY,
):
    """The mailbox's order walked from its link to its confirmation; ``holder`` is the holder step's data
    (the mailbox's holder unless given).  The caller commits."""
    order = orders.start_order(session, link_for(mailbox), today, NOW)
    choice = MailboxChoice(
        mailbox.id, plan or mailbox.plan, extra_space_gb, extra_archive_gb, confirm_archive_deletion=True
    )
    orders.choose_mailboxes(session, order, [choice], today)
    orders.set_holder(session, order, holder or orders.holder_form_data(order))
    orders.choose_payment(session, order, method, years, today)
    orders.accept_terms(session, order, NOW)
    return orders.confirm_order(session, order, now=NOW, today=today, settings=settings)

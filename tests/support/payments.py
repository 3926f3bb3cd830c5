"""Orders placed for the payment tests: confirmed and committed, the moment they are paid, a mailbox's fields."""

from __future__ import annotations

from datetime import UTC, datetime

from tests.support.orders import complete_order
from worker.store.models import Mailbox

#: The moment the payment tests register a payment: the day after the order.
LATER = datetime(2027, 3, 2, 8, 0, tzinfo=UTC)


def place_order(session, settings, mailbox, **steps):
    """The mailbox's order, confirmed from its link (``steps``: :func:`complete_order`'s options) and
    committed: awaiting its payment."""
    order = complete_order(session, settings, mailbox, **steps)
    session.commit()
    return order


def snapshot(session, mailbox_id):
    """The mailbox's fields a payment changes, read again from the database."""
    session.expire_all()
    mailbox = session.get(Mailbox, mailbox_id)
    return (
        mailbox.expires_on,
        mailbox.plan,
        mailbox.extra_space_gb,
        mailbox.extra_archive_gb,
        mailbox.auto_renew,
        mailbox.payment_method,
        mailbox.next_action_on,
        mailbox.holder_id,
    )

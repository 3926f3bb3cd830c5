"""The platform's events where the services change a mailbox: renewals, auto-renew switches,
and the day's step for expired and deleted mailboxes.  Each writes its events through
:mod:`worker.events.queue`, in the caller's transaction."""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import Connection
from sqlalchemy.orm import Session

from worker.events.queue import auto_renew_event, write_events, write_lifecycle_events
from worker.store.models import Mailbox

__all__ = ["auto_renew_switched", "set_auto_renew", "write_lifecycle_events"]


def auto_renew_switched(
    executor: Session | Connection,
    mailbox_id: int,
    address: str,
    auto_renew: bool,
    *,
    source: str,
    now: datetime,
    today: date,
) -> None:
    """Tell the platform that a mailbox's auto-renew was switched (``auto_renew.changed``), in the
    caller's transaction, which sets the flag itself.  ``source`` says who switched it: ``payment``,
    ``holder`` (the auto-renew page), ``import``…"""
    event = auto_renew_event(mailbox_id, address, auto_renew=auto_renew, source=source)
    write_events(executor, [event], now=now, business_date=today)


def set_auto_renew(
    session: Session, mailbox: Mailbox, auto_renew: bool, *, source: str, now: datetime, today: date
) -> bool:
    """Switch an ORM mailbox's auto-renew on or off and tell the platform (:func:`auto_renew_switched`),
    in the caller's transaction.  Returns False, and writes nothing, when the mailbox was already so.
    """
    if bool(mailbox.auto_renew) == auto_renew:
        return False
    mailbox.auto_renew = auto_renew
    auto_renew_switched(session, mailbox.id, mailbox.address, auto_renew, source=source, now=now, today=today)
    return True

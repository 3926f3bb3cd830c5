"""The platform's events where the services change a mailbox: renewals, auto-renew switches,
and the day's step for expired and deleted mailboxes.  Each writes its events through
:mod:`worker.events.queue`, in the caller's transaction."""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy.orm import Session

from worker.events.queue import auto_renew_event, write_events, write_lifecycle_events
from worker.store.models import Mailbox

__all__ = ["set_auto_renew", "write_lifecycle_events"]


def set_auto_renew(
    session: Session, mailbox: Mailbox, auto_renew: bool, *, source: str, now: datetime, today: date
) -> bool:
    """Switch a mailbox's auto-renew on or off and tell the platform (``auto_renew.changed``), in
    the caller's transaction.  ``source`` says who switched it: ``payment``, ``holder``, ``desk``…

    Every switch of ``Mailbox.auto_renew`` goes through here.  Returns False, and writes
    nothing, when the mailbox was already so.
    """
    if bool(mailbox.auto_renew) == auto_renew:
        return False
    mailbox.auto_renew = auto_renew
    event = auto_renew_event(mailbox.id, mailbox.address, auto_renew=auto_renew, source=source)
    write_events(session, [event], now=now, business_date=today)
    return True

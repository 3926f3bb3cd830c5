"""The one writer of ``platform_events`` rows: the changes the PEC platform must act on.

Every event is written in the transaction of the change it reports (a registered payment, a
successful charge, a switch of auto-renew, the day's step for expired and deleted mailboxes),
so it exists exactly when the change was committed; :mod:`worker.events.delivery` sends it
afterwards.  ``event_key`` names what the event is about, unique: the same change written twice
is one event.  Types and their ``data`` are the contract with the platform (docs/api.md).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from sqlalchemy import Connection, select
from sqlalchemy.orm import Session

from worker.rules import schedule
from worker.store.db import dialect_insert
from worker.store.models import EventStatus, Mailbox, PlatformEvent

MAILBOX_RENEWED = "mailbox.renewed"
MAILBOX_PLAN_CHANGED = "mailbox.plan_changed"
MAILBOX_EXPIRED = "mailbox.expired"
MAILBOX_REACTIVATED = "mailbox.reactivated"
MAILBOX_DELETED = "mailbox.deleted"
AUTO_RENEW_CHANGED = "auto_renew.changed"
EVENT_TYPES = (
    MAILBOX_RENEWED,
    MAILBOX_PLAN_CHANGED,
    MAILBOX_EXPIRED,
    MAILBOX_REACTIVATED,
    MAILBOX_DELETED,
    AUTO_RENEW_CHANGED,
)

#: The day's step writes the expired and deleted events of this many days back: a day the
#: job did not run is caught up, and a fleet's history is not replayed at the first run.
CATCH_UP_DAYS = 7

#: Events written by one statement.
WRITE_CHUNK = 500

_EVENTS = PlatformEvent.__table__
_MAILBOXES = Mailbox.__table__
WEBHOOK_ID_PREFIX = "msg_"


@dataclass(frozen=True)
class NewEvent:
    """An event to write: its type, the mailbox it is about, what makes it unique, and its data."""

    type: str
    mailbox_id: int
    #: What, besides the type and the mailbox, makes the event one: the order, the charge, the
    #: expiry cycle; a nonce for a change that may happen any number of times.
    about: str
    data: dict

    @property
    def event_key(self) -> str:
        return f"{self.type}:{self.mailbox_id}:{self.about}"


def paid_by_order(order_number: str) -> dict:
    return {"order": order_number}


def paid_by_charge(idempotency_key: str, reference: str | None) -> dict:
    return {"charge": idempotency_key, "reference": reference}


def renewal_events(
    *,
    mailbox_id: int,
    address: str,
    old_expires_on: date,
    new_expires_on: date,
    old_plan: str,
    plan: str,
    extra_space_gb: int,
    extra_archive_gb: int,
    years: int,
    paid_by: dict,
    today: date,
) -> list[NewEvent]:
    """The events of one mailbox's renewal: ``mailbox.renewed``; ``mailbox.plan_changed`` when the
    plan changed; ``mailbox.reactivated`` when it was renewed while expired (receive-only)."""
    about = ":".join(f"{name}={value}" for name, value in sorted(paid_by.items()) if value is not None)
    base = {"mailbox_id": mailbox_id, "address": address}
    events = [
        NewEvent(
            MAILBOX_RENEWED,
            mailbox_id,
            about,
            {
                **base,
                "old_expires_on": old_expires_on.isoformat(),
                "new_expires_on": new_expires_on.isoformat(),
                "years": years,
                "plan": plan,
                "extra_space_gb": extra_space_gb,
                "extra_archive_gb": extra_archive_gb,
                "paid_by": paid_by,
            },
        )
    ]
    if plan != old_plan:
        events.append(
            NewEvent(
                MAILBOX_PLAN_CHANGED,
                mailbox_id,
                about,
                {
                    **base,
                    "old_plan": old_plan,
                    "plan": plan,
                    "extra_space_gb": extra_space_gb,
                    "extra_archive_gb": extra_archive_gb,
                    "paid_by": paid_by,
                },
            )
        )
    if schedule.mailbox_state(old_expires_on, today) is schedule.MailboxState.EXPIRED:
        events.append(
            NewEvent(
                MAILBOX_REACTIVATED,
                mailbox_id,
                about,
                {**base, "expired_on": old_expires_on.isoformat(), "new_expires_on": new_expires_on.isoformat()},
            )
        )
    return events


def auto_renew_event(mailbox_id: int, address: str, *, auto_renew: bool, source: str) -> NewEvent:
    """``auto_renew.changed``: each switch is an event of its own."""
    return NewEvent(
        AUTO_RENEW_CHANGED,
        mailbox_id,
        uuid.uuid4().hex,
        {"mailbox_id": mailbox_id, "address": address, "auto_renew": auto_renew, "source": source},
    )


def write_events(executor: Session | Connection, events: list[NewEvent], *, now: datetime, business_date: date) -> int:
    """Write these events in the caller's transaction, in order, one statement per ``WRITE_CHUNK``;
    an event already written (the same ``event_key``) is left as it is.  Returns how many were new."""
    if len(events) > WRITE_CHUNK:
        return sum(
            write_events(executor, events[start : start + WRITE_CHUNK], now=now, business_date=business_date)
            for start in range(0, len(events), WRITE_CHUNK)
        )
    if not events:
        return 0
    rows = [
        {
            "webhook_id": WEBHOOK_ID_PREFIX + uuid.uuid4().hex,
            "event_key": event.event_key,
            "type": event.type,
            "mailbox_id": event.mailbox_id,
            "data": event.data,
            "occurred_at": now,
            "business_date": business_date,
            "status": EventStatus.PENDING.value,
            "attempts": 0,
        }
        for event in events
    ]
    statement = dialect_insert(executor, _EVENTS).values(rows).on_conflict_do_nothing(index_elements=["event_key"])
    return len(executor.execute(statement.returning(_EVENTS.c.id)).all())


def write_lifecycle_events(executor: Session | Connection, *, today: date, now: datetime) -> dict[str, int]:
    """The day's step: ``mailbox.expired`` for each mailbox whose expiry fell in the last
    ``CATCH_UP_DAYS`` days (receive-only from the day after it), and ``mailbox.deleted`` for each
    whose deletion date came in those days.  One read of each window (``expires_on`` is indexed)
    and one insert per ``WRITE_CHUNK`` events, each keyed by the mailbox and its expiry: a
    second run of any day writes nothing.  Returns how many of each were new.
    """
    days_back = timedelta(days=CATCH_UP_DAYS)
    deleted_after = schedule.deletion_date(today) - today  # expiry + this = deletion date
    windows = {
        MAILBOX_EXPIRED: (today - days_back, today - timedelta(days=1)),
        MAILBOX_DELETED: (today - days_back - deleted_after + timedelta(days=1), today - deleted_after),
    }
    written = {}
    for event_type, (first, last) in windows.items():
        found = executor.execute(
            select(_MAILBOXES.c.id, _MAILBOXES.c.address, _MAILBOXES.c.expires_on)
            .where(_MAILBOXES.c.expires_on >= first, _MAILBOXES.c.expires_on <= last)
            .order_by(_MAILBOXES.c.id)
        ).all()
        events = [_lifecycle_event(event_type, row.id, row.address, row.expires_on) for row in found]
        written[event_type] = write_events(executor, events, now=now, business_date=today)
    return written


def _lifecycle_event(event_type: str, mailbox_id: int, address: str, expires_on: date) -> NewEvent:
    data = {"mailbox_id": mailbox_id, "address": address, "expires_on": expires_on.isoformat()}
    if event_type == MAILBOX_EXPIRED:
        data["receive_only_from"] = (expires_on + timedelta(days=1)).isoformat()
        data["last_renewable_on"] = schedule.last_renewable_day(expires_on).isoformat()
        data["deletion_on"] = schedule.deletion_date(expires_on).isoformat()
    else:
        data["deleted_on"] = schedule.deletion_date(expires_on).isoformat()
    return NewEvent(event_type, mailbox_id, expires_on.isoformat(), data)

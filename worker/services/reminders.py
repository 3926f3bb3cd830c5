"""Opting out of the expiry reminders of a cycle, and back in: the holder's choice.

A holder who does not mean to renew can opt out of the reminders (``expiry-notice``,
``expired-notice``, ``domain-expiry-notice``) from the ``List-Unsubscribe`` link of
any of them (RFC 8058 one-click, or the page behind it) or from the renewal page
("Non intendo rinnovare").  The choice is stored on each mailbox as the expiry date
it applies to (``mailboxes.reminders_opt_out_for``); the scan's rule
(:func:`worker.rules.notices.without_opted_out_reminder`) skips the reminders of that
cycle, and only of that cycle: a renewal, or the next cycle, ends it by itself.
Charge notices, receipts and order emails are not reminders and keep coming.

A reminders link names one email by its Message-ID (:mod:`worker.rules.links`);
the email's stored context says which mailboxes it reminded of, and of which cycle.
Mailboxes the renderer left out of that email are not covered by its link.

Every function takes an open session and the time; the caller commits.  Reads
write nothing; opting out and back in are idempotent.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session

from worker.rules import schedule
from worker.rules.notices import REMINDER_KINDS, reminders_opted_out
from worker.rules.vocabulary import DEFAULT_LANGUAGE, LANGUAGES
from worker.store.db import one_of
from worker.store.models import Mailbox, NoticeLedgerEntry, OutboxMessage

#: How an opt-out was asked for (``mailboxes.reminders_opt_out_via``).
ONE_CLICK = "one-click"  # the RFC 8058 POST a mail client sends
REMINDERS_PAGE = "page"  # the button of the /avvisi/ page
RENEWAL_PAGE = "renewal-page"  # "Non intendo rinnovare" on the renewal page
VIAS = (ONE_CLICK, REMINDERS_PAGE, RENEWAL_PAGE)


@dataclass(frozen=True)
class ReminderMailbox:
    """One mailbox of a reminder, as the page shows it."""

    id: int
    address: str
    #: The expiry the reminder was about (its cycle) and the mailbox's expiry now.
    cycle_expires_on: date
    expires_on: date
    deletion_on: date
    last_renewable_on: date
    #: "active", "expired" or "deleted" (schedule.MailboxState), on today.
    state: str
    on_domain: bool
    #: Whether the holder opted out of the reminders of the reminder's cycle.
    opted_out: bool

    @property
    def renewed(self) -> bool:
        """The cycle is over: the expiry moved on (a renewal, or the next cycle)."""
        return self.expires_on != self.cycle_expires_on

    @property
    def can_opt_out(self) -> bool:
        return not self.renewed and self.state != schedule.MailboxState.DELETED.value and not self.opted_out

    @property
    def can_opt_back_in(self) -> bool:
        return not self.renewed and self.state != schedule.MailboxState.DELETED.value and self.opted_out


@dataclass(frozen=True)
class RemindersView:
    """What ``GET /avvisi/<token>`` shows: the mailboxes of one reminder and their state."""

    language: str
    holder_name: str | None
    mailboxes: tuple[ReminderMailbox, ...]

    @property
    def can_opt_out(self) -> bool:
        return any(mailbox.can_opt_out for mailbox in self.mailboxes)

    @property
    def can_opt_back_in(self) -> bool:
        return any(mailbox.can_opt_back_in for mailbox in self.mailboxes)


def _reminder(session: Session, message_id: str) -> tuple[OutboxMessage, dict[int, date]] | None:
    """The reminder with this Message-ID and its mailboxes' cycles, by mailbox id; None if there is none."""
    message = session.scalar(select(OutboxMessage).where(OutboxMessage.message_id == message_id))
    if message is None or message.kind not in REMINDER_KINDS or not isinstance(message.context, dict):
        return None
    cycles: dict[int, date] = {}
    for raw in message.context.get("mailboxes") or ():
        cycle = _cycle_of(raw)
        if cycle is not None:
            cycles[cycle[0]] = cycle[1]
    refused = session.scalars(
        select(NoticeLedgerEntry.mailbox_id).where(
            NoticeLedgerEntry.outbox_message_id == message.id, NoticeLedgerEntry.refused_reason.is_not(None)
        )
    ).all()
    for mailbox_id in refused:
        cycles.pop(mailbox_id, None)  # left out of the email: its link does not speak for it
    return (message, cycles) if cycles else None


def _cycle_of(raw: Any) -> tuple[int, date] | None:
    if not isinstance(raw, dict):
        return None
    mailbox_id, expires_on = raw.get("id"), raw.get("expires_on")
    if not isinstance(mailbox_id, int) or isinstance(mailbox_id, bool) or not isinstance(expires_on, str):
        return None
    try:
        return mailbox_id, date.fromisoformat(expires_on)
    except ValueError:
        return None


def _mailboxes(session: Session, cycles: dict[int, date], today: date) -> tuple[ReminderMailbox, ...]:
    rows = session.execute(
        select(Mailbox.id, Mailbox.address, Mailbox.expires_on, Mailbox.domain_id, Mailbox.reminders_opt_out_for)
        .where(one_of(session, Mailbox.id, list(cycles)))
        .order_by(Mailbox.address)
    ).all()
    return tuple(
        ReminderMailbox(
            id=row.id,
            address=row.address,
            cycle_expires_on=cycles[row.id],
            expires_on=row.expires_on,
            deletion_on=schedule.deletion_date(row.expires_on),
            last_renewable_on=schedule.last_renewable_day(row.expires_on),
            state=schedule.mailbox_state(row.expires_on, today).value,
            on_domain=row.domain_id is not None,
            opted_out=reminders_opted_out(row.reminders_opt_out_for, cycles[row.id]),
        )
        for row in rows
    )


def describe_reminders(session: Session, message_id: str, today: date) -> RemindersView | None:
    """The mailboxes of the reminder with this Message-ID, or None (no such reminder).  Writes nothing."""
    found = _reminder(session, message_id)
    if found is None:
        return None
    message, cycles = found
    mailboxes = _mailboxes(session, cycles, today)
    if not mailboxes:
        return None
    holder_name = message.context.get("holder_name")
    return RemindersView(
        language=message.language if message.language in LANGUAGES else DEFAULT_LANGUAGE,
        holder_name=holder_name if isinstance(holder_name, str) else None,
        mailboxes=mailboxes,
    )


def opt_out(session: Session, message_id: str, *, today: date, now: datetime, via: str) -> RemindersView | None:
    """Opt the mailboxes of this reminder out of the reminders of the cycle it was about; None if
    there is no such reminder.  Idempotent: a mailbox already opted out keeps its first date and way."""
    found = _reminder(session, message_id)
    if found is None:
        return None
    opt_out_cycles(session, found[1].items(), today=today, now=now, via=via)
    return describe_reminders(session, message_id, today)


def opt_back_in(session: Session, message_id: str, *, today: date) -> RemindersView | None:
    """Undo :func:`opt_out`: the reminders of that cycle come again from the next stage."""
    found = _reminder(session, message_id)
    if found is None:
        return None
    opt_back_in_cycles(session, found[1].items())
    return describe_reminders(session, message_id, today)


def opt_out_cycles(
    session: Session, cycles: Iterable[tuple[int, date]], *, today: date, now: datetime, via: str
) -> int:
    """Opt out of the reminders of each ``(mailbox id, cycle's expiry)`` still in that cycle and not
    deleted; the number of mailboxes newly opted out."""
    if via not in VIAS:
        raise ValueError(f"unknown way {via!r}")
    opted_out = 0
    for mailbox_id, cycle in cycles:
        if schedule.mailbox_state(cycle, today) is schedule.MailboxState.DELETED:
            continue  # deleted: no reminder is left
        opted_out += session.execute(
            update(Mailbox)
            .where(
                Mailbox.id == mailbox_id,
                Mailbox.expires_on == cycle,
                or_(Mailbox.reminders_opt_out_for.is_(None), Mailbox.reminders_opt_out_for != cycle),
            )
            .values(reminders_opt_out_for=cycle, reminders_opt_out_at=now, reminders_opt_out_via=via)
            .execution_options(synchronize_session=False)
        ).rowcount
    return opted_out


def opt_back_in_cycles(session: Session, cycles: Iterable[tuple[int, date]]) -> int:
    """Resume the reminders of each ``(mailbox id, cycle's expiry)`` opted out for that cycle; how many."""
    resumed = 0
    for mailbox_id, cycle in cycles:
        resumed += session.execute(
            update(Mailbox)
            .where(and_(Mailbox.id == mailbox_id, Mailbox.reminders_opt_out_for == cycle))
            .values(reminders_opt_out_for=None, reminders_opt_out_at=None, reminders_opt_out_via=None)
            .execution_options(synchronize_session=False)
        ).rowcount
    return resumed


def opt_outs(mailbox: Any) -> list[dict[str, Any]]:
    """The mailbox's opt-out, for ``mailbox show``: the cycle, when, how, and whether it still applies."""
    if mailbox.reminders_opt_out_for is None:
        return []
    in_force = reminders_opted_out(mailbox.reminders_opt_out_for, mailbox.expires_on)
    return [
        {
            "what": "opted out of the expiry reminders",
            "cycle_expires_on": mailbox.reminders_opt_out_for.isoformat(),
            "opted_out_at": mailbox.reminders_opt_out_at.isoformat(timespec="seconds")
            if mailbox.reminders_opt_out_at
            else None,
            "via": mailbox.reminders_opt_out_via,
            "in_force": in_force,
            "ended": None if in_force else "the mailbox's expiry moved on (renewed, or its next cycle)",
        }
    ]

"""The notice rule: which notice, if any, a mailbox without auto-renew gets on a day.

A pure function of dates and of what the ledger already holds for the
mailbox's cycle.  The daily scan (:mod:`worker.services.notices`) writes what it
decides; the auto-renew rule follows it after a failed charge; the report
forecasts with it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import date
from typing import Any, ClassVar, Protocol, TypeVar

from worker.rules import schedule
from worker.rules.schedule import Stage

EXPIRY_NOTICE = "expiry-notice"
EXPIRED_NOTICE = "expired-notice"
DOMAIN_EXPIRY_NOTICE = "domain-expiry-notice"
#: The emails a holder can opt out of for a cycle: each carries ``List-Unsubscribe`` (RFC 2369, 8058).
REMINDER_KINDS = frozenset((EXPIRY_NOTICE, EXPIRED_NOTICE, DOMAIN_EXPIRY_NOTICE))
#: The skip reason of a reminder the holder opted out of.
OPTED_OUT = "opted-out"


@dataclass(frozen=True)
class NoticeDecision:
    """What the scan does today for one mailbox."""

    kind: str | None = None
    stage: Stage | None = None
    skip_reason: str | None = None
    next_action_on: date | None = None
    superseded: tuple[Stage, ...] = ()


def decide_notice(
    *,
    stages: tuple[Stage, ...],
    expires_on: date,
    on_domain: bool,
    auto_renew: bool,
    pending_since: date | None,
    today: date,
    already_sent: frozenset[str],
) -> NoticeDecision:
    """The most urgent stage due today, unless sent, deleted or not ours.

    ``pending_since`` is the mailbox's ``next_action_on`` before this run: the
    stages dated from then up to the one sent today were passed over for good.
    """
    next_on = schedule.next_action_on(stages, expires_on, today)
    if schedule.mailbox_state(expires_on, today) is schedule.MailboxState.DELETED:
        return NoticeDecision(skip_reason="deleted", next_action_on=None)
    if auto_renew and not on_domain:
        # Auto-renew mailboxes get charge notices, not these (their own flow).
        return NoticeDecision(skip_reason="auto-renew", next_action_on=next_on)
    due = schedule.due_stage(stages, expires_on, today)
    if due is None:
        return NoticeDecision(skip_reason="not-due", next_action_on=next_on)
    if due.name in already_sent:
        return NoticeDecision(skip_reason="already-sent", next_action_on=next_on)
    if on_domain:
        kind = DOMAIN_EXPIRY_NOTICE
    else:
        kind = EXPIRED_NOTICE if due.after_expiry else EXPIRY_NOTICE
    superseded = tuple(
        stage
        for stage in schedule.superseded_stages(stages, expires_on, pending_since, due)
        if stage.name not in already_sent
    )
    return NoticeDecision(kind=kind, stage=due, next_action_on=next_on, superseded=superseded)


def earliest_action_on(stages: tuple[Stage, ...], expires_on: date, today: date) -> date | None:
    """When the scan must next look at a mailbox under ``stages``: today if a stage is due, else the next one."""
    if schedule.due_stage(stages, expires_on, today) is not None:
        return today
    return schedule.next_action_on(stages, expires_on, today)


def reminders_opted_out(opt_out_for: date | None, expires_on: date) -> bool:
    """Whether the holder's opt-out (recorded for the cycle ending ``opt_out_for``) applies to the cycle
    ending ``expires_on``: only to that same cycle, so a renewal or the next cycle ends it."""
    return opt_out_for is not None and opt_out_for == expires_on


class _Decision(Protocol):
    """A notice or auto-renew decision: a dataclass with the email it sends, if any."""

    __dataclass_fields__: ClassVar[dict[str, Any]]
    kind: str | None


DecisionT = TypeVar("DecisionT", bound=_Decision)


def without_opted_out_reminder(decision: DecisionT, *, opt_out_for: date | None, expires_on: date) -> DecisionT:
    """``decision``, or, when it sends a reminder of a cycle whose reminders the holder opted out of, the
    same day as a skip (:data:`OPTED_OUT`) with the same next date: the schedule goes on,
    so the stages after a resume are sent, and the ones passed over meanwhile are not."""
    if decision.kind in REMINDER_KINDS and reminders_opted_out(opt_out_for, expires_on):
        return replace(decision, kind=None, stage=None, skip_reason=OPTED_OUT, superseded=())
    return decision

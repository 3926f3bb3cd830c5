"""``pec-renewal report``: what is due in the coming days, and how the last run went.

The forecast reads only mailboxes whose ``next_action_on`` falls in the window
(an index range, like the scan) and names every step each one has in the
window with the same pure rules the scan uses, assuming no renewal, no
decline and no retry happens meanwhile.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import date, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from worker import charges, schedule
from worker.models import BouncedAddress, DailyRun, Mailbox, NoticeLedgerEntry, OutboxMessage
from worker.notices import DOMAIN_EXPIRY_NOTICE, EXPIRED_NOTICE, EXPIRY_NOTICE
from worker.schedule import Stage

CHARGE = "charge"


@dataclass
class Report:
    start: date
    days: int
    #: day -> step -> mailboxes ("expiry-notice", "charge-notice", "charge", …)
    due: dict[date, Counter] = field(default_factory=dict)
    overdue: int = 0
    last_run: dict | None = None
    outbox: dict[str, int] = field(default_factory=dict)
    bounced_addresses: int = 0

    def as_dict(self) -> dict:
        return {
            "start": self.start.isoformat(),
            "days": self.days,
            "overdue": self.overdue,
            "due": {day.isoformat(): dict(sorted(steps.items())) for day, steps in sorted(self.due.items())},
            "last_run": self.last_run,
            "outbox": self.outbox,
            "bounced_addresses": self.bounced_addresses,
        }


def next_step(
    *,
    stages: tuple[Stage, ...],
    plan: charges.ChargePlan,
    expires_on: date,
    on_domain: bool,
    auto_renew: bool,
    day: date,
) -> str | None:
    """What the job will do for a mailbox on ``day`` (its next action date), by the pure rules."""
    if schedule.mailbox_state(expires_on, day) is schedule.MailboxState.DELETED:
        return None
    if auto_renew and not on_domain:
        if day >= charges.charge_on(expires_on, plan):
            return CHARGE
        if day >= plan.notice_stage.on(expires_on):
            return charges.CHARGE_NOTICE
        return charges.CARD_EXPIRING
    stage = schedule.due_stage(stages, expires_on, day)
    if stage is None:
        return None
    if on_domain:
        return DOMAIN_EXPIRY_NOTICE
    return EXPIRED_NOTICE if stage.after_expiry else EXPIRY_NOTICE


def steps_in_window(
    *,
    stages: tuple[Stage, ...],
    plan: charges.ChargePlan,
    expires_on: date,
    on_domain: bool,
    auto_renew: bool,
    first_day: date,
    last_day: date,
) -> list[tuple[date, str]]:
    """Every step of one mailbox from ``first_day`` (its next action) to ``last_day``."""
    facts = dict(stages=stages, plan=plan, expires_on=expires_on, on_domain=on_domain, auto_renew=auto_renew)
    steps = []
    first = next_step(day=first_day, **facts)
    if first is not None:
        steps.append((first_day, first))
    if auto_renew and not on_domain:
        later = [plan.notice_stage.on(expires_on), charges.charge_on(expires_on, plan)]
    else:
        later = [day for day, _stage in schedule.stage_dates(stages, expires_on)]
    for day in later:
        if first_day < day <= last_day:
            step = next_step(day=day, **facts)
            if step is not None:
                steps.append((day, step))
    return steps


def build_report(
    session: Session, *, start: date, days: int, stages: tuple[Stage, ...], plan: charges.ChargePlan
) -> Report:
    report = Report(start=start, days=days)
    end = start + timedelta(days=days - 1)
    for offset in range(days):
        report.due[start + timedelta(days=offset)] = Counter()
    rows = session.connection().execute(
        select(Mailbox.next_action_on, Mailbox.expires_on, Mailbox.domain_id, Mailbox.auto_renew).where(
            Mailbox.next_action_on <= end
        )
    )
    for next_on, expires_on, domain_id, auto_renew in rows:
        if next_on < start:
            report.overdue += 1
        for day, step in steps_in_window(
            stages=stages, plan=plan, expires_on=expires_on, on_domain=domain_id is not None,
            auto_renew=bool(auto_renew), first_day=max(next_on, start), last_day=end,
        ):  # fmt: skip
            report.due[day][step] += 1

    last = session.scalars(
        select(DailyRun).where(DailyRun.business_date < start + timedelta(days=1)).order_by(DailyRun.business_date.desc()).limit(1)
    ).first()
    if last is not None:
        report.last_run = {
            "business_date": last.business_date.isoformat(),
            "finished": last.finished_at is not None,
            "summary": last.summary or {},
            # Mailbox notices of that day the renderer refused (left out of their email, or the
            # whole email refused): each ledger row says why (notice_ledger.refused_reason).
            "refused": session.scalar(
                select(func.count()).where(
                    NoticeLedgerEntry.business_date == last.business_date, NoticeLedgerEntry.refused_reason.is_not(None)
                )
            )
            or 0,
        }
        report.outbox = dict(
            session.execute(
                select(OutboxMessage.status, func.count())
                .where(OutboxMessage.business_date == last.business_date)
                .group_by(OutboxMessage.status)
            ).all()
        )
    report.bounced_addresses = session.scalar(select(func.count()).select_from(BouncedAddress)) or 0
    return report

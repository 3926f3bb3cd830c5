"""Many mailboxes' charge work: which are due, and running them ``GATEWAY_CONCURRENCY`` at a time.

The charges wait on the gateway's network, not on this process: each runs in a thread of
a pool, and each of its transactions takes a connection of the engine's pool only for the
milliseconds it lasts, never across a gateway call.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import date, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from worker.gateways import PaymentGateway
from worker.rules import schedule
from worker.rules.auto_renew import DEFAULT_CHARGE_PLAN, ChargePlan
from worker.rules.einvoice import Seller
from worker.rules.schedule import Stage
from worker.services import invoices
from worker.services.charges.results import ChargeRun, ChargesResult
from worker.services.charges.service import charge_mailbox
from worker.store.models import Mailbox, MailboxSchedule

log = logging.getLogger(__name__)


def due_charge_ids(
    session: Session,
    today: date,
    *,
    after_id: int = 0,
    limit: int = 1000,
    plan: ChargePlan = DEFAULT_CHARGE_PLAN,
) -> list[int]:
    """Auto-renew mailboxes that may have charge work today (keyset page by id).

    A superset: those due whose charge window has opened, and those with an
    unresolved intent.  :func:`charge_mailbox` decides exactly.
    """
    return list(
        session.scalars(
            select(Mailbox.id)
            .join(MailboxSchedule, MailboxSchedule.mailbox_id == Mailbox.id)
            .where(
                Mailbox.id > after_id,
                Mailbox.auto_renew.is_(True),
                Mailbox.domain_id.is_(None),
                MailboxSchedule.next_action_on <= today,
                Mailbox.expires_on <= today + timedelta(days=max(plan.charge_days)),
            )
            .order_by(Mailbox.id)
            .limit(limit)
        )
    )


def iter_due_charge_batches(
    session: Session, today: date, batch_size: int, plan: ChargePlan = DEFAULT_CHARGE_PLAN
) -> Iterator[list[int]]:
    last = 0
    while True:
        ids = due_charge_ids(session, today, after_id=last, limit=batch_size, plan=plan)
        if not ids:
            return
        yield ids
        last = ids[-1]


def run_charges(
    session_factory: sessionmaker[Session],
    gateway: PaymentGateway,
    mailbox_ids: Iterable[int],
    *,
    today: date,
    clock: Callable[[], datetime],
    stages: tuple[Stage, ...] = schedule.DEFAULT_STAGES,
    mail_domain: str,
    concurrency: int = 1,
    progress: Callable[[int], None] | None = None,
    plan: ChargePlan = DEFAULT_CHARGE_PLAN,
    seller: Seller | None = None,
) -> ChargesResult:
    """Charge these mailboxes, ``concurrency`` at a time (threads; each charge uses its own sessions),
    then number the invoices they wrote.

    An error on one mailbox is logged and counted, and does not stop the
    others: its intent (if any) stays unresolved and is reconciled next run.
    """
    total = _charge(
        mailbox_ids,
        concurrency,
        progress,
        lambda mailbox_id: charge_mailbox(
            session_factory,
            gateway,
            mailbox_id,
            today=today,
            clock=clock,
            stages=stages,
            mail_domain=mail_domain,
            plan=plan,
            seller=seller,
        ),
    )
    # Each charge's transaction wrote its invoice unnumbered; they are numbered here, in one short
    # transaction that locks the year's counter once, in the order of payment, before the caller
    # hands the receipts to the relay (and with them any invoice a crash left unnumbered).
    with session_factory() as session, session.begin():
        total.invoices_numbered = len(invoices.number_pending_invoices(session))
    return total


def _charge(
    mailbox_ids: Iterable[int],
    concurrency: int,
    progress: Callable[[int], None] | None,
    charge: Callable[[int], ChargeRun],
) -> ChargesResult:
    total = ChargesResult()
    ids = list(dict.fromkeys(mailbox_ids))
    if not ids:
        return total

    def one(mailbox_id: int) -> ChargeRun | None:
        try:
            return charge(mailbox_id)
        except Exception:
            log.exception("charge of mailbox %s failed; it is reconciled on the next run", mailbox_id)
            return None

    workers = max(1, min(concurrency, len(ids)))
    if workers == 1:
        for run in map(one, ids):
            _collect(total, run, progress)
        return total
    # Each charge runs in a copy of this thread's context: its log lines carry the task's
    # id and business date (worker.logs), as the lines of the thread that started it do.
    context = contextvars.copy_context()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="charge") as pool:
        for run in pool.map(lambda mailbox_id: context.copy().run(one, mailbox_id), ids):
            _collect(total, run, progress)
    return total


def _collect(total: ChargesResult, run: ChargeRun | None, progress: Callable[[int], None] | None) -> None:
    if run is None:
        total.examined += 1
        total.errors += 1
    else:
        total.add(run)
    if progress:
        progress(1)

"""What one transaction of a mailbox's charge work writes once the rule has decided or the gateway
has answered, apart from the intent itself: the successful charge's invoice, receipt, new expiry
and platform event; the email that asks for the holder's authentication (3-D Secure); the
charge-skipped notice while the holder's own order awaits payment; the charge-failed order and
email; and one email of the cycle, under its stage.

:class:`CycleWrites` holds the transaction (its connection, the day, the clock's ``now``) and
the run's counts; :mod:`~worker.services.charges.service` builds on it with the claim of the
next gateway call and the record of its answer.  A charge-failed, which opens the unpaid renewal
order, goes through the ORM on the same connection.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from types import SimpleNamespace
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.orm import Session, sessionmaker

from worker.events.queue import paid_by_charge, renewal_events, write_events
from worker.rules import einvoice, schedule
from worker.rules.auto_renew import (
    CHARGE_AUTHENTICATION_REQUIRED,
    CHARGE_FAILED,
    CHARGE_SKIPPED,
    CHARGE_SUCCEEDED,
    DEFAULT_CHARGE_PLAN,
    ChargePlan,
    authentication_deadline,
    charge_dates,
    day_stage,
    failure_reason,
)
from worker.rules.einvoice import Seller
from worker.rules.schedule import Stage
from worker.services import invoices
from worker.services.charges.emails import (
    authentication_context,
    charge_price,
    failure_context,
    method_kind,
    queue_authentication_email,
    queue_mailbox_email,
    receipt_context,
    skipped_context,
)
from worker.services.charges.results import ChargeRun
from worker.services.charges.state import HOLDER_INVOICE_COLUMNS, CycleState, LockedMailbox, read_intent
from worker.services.orders import create_unpaid_renewal_order, pending_manual_order
from worker.store.models import Mailbox, OrderOrigin, RenewalOrder

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChargeDay:
    """What every step of one day's charge work reads: the business date, the clock (each step
    takes ``now`` from it when it writes), the notice stages, the domain of the Message-IDs and
    the charge plan."""

    today: date
    clock: Callable[[], datetime]
    mail_domain: str
    stages: tuple[Stage, ...] = schedule.DEFAULT_STAGES
    plan: ChargePlan = DEFAULT_CHARGE_PLAN
    #: The seller of the invoices (``Settings.seller``); None: each invoice waits for it.
    seller: Seller | None = None


class CycleWrites:
    """The writes of one transaction of one mailbox's charge work, on ``connection``."""

    def __init__(
        self,
        connection: Connection,
        session_factory: sessionmaker[Session],
        run: ChargeRun,
        day: ChargeDay,
    ) -> None:
        self.connection = connection
        self.session_factory = session_factory
        self.run = run
        self.day = day
        #: When this transaction writes: read from the day's clock once the mailbox is locked.
        self.now = day.clock()

    def ask_authentication(self, mailbox: LockedMailbox, intent: Any) -> None:
        """The charge waits for the holder: the email with the signed link to authenticate it on
        session, written once (the intent's move to ``requires_authentication`` happens once)."""
        day = self.day
        deadline = authentication_deadline(
            intent.business_date, charge_dates(intent.cycle_expires_on, day.plan)[-1], intent.cycle_expires_on
        )
        context = {
            "charge": authentication_context(
                mailbox.row,
                cycle_expires_on=intent.cycle_expires_on,
                intent_id=intent.id,
                years=intent.years,
                amount_cents=intent.amount_cents,
                authenticate_by=deadline,
                plan=day.plan,
            )
        }
        stage = day_stage(day.stages, intent.cycle_expires_on, day.today)
        outbox_id = queue_authentication_email(
            self.connection,
            mailbox.row,
            cycle_expires_on=intent.cycle_expires_on,
            stage=stage,
            attempt=intent.attempt,
            context=context,
            today=day.today,
            now=self.now,
            mail_domain=day.mail_domain,
        )
        if outbox_id is not None:
            self.run.outbox_ids.append(outbox_id)
            self.run.emails[(CHARGE_AUTHENTICATION_REQUIRED, stage.name)] += 1
        self.run.outcome = "authentication-required"

    def renew(self, mailbox: LockedMailbox, intent: Any) -> None:
        """A successful charge: its invoice, the receipt (unless the day's stage is taken in the cycle's
        ledger), the new expiry."""
        day = self.day
        old = intent.cycle_expires_on
        invoice = self.invoice(mailbox, intent)
        stage = day_stage(day.stages, old, day.today)
        if not mailbox.state.holds_stage(stage):
            context = {
                "invoice": invoice,
                "charge": receipt_context(
                    mailbox.row,
                    cycle_expires_on=old,
                    years=intent.years,
                    amount_cents=intent.amount_cents,
                    charged_on=day.today,
                    reference=intent.reference,
                    plan=day.plan,
                ),
            }
            self.write_email(mailbox, stage, CHARGE_SUCCEEDED, context)
        mailbox.expires_on = schedule.add_years(old, intent.years)
        row = mailbox.row
        events = renewal_events(
            mailbox_id=mailbox.id,
            address=row.address,
            old_expires_on=old,
            new_expires_on=mailbox.expires_on,
            old_plan=row.plan,
            plan=row.plan,
            extra_space_gb=row.extra_space_gb,
            extra_archive_gb=row.extra_archive_gb,
            years=intent.years,
            paid_by=paid_by_charge(intent.idempotency_key, intent.reference),
            today=day.today,
        )
        write_events(self.connection, events, now=self.now, business_date=day.today)
        self.run.outcome = "succeeded"

    def invoice(self, mailbox: LockedMailbox, intent: Any) -> dict[str, Any]:
        """The charge's invoice, from the holder's data, in this transaction; its courtesy copy, without
        the number, which the batch's numbering step gives both once the batch's charges are recorded
        (:func:`worker.services.invoices.number_pending_invoices`, in :func:`run_charges`)."""
        row = mailbox.row
        price = charge_price(mailbox.row, intent.years, self.day.plan)
        buyer = invoices.buyer_from_holder(
            SimpleNamespace(
                name=row.holder_name, **{name: getattr(row, f"holder_{name}") for name in HOLDER_INVOICE_COLUMNS}
            ),
            split_payment=price.split_payment,
        )
        lines = einvoice.lines_for(price.lines, {mailbox.row.address: intent.cycle_expires_on})
        record = invoices.record_invoice(
            self.connection,
            seller=self.day.seller,
            buyer=buyer,
            lines=lines,
            paid_cents=intent.amount_cents,
            payment_method=method_kind(intent.payment_method),
            reference=intent.idempotency_key,
            mailbox_id=mailbox.id,
            today=self.day.today,
            now=self.now,
            charge_intent_id=intent.id,
        )
        document = einvoice.InvoiceDocument(
            einvoice.INVOICE,
            record.document_number or "",
            record.issued_on or self.day.today,
            buyer,
            lines,
            einvoice.totals_of(lines),
            method_kind(intent.payment_method),
            intent.idempotency_key,
        )
        return invoices.courtesy_copy(record, self.day.seller, document)

    def skip_for_order(self, mailbox: LockedMailbox, state: CycleState, order: Any) -> None:
        """No charge while the holder's own order for this cycle awaits payment (a bank transfer, a
        postal slip, or a card at the checkout): charging too would renew the mailbox twice, or
        against the plan the holder chose.  The holder is told once per cycle (``charge-skipped``);
        the mailbox is looked at again tomorrow, so a cancelled or lapsed order lets the charge
        run on the next run, and an order still unpaid on the expiry day ends the cycle in
        charge-failed, which then points at that same order."""
        today = self.day.today
        if not any(kind == CHARGE_SKIPPED for _stage, kind in state.sent):
            context = {"charge": skipped_context(mailbox.row, order=order, today=today, plan=self.day.plan)}
            stages = (
                day_stage(self.day.stages, mailbox.expires_on, today),
                Stage(days=(today - mailbox.expires_on).days),
            )
            for stage in dict.fromkeys(stages):
                if not state.holds_stage(stage) and self.write_email(mailbox, stage, CHARGE_SKIPPED, context):
                    break
        mailbox.next_action_on = today + timedelta(days=1)
        self.run.outcome = "skipped-order-pending"
        log.info("charge of mailbox %s not made: order %s awaits payment", mailbox.id, order.order_number)

    def fail(self, mailbox: LockedMailbox, state: CycleState) -> None:
        """charge-failed, once: the unpaid renewal order and the email with the signed link that leads to it.

        The holder's own order for the cycle, still unpaid, is that order (never a second one)."""
        today = self.day.today
        mailbox.write(self.connection)  # the order is made from the mailbox as this transaction left it
        pending = pending_manual_order(self.connection, mailbox.id, mailbox.expires_on)
        with self.session_factory(bind=self.connection) as session:  # in this transaction
            if pending is not None:
                order = session.get_one(RenewalOrder, pending.id)
                order.origin = OrderOrigin.AUTO_RENEW_FAILED.value  # payable by any method from now on
            else:
                order = create_unpaid_renewal_order(
                    session,
                    session.get_one(Mailbox, mailbox.id),
                    mailbox.row.renewal_years or 1,
                    self.now,
                    today,
                    split_payment_for_pa=self.day.plan.split_payment_for_pa,
                )
            session.flush()
        last = read_intent(self.connection, last_intent_id(state)) if state.intents else None
        reason = failure_reason(
            last.status if last is not None else None,
            last.decline_code if last is not None else None,
            bool(mailbox.payment_method),
        )
        context = {
            "charge": failure_context(
                mailbox.row,
                cycle_expires_on=mailbox.expires_on,
                order=order,
                reason=reason,
                plan=self.day.plan,
            )
        }
        # The day's stage, or, when another email of the cycle used it, the day offset, which no
        # other email of the cycle uses: the failure is recorded either way.
        stages = (day_stage(self.day.stages, mailbox.expires_on, today), Stage(days=(today - mailbox.expires_on).days))
        for stage in dict.fromkeys(stages):
            if not state.holds_stage(stage) and self.write_email(mailbox, stage, CHARGE_FAILED, context):
                break
        self.run.outcome = "failed"
        log.info("charge-failed for mailbox %s (%s); unpaid order %s", mailbox.id, reason, order.order_number)

    def write_email(self, mailbox: LockedMailbox, stage: Stage, kind: str, context: dict[str, Any]) -> bool:
        """Queue one email about the mailbox's current cycle; False when its Message-ID is already queued."""
        outbox_id = queue_mailbox_email(
            self.connection,
            mailbox.row,
            cycle_expires_on=mailbox.expires_on,
            stage=stage,
            kind=kind,
            context=context,
            today=self.day.today,
            now=self.now,
            mail_domain=self.day.mail_domain,
        )
        if outbox_id is None:
            return False
        mailbox.state.add_email(stage, kind, self.day.today)
        self.run.outbox_ids.append(outbox_id)
        self.run.emails[(kind, stage.name)] += 1
        return True


def last_intent_id(state: CycleState) -> int:
    intent_id = state.intents[-1].intent_id
    assert intent_id is not None, "the cycle's attempts are read with their intents' ids"
    return intent_id

"""Writing an invoice or a credit note in the caller's transaction, and numbering them from the year's counter.

A document that can be issued is written ``issued`` without its number; only
:func:`number_pending_invoices` gives numbers, under the year's counter row lock, in
the order of payment, so the numbers of a year (Europe/Rome) have no gaps whatever
rolls back.  A manual order's registration and a credit note call it in their own
transaction; the charge service calls it once per batch, after the batch's charges are
recorded (one short transaction, the counter locked once), and ``run-daily`` and
``invoices export`` through the charge batch and before writing.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from sqlalchemy import Connection, bindparam, func, insert, select, update
from sqlalchemy.orm import Session

from config import catalogue
from worker.mail.queue import update_context_part
from worker.rules import einvoice, pricing
from worker.rules.auto_renew import CHARGE_SUCCEEDED
from worker.rules.einvoice import Address, Buyer, InvoiceDocument, InvoiceLine, Seller, Totals
from worker.rules.vocabulary import PUBLIC_ADMINISTRATION
from worker.store.db import dialect_insert
from worker.store.models import ChargeIntent, Invoice, InvoiceCounter, InvoiceStatus, NoticeLedgerEntry

log = logging.getLogger(__name__)

_INVOICES = Invoice.__table__
_COUNTERS = InvoiceCounter.__table__
_INTENTS = ChargeIntent.__table__
_LEDGER = NoticeLedgerEntry.__table__
_RESERVE = (
    update(_COUNTERS)
    .values(last_number=_COUNTERS.c.last_number + bindparam("count"))
    .returning(_COUNTERS.c.last_number)
)
_NUMBER = (
    update(_INVOICES)
    .where(_INVOICES.c.id == bindparam("invoice_id"))
    .values(year=bindparam("invoice_year"), number=bindparam("invoice_number"), document_number=bindparam("document"))
)
#: Why an invoice waits for the seller's settings.
SELLER_SETTINGS = "seller_settings"
#: Why an invoice waits because its lines do not come to the amount paid (a price changed meanwhile).
AMOUNT_MISMATCH = "amount_mismatch"


@dataclass(frozen=True)
class InvoiceRecord:
    """What was written: the row's id, its status and, once issued, its number and date."""

    id: int
    status: str
    document_number: str | None
    issued_on: date | None
    waiting_reason: str | None


def buyer_from_holder(holder: Any, *, split_payment: bool = False) -> Buyer:
    """The buyer as invoiced from a holder row (ORM or Core): its data and billing address.

    ``split_payment``: the order asked a public administration the taxable amount only
    (``SPLIT_PAYMENT_FOR_PA``); the invoice then says ``EsigibilitaIVA`` S."""
    address = None
    if holder.billing_address and holder.billing_postcode and holder.billing_city:
        address = Address(
            holder.billing_address,
            holder.billing_postcode,
            holder.billing_city,
            holder.billing_province,
            holder.billing_country or "IT",
        )
    return Buyer(
        kind=holder.kind,
        name=holder.name,
        tax_code=holder.tax_code,
        vat_number=holder.vat_number,
        address=address,
        sdi_code=holder.sdi_code,
        einvoice_pec=holder.einvoice_pec,
        office_code=holder.office_code,
        cig=holder.cig,
        cup=holder.cup,
        split_payment=split_payment and holder.kind == PUBLIC_ADMINISTRATION,
    )


def next_number(connection: Connection, year: int, count: int = 1) -> int:
    """The first of the year's next ``count`` invoice numbers; the counter row stays locked until the
    caller's transaction ends."""
    last = connection.execute(_RESERVE.where(_COUNTERS.c.year == year), {"count": count}).scalar()
    if last is None:
        connection.execute(
            dialect_insert(connection, _COUNTERS).values(year=year, last_number=0).on_conflict_do_nothing()
        )
        last = connection.execute(_RESERVE.where(_COUNTERS.c.year == year), {"count": count}).scalar_one()
    return int(last) - count + 1


def number_pending_invoices(executor: Session | Connection) -> list[InvoiceRecord]:
    """Number every document written ``issued`` without its number, in the caller's transaction: the one
    place numbers are given.

    The documents are locked and numbered in the order of payment (issue date, then id), each
    year's from its counter row, locked once for the lot until the caller commits.  A charge's
    receipt not yet sent gets the number in its courtesy copy (the relay renders one sent before
    as "number being assigned").  Returns the documents numbered, in that order.
    """
    connection = executor.connection() if isinstance(executor, Session) else executor
    pending = connection.execute(
        select(_INVOICES.c.id, _INVOICES.c.issued_on, _INVOICES.c.charge_intent_id)
        .where(_INVOICES.c.status == InvoiceStatus.ISSUED.value, _INVOICES.c.number.is_(None))
        .order_by(_INVOICES.c.issued_on, _INVOICES.c.id)
        .with_for_update()
    ).all()
    if not pending:
        return []
    numbered: list[InvoiceRecord] = []
    for year in sorted({row.issued_on.year for row in pending}):
        rows = [row for row in pending if row.issued_on.year == year]
        first = next_number(connection, year, len(rows))
        numbered += [
            InvoiceRecord(row.id, InvoiceStatus.ISSUED.value, f"{first + index}/{year}", row.issued_on, None)
            for index, row in enumerate(rows)
        ]
    connection.execute(
        _NUMBER,
        [
            {
                "invoice_id": record.id,
                "invoice_year": record.issued_on.year if record.issued_on else None,
                "invoice_number": int((record.document_number or "").split("/")[0]),
                "document": record.document_number,
            }
            for record in numbered
        ],
    )
    _number_receipts(connection, {row.charge_intent_id: row.id for row in pending if row.charge_intent_id}, numbered)
    return numbered


def _number_receipts(connection: Connection, invoice_of_intent: dict[int, int], numbered: list[InvoiceRecord]) -> None:
    """The courtesy copies in the charges' receipts (the cycle's charge-succeeded in its ledger) take the numbers."""
    if not invoice_of_intent:
        return
    number_of = {record.id: record.document_number for record in numbered}
    receipts = connection.execute(
        select(_INTENTS.c.id, _LEDGER.c.outbox_message_id)
        .join(
            _LEDGER,
            (_LEDGER.c.mailbox_id == _INTENTS.c.mailbox_id)
            & (_LEDGER.c.cycle_expires_on == _INTENTS.c.cycle_expires_on)
            & (_LEDGER.c.kind == CHARGE_SUCCEEDED),
        )
        .where(_INTENTS.c.id.in_(invoice_of_intent), _LEDGER.c.outbox_message_id.is_not(None))
    ).all()
    update_context_part(
        connection,
        "invoice",
        {row.outbox_message_id: {"number": number_of[invoice_of_intent[row.id]]} for row in receipts},
    )


def waiting_reasons(seller: Seller | None, buyer: Buyer) -> tuple[str, ...]:
    return ((SELLER_SETTINGS,) if seller is None else ()) + einvoice.missing_data(buyer)


def issued(today: date) -> dict[str, Any]:
    """The columns of a document issued on ``today``, before :func:`number_pending_invoices` numbers it."""
    return {"status": InvoiceStatus.ISSUED.value, "waiting_reason": None, "issued_on": today}


def record_invoice(
    connection: Connection,
    *,
    seller: Seller | None,
    buyer: Buyer,
    lines: Sequence[InvoiceLine],
    paid_cents: int,
    payment_method: str,
    reference: str,
    mailbox_id: int,
    today: date,
    now: datetime,
    order_id: int | None = None,
    charge_intent_id: int | None = None,
) -> InvoiceRecord:
    """Write the invoice of a paid renewal in the caller's transaction: issued (numbered later by
    :func:`number_pending_invoices`), or waiting (and why)."""
    totals = einvoice.totals_of(lines)
    reasons = waiting_reasons(seller, buyer)
    due = einvoice.amount_due(buyer, totals)
    if due != paid_cents:
        log.warning("invoice of %s: the lines come to %s cents, %s paid", reference, due, paid_cents)
        reasons += (AMOUNT_MISMATCH,)
    values: dict[str, Any] = {
        "kind": einvoice.INVOICE,
        "order_id": order_id,
        "charge_intent_id": charge_intent_id,
        "mailbox_id": mailbox_id,
        "payment_method": payment_method,
        "paid_cents": paid_cents,
        "reference": reference,
        "paid_on": today,
        "buyer": buyer.as_dict(),
        "lines": [line.as_dict() for line in lines],
        "subtotal_cents": totals.subtotal_cents,
        "vat_cents": totals.vat_cents,
        "created_at": now,
    }
    values.update(_waiting(reasons) if reasons else issued(today))
    return _insert(connection, values)


def record_credit_note(
    connection: Connection,
    *,
    invoice_id: int,
    refunded_cents: int,
    refund_key: str,
    seller: Seller | None,
    today: date,
    now: datetime,
) -> InvoiceRecord:
    """Write the credit note (TD04) of a refund of ``refunded_cents`` (VAT included) of an invoice.

    Once per ``refund_key`` (a second call returns the first note).  Waiting while the
    invoice itself waits, or without the seller settings; ValueError for an amount that
    does not fit what the invoice's earlier credit notes left of it (read under the
    invoice's row lock, so two notes at once cannot both take the rest).
    """
    existing = connection.execute(select(_INVOICES).where(_INVOICES.c.refund_key == refund_key)).first()
    if existing is not None:
        return _record_of(existing)
    invoice = connection.execute(select(_INVOICES).where(_INVOICES.c.id == invoice_id).with_for_update()).one()
    if invoice.kind != einvoice.INVOICE:
        raise ValueError(f"invoice {invoice_id} is a credit note")
    credited = connection.execute(
        select(func.coalesce(func.sum(_INVOICES.c.paid_cents), 0)).where(
            _INVOICES.c.corrects_invoice_id == invoice.id, _INVOICES.c.kind == einvoice.CREDIT_NOTE
        )
    ).scalar_one()
    if credited + refunded_cents > invoice.paid_cents:
        raise ValueError(
            f"a refund of {pricing.format_amount(refunded_cents)} EUR does not fit invoice {invoice.id}: "
            f"{pricing.format_amount(invoice.paid_cents - credited)} EUR of it is not credited yet"
        )
    note = einvoice.credit_note(document_of(invoice), refunded_cents=refunded_cents, number="0", issued_on=today)
    reasons = ((SELLER_SETTINGS,) if seller is None else ()) + (
        ("invoice_waiting",) if invoice.status == InvoiceStatus.WAITING.value else ()
    )
    values: dict[str, Any] = {
        "kind": einvoice.CREDIT_NOTE,
        "corrects_invoice_id": invoice.id,
        "refund_key": refund_key,
        "mailbox_id": invoice.mailbox_id,
        "payment_method": invoice.payment_method,
        "paid_cents": refunded_cents,
        "reference": invoice.reference,
        "paid_on": today,
        "buyer": invoice.buyer,
        "lines": [line.as_dict() for line in note.lines],
        "subtotal_cents": note.totals.subtotal_cents,
        "vat_cents": note.totals.vat_cents,
        "created_at": now,
    }
    if reasons:
        values.update(_waiting(reasons))
        return _insert(connection, values)
    values.update(issued(today))
    record = _insert(connection, values)
    return next((done for done in number_pending_invoices(connection) if done.id == record.id), record)


def _waiting(reasons: tuple[str, ...]) -> dict[str, Any]:
    return {"status": InvoiceStatus.WAITING.value, "waiting_reason": ",".join(reasons)}


def _insert(connection: Connection, values: dict[str, Any]) -> InvoiceRecord:
    row = connection.execute(insert(_INVOICES).returning(_INVOICES.c.id), values).one()
    return InvoiceRecord(
        row.id, values["status"], values.get("document_number"), values.get("issued_on"), values.get("waiting_reason")
    )


def _record_of(row: Any) -> InvoiceRecord:
    return InvoiceRecord(row.id, row.status, row.document_number, row.issued_on, row.waiting_reason)


def document_of(row: Any, corrected: Any = None) -> InvoiceDocument:
    """The document an invoice row holds (a credit note's with the invoice it corrects)."""
    corrects = None
    if row.kind == einvoice.CREDIT_NOTE and corrected is not None:
        corrects = (corrected.document_number, corrected.issued_on)
    return InvoiceDocument(
        kind=row.kind,
        number=row.document_number or "0",
        issued_on=row.issued_on or row.paid_on,
        buyer=Buyer.from_dict(row.buyer),
        lines=tuple(InvoiceLine.from_dict(line) for line in row.lines),
        totals=Totals(row.subtotal_cents, row.vat_cents, row.subtotal_cents + row.vat_cents),
        payment_method=row.payment_method,
        reference=row.reference,
        corrects=corrects,
    )


def courtesy_copy(record: InvoiceRecord, seller: Seller | None, document: InvoiceDocument) -> dict[str, Any]:
    """The ``invoice`` part of a receipt email's context: the courtesy copy of an issued invoice, as plain data."""
    if record.status != InvoiceStatus.ISSUED.value or seller is None:
        return {"issued": False}
    buyer = document.buyer
    assert buyer.address is not None
    return {
        "issued": True,
        "number": record.document_number,
        "issued_on": record.issued_on.isoformat() if record.issued_on else None,
        "seller": {
            "name": seller.name,
            "vat_number": seller.vat_number,
            "address": f"{seller.address.street}, {seller.address.postcode} {seller.address.city} "
            f"({seller.address.province})",
        },
        "buyer": {
            "name": buyer.name,
            **_person_name(buyer),
            "tax_code": buyer.tax_code,
            "vat_number": buyer.vat_number,
            "address": " ".join(
                part
                for part in (
                    f"{buyer.address.street},",
                    buyer.address.postcode,
                    buyer.address.city,
                    f"({buyer.address.province})" if buyer.address.province else "",
                    "" if buyer.address.country == "IT" else buyer.address.country,
                )
                if part
            ),
        },
        "lines": [
            {"description": line.description, "quantity": line.quantity, "amount_cents": line.amount_cents}
            for line in document.lines
        ],
        "subtotal_cents": document.totals.subtotal_cents,
        "vat_cents": document.totals.vat_cents,
        "vat_percent": catalogue.VAT_PERCENT,
        "total_cents": document.totals.total_cents,
        "split_payment": buyer.split_payment,
        "due_cents": document.amount_due_cents,
    }


def _person_name(buyer: Buyer) -> dict[str, str]:
    """A private person's Nome and Cognome as the invoice has them (``first_name``, ``last_name``)."""
    split = einvoice.person_name(buyer.name, buyer.tax_code or "") if einvoice.is_natural_person(buyer) else None
    return {} if split is None else {"first_name": split[0], "last_name": split[1]}

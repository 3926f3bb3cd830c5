"""Writing an invoice or a credit note in the caller's transaction, numbered from the year's counter."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from sqlalchemy import Connection, insert, select, update

from config import catalogue
from worker.rules import einvoice
from worker.rules.einvoice import Address, Buyer, InvoiceDocument, InvoiceLine, Seller, Totals
from worker.store.db import dialect_insert
from worker.store.models import Invoice, InvoiceCounter, InvoiceStatus

log = logging.getLogger(__name__)

_INVOICES = Invoice.__table__
_COUNTERS = InvoiceCounter.__table__
_NEXT_NUMBER = update(_COUNTERS).values(last_number=_COUNTERS.c.last_number + 1).returning(_COUNTERS.c.last_number)
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


def buyer_from_holder(holder: Any) -> Buyer:
    """The buyer as invoiced from a holder row (ORM or Core): its data and billing address."""
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
    )


def next_number(connection: Connection, year: int) -> int:
    """The year's next invoice number; the counter row stays locked until the caller's transaction ends."""
    number = connection.execute(_NEXT_NUMBER.where(_COUNTERS.c.year == year)).scalar()
    if number is None:
        connection.execute(
            dialect_insert(connection, _COUNTERS).values(year=year, last_number=0).on_conflict_do_nothing()
        )
        number = connection.execute(_NEXT_NUMBER.where(_COUNTERS.c.year == year)).scalar_one()
    return int(number)


def waiting_reasons(seller: Seller | None, buyer: Buyer) -> tuple[str, ...]:
    return ((SELLER_SETTINGS,) if seller is None else ()) + einvoice.missing_data(buyer)


def numbering(connection: Connection, today: date) -> dict[str, Any]:
    """The columns of an invoice issued today: the year's next number."""
    number = next_number(connection, today.year)
    return {
        "status": InvoiceStatus.ISSUED.value,
        "waiting_reason": None,
        "year": today.year,
        "number": number,
        "document_number": f"{number}/{today.year}",
        "issued_on": today,
    }


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
    number_later: bool = False,
) -> InvoiceRecord:
    """Write the invoice of a paid renewal in the caller's transaction: issued, or waiting (and why).

    ``number_later``: an invoice that can be issued is written without its number, which
    :func:`number_invoice` gives it as the transaction's last step, so the year's counter
    row is locked only from then to the commit (the charge service's many concurrent
    records queue on it).
    """
    totals = einvoice.totals_of(lines)
    reasons = waiting_reasons(seller, buyer)
    if totals.total_cents != paid_cents:
        log.warning("invoice of %s: the lines come to %s cents, %s paid", reference, totals.total_cents, paid_cents)
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
    if reasons:
        values.update(_waiting(reasons))
    elif number_later:
        values.update(status=InvoiceStatus.ISSUED.value, issued_on=today)
    else:
        values.update(numbering(connection, today))
    return _insert(connection, values)


def number_invoice(connection: Connection, record: InvoiceRecord) -> InvoiceRecord:
    """Give an invoice written with ``number_later`` its number, from the counter of its issue date's year."""
    assert record.issued_on is not None and record.document_number is None
    values = numbering(connection, record.issued_on)
    connection.execute(update(_INVOICES).where(_INVOICES.c.id == record.id).values(**values))
    return InvoiceRecord(record.id, values["status"], values["document_number"], record.issued_on, None)


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
    does not fit the invoice.
    """
    existing = connection.execute(select(_INVOICES).where(_INVOICES.c.refund_key == refund_key)).first()
    if existing is not None:
        return _record_of(existing)
    invoice = connection.execute(select(_INVOICES).where(_INVOICES.c.id == invoice_id).with_for_update()).one()
    if invoice.kind != einvoice.INVOICE:
        raise ValueError(f"invoice {invoice_id} is a credit note")
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
    values.update(_waiting(reasons) if reasons else numbering(connection, today))
    return _insert(connection, values)


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
        totals=Totals(row.subtotal_cents, row.vat_cents, row.paid_cents),
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
    }

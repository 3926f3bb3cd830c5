"""``pec-renewal invoices export``: the issued invoices as FatturaPA files, each marked exported.

Waiting invoices are issued first when their data have come (:func:`complete_waiting`):
the seller settings, and the buyer's billing address, tax identity and (a private person's)
name that the tax code splits into Nome and Cognome, read from the
mailbox's current holder (a correction arrives by import as a new holder row).  Each is
dated the day it is issued; then every document issued without its number (these, and any
charge's invoice a crash left unnumbered) is numbered, in one transaction, by
:func:`~worker.services.invoices.issue.number_pending_invoices`, before any file is written.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path

from sqlalchemy import Connection, Engine, select, update

from worker.rules import einvoice
from worker.rules.einvoice import Seller
from worker.services.invoices.issue import (
    SELLER_SETTINGS,
    buyer_from_holder,
    document_of,
    issued,
    number_pending_invoices,
    waiting_reasons,
)
from worker.store.models import Holder, Invoice, InvoiceStatus, Mailbox

_INVOICES = Invoice.__table__
_HOLDERS = Holder.__table__
_MAILBOXES = Mailbox.__table__
#: The reasons that data arriving later can lift (an amount mismatch needs an operator).
_COMPLETABLE = (SELLER_SETTINGS, einvoice.MISSING_ADDRESS, einvoice.MISSING_TAX_ID, einvoice.MISSING_PERSON_NAME)
#: Invoices written per transaction: each batch's files are on disk before it is marked.
EXPORT_BATCH = 500


class SellerMissing(Exception):
    """No seller settings: no invoice can be issued or exported."""

    def __str__(self) -> str:
        return (
            "no invoice can be issued: set PEC_RENEWAL_SELLER_NAME, SELLER_VAT_NUMBER, SELLER_ADDRESS, "
            "SELLER_POSTCODE, SELLER_CITY and SELLER_PROVINCE"
        )


@dataclass(frozen=True)
class WaitingInvoice:
    reference: str
    paid_on: date
    reasons: tuple[str, ...]


@dataclass
class ExportResult:
    written: list[str] = field(default_factory=list)
    issued_now: int = 0
    waiting: list[WaitingInvoice] = field(default_factory=list)


def complete_waiting(engine: Engine, seller: Seller, *, today: date) -> tuple[int, list[WaitingInvoice]]:
    """Issue each waiting invoice whose data are now complete (one transaction each); the others, and why."""
    issued = 0
    still: list[WaitingInvoice] = []
    with engine.connect() as connection:
        ids = (
            connection.execute(
                select(_INVOICES.c.id).where(_INVOICES.c.status == InvoiceStatus.WAITING.value).order_by(_INVOICES.c.id)
            )
            .scalars()
            .all()
        )
    for invoice_id in ids:
        with engine.begin() as connection:
            row = connection.execute(select(_INVOICES).where(_INVOICES.c.id == invoice_id).with_for_update()).one()
            if row.status != InvoiceStatus.WAITING.value:
                continue
            values, reasons = _completion(connection, row, seller, today)
            if values:
                connection.execute(update(_INVOICES).where(_INVOICES.c.id == invoice_id).values(**values))
            if reasons:
                still.append(WaitingInvoice(row.reference, row.paid_on, reasons))
            else:
                issued += 1
    return issued, still


def _completion(connection: Connection, row, seller: Seller, today: date) -> tuple[dict, tuple[str, ...]]:
    if row.kind == einvoice.CREDIT_NOTE:
        corrected = connection.execute(select(_INVOICES.c.status).where(_INVOICES.c.id == row.corrects_invoice_id))
        if corrected.scalar_one() != InvoiceStatus.ISSUED.value:
            return {"waiting_reason": "invoice_waiting"}, ("invoice_waiting",)
        return issued(today), ()
    reasons = tuple(reason for reason in (row.waiting_reason or "").split(",") if reason)
    if any(reason not in _COMPLETABLE for reason in reasons):
        return {}, reasons  # a mismatch of amounts: an operator's case, left as it is
    holder = connection.execute(
        select(_HOLDERS).where(
            _HOLDERS.c.id == select(_MAILBOXES.c.holder_id).where(_MAILBOXES.c.id == row.mailbox_id).scalar_subquery()
        )
    ).one()
    buyer = buyer_from_holder(holder, split_payment=bool(row.buyer.get("split_payment")))
    reasons = waiting_reasons(seller, buyer)
    if reasons:
        return {"waiting_reason": ",".join(reasons)}, reasons
    return {"buyer": buyer.as_dict(), **issued(today)}, ()


def export_invoices(
    engine: Engine,
    seller: Seller | None,
    *,
    since: date,
    out_dir: Path,
    today: date,
    now: datetime,
    include_exported: bool = False,
    progress: Callable[[int], None] | None = None,
) -> ExportResult:
    """Write every issued invoice since ``since`` not yet exported (all with ``include_exported``)
    as ``IT{VAT}_{progressive}.xml`` in ``out_dir``, and mark it exported; SellerMissing without a seller."""
    if seller is None:
        raise SellerMissing()
    result = ExportResult()
    result.issued_now, result.waiting = complete_waiting(engine, seller, today=today)
    with engine.begin() as connection:
        number_pending_invoices(connection)
    out_dir.mkdir(parents=True, exist_ok=True)
    query = (
        select(_INVOICES)
        .where(_INVOICES.c.status == InvoiceStatus.ISSUED.value, _INVOICES.c.issued_on >= since)
        .order_by(_INVOICES.c.id)
        .limit(EXPORT_BATCH)
    )
    if not include_exported:
        query = query.where(_INVOICES.c.exported_at.is_(None))
    last_id = 0
    while True:
        with engine.begin() as connection:
            rows = connection.execute(query.where(_INVOICES.c.id > last_id)).all()
            if not rows:
                break
            corrected = _corrected_of(connection, rows)
            for row in rows:
                name = write_invoice(row, corrected.get(row.corrects_invoice_id), seller, out_dir)
                result.written.append(name)
            connection.execute(
                update(_INVOICES).where(_INVOICES.c.id.in_([row.id for row in rows])).values(exported_at=now)
            )
            last_id = rows[-1].id
        if progress:
            progress(len(rows))
    return result


def _corrected_of(connection: Connection, rows) -> dict:
    ids = {row.corrects_invoice_id for row in rows if row.corrects_invoice_id is not None}
    if not ids:
        return {}
    return {row.id: row for row in connection.execute(select(_INVOICES).where(_INVOICES.c.id.in_(ids)))}


def render_invoice(row, corrected, seller: Seller) -> tuple[str, bytes]:
    """An issued invoice row's file name and XML."""
    progressive = einvoice.progressive(row.id)
    return einvoice.file_name(seller, progressive), einvoice.render_xml(
        document_of(row, corrected), seller, progressive
    )


def write_invoice(row, corrected, seller: Seller, out_dir: Path) -> str:
    """Write one invoice's file (whole or not at all: a temporary file renamed); its name."""
    name, xml = render_invoice(row, corrected, seller)
    temporary = out_dir / f".{name}.tmp"
    temporary.write_bytes(xml)
    os.replace(temporary, out_dir / name)
    return name

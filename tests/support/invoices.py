"""Holders of every kind with their billing address, and the seller settings, for the invoice tests."""

from __future__ import annotations

import dataclasses
from datetime import date

from sqlalchemy import select
from sqlalchemy.orm import Session

from tests.support.factories import make_mailbox
from worker.rules.holder_data import check_holder
from worker.store.models import Holder, Invoice, Mailbox

#: The ``SELLER_*`` settings (make_settings's overrides).
SELLER = {
    "seller_name": "Provider PEC S.p.A.",
    "seller_vat_number": "01234560017",
    "seller_address": "Via Roma 1",
    "seller_postcode": "00184",
    "seller_city": "Roma",
    "seller_province": "RM",
}
BILLING = {
    "billing_address": "Via Garibaldi 10",
    "billing_postcode": "20121",
    "billing_city": "Milano",
    "billing_province": "MI",
    "billing_country": "IT",
}
#: check_holder's arguments for a holder of each kind (with the billing address).
HOLDERS = {
    "private": {"name": "Mario Rossi", "tax_code": "RSSMRA80A01H501U"},
    "company": {"name": "Esempio S.r.l.", "vat_number": "12345670017", "einvoice_code": "ABC1234"},
    "professional": {
        "name": "Laura Bianchi",
        "tax_code": "BNCLRA85M41F205C",
        "vat_number": "09876540015",
        "einvoice_code": "fatture@pec.bianchi.example.it",
    },
    "public_administration": {
        "name": "Comune di Esempio",
        "tax_code": "80012340016",
        "einvoice_code": "UFE7HK",
        "cig": "Z1234567AB",
        "cup": "J12B34000560007",
    },
}


def give_holder(session: Session, mailbox: Mailbox, kind: str, *, billing: bool = True) -> Holder:
    """Make the mailbox's holder one of ``kind`` (checked as the import checks it), with or without its address."""
    data, problems = check_holder(
        kind=kind, reference_email=mailbox.reference_email, **HOLDERS[kind], **(BILLING if billing else {})
    )
    assert data is not None, problems
    holder = Holder(account_id=mailbox.account_id, holder_key=data.holder_key, **_fields(data))
    session.add(holder)
    session.flush()
    mailbox.holder_id = holder.id
    session.flush()
    return holder


def _fields(data) -> dict:
    return dataclasses.asdict(data)


def holder_mailbox(session: Session, kind: str, *, expires_on: date, billing: bool = True, **options) -> Mailbox:
    mailbox = make_mailbox(session, expires_on=expires_on, **options)
    give_holder(session, mailbox, kind, billing=billing)
    return mailbox


def invoices(session: Session) -> list[Invoice]:
    return list(session.scalars(select(Invoice).order_by(Invoice.id)))

"""Holders of every kind with their billing address, the seller settings, and the invoice tests' payments,
exports and renderings.

Registered as a plugin in ``tests/conftest.py``: its fixture is ``seller_settings``.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, date, datetime, timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from tests.support.factories import make_mailbox
from tests.support.orders import TODAY
from tests.support.settings import make_settings
from worker.rules import einvoice
from worker.rules.holder_data import check_holder
from worker.services import payments
from worker.services.invoices.export import export_invoices
from worker.services.runtime import Runtime
from worker.store.models import Holder, Invoice, Mailbox, OutboxMessage, RenewalOrder

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


#: The payment tokens a card or PayPal order is paid with.
TOKENS = {"card": "pm_card_visa", "paypal": "paypal_billing_agreement_ok"}
#: The moment the invoice tests' orders are paid.
PAID_AT = datetime(2027, 3, 1, 10, 0, tzinfo=UTC)


@pytest.fixture
def seller_settings(tmp_path, database_url):
    return make_settings(tmp_path, database_url=database_url, **SELLER)


def seller_env(settings):
    """The CLI's environment on ``settings``'s database and var directory, with the seller settings."""
    return {
        "PEC_RENEWAL_VAR_DIR": str(settings.var_dir),
        "PEC_RENEWAL_DATABASE_URL": settings.database_url,
        **{f"PEC_RENEWAL_{key.upper()}": value for key, value in SELLER.items()},
    }


def name_of(invoice_id: int) -> str:
    """The file name the export gives the invoice or credit note ``invoice_id``."""
    return f"IT01234560017_{einvoice.progressive(invoice_id)}.xml"


def pay(session, settings, order: RenewalOrder, method: str, reference: str | None = None):
    """The order's payment by ``method``, registered at ``PAID_AT``."""
    return payments.register_payment(
        session,
        order_number=order.order_number,
        amount_cents=order.total_cents,
        method=method,
        reference=reference or f"REF {order.order_number}",
        now=PAID_AT,
        today=TODAY,
        settings=settings,
        payment_token=TOKENS.get(method),
    )


def export(settings, engine, out, **options):
    """The invoices issued since ``TODAY``, exported to ``out`` an hour after they were paid."""
    return export_invoices(
        engine, settings.seller, since=TODAY, out_dir=out, today=TODAY, now=PAID_AT + timedelta(hours=1), **options
    )


def render(settings, receipt: OutboxMessage):
    """The outbox message as the runtime on ``settings`` renders it at ``PAID_AT``."""
    return Runtime(settings).renderer.render(
        kind=receipt.kind,
        stage=receipt.stage,
        language=receipt.language,
        to_address=receipt.to_address,
        message_id=receipt.message_id,
        context=receipt.context,
        now=PAID_AT,
    )

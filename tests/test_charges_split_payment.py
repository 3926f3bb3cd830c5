"""A public administration's auto-renew under split payment: the notice, the charge, the receipt, the invoice,
the unpaid order of a failed charge and the auto-renew page all name the taxable amount (PostgreSQL, SMTP on
loopback, frozen clock)."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest
from sqlalchemy import select

from tests.support import fatturapa
from tests.support.charges import CHARGE_DAY, EXPIRES, add_auto_renew, build_runtime, gateway_record, received, walk
from tests.support.invoices import SELLER, give_holder
from worker.rules import pricing
from worker.rules.vocabulary import format_euro
from worker.services.auto_renew_switch import read_auto_renew
from worker.services.invoices.export import export_invoices
from worker.store.models import Invoice, Mailbox, RenewalOrder


@pytest.fixture(params=[True, False], ids=["split", "vat-included"])
def split(request) -> bool:
    return request.param


@pytest.fixture
def pa_runtime(tmp_path, database_url, session_factory, smtp_server, split):
    rt = build_runtime(
        tmp_path, database_url, session_factory, smtp_server, split_payment_for_pa=str(split).lower(), **SELLER
    )
    yield rt
    rt.close()


def public_administration_mailbox(rt, token: str) -> Mailbox:
    mailbox = add_auto_renew(rt, token, reference_email="protocollo@comune.example.it")
    with rt.session_factory() as session, session.begin():
        give_holder(session, session.get_one(Mailbox, mailbox.id), "public_administration")
    return mailbox


def price_of(mailbox: Mailbox) -> pricing.OrderSummary:
    """The renewal's price with the VAT included, worked out here from the catalogue."""
    line = pricing.LineInput(mailbox.address, mailbox.plan, mailbox.extra_space_gb or 0, mailbox.extra_archive_gb or 0)
    return pricing.price_order([line], mailbox.renewal_years or 1)


def euro(cents: int) -> str:
    """As :func:`one_line` reads it: its no-break space is a space there."""
    return format_euro(cents, "it").replace("\u00a0", " ")


def one_line(message) -> str:
    return " ".join(message.get_body(("plain",)).get_content().split())


def test_the_charge_its_emails_and_its_invoice_name_the_taxable_amount(pa_runtime, smtp_server, engine, split):
    mailbox = public_administration_mailbox(pa_runtime, "pm_card_visa")
    price = price_of(mailbox)
    assert price.vat_cents > 0
    charged = price.subtotal_cents if split else price.total_cents

    sent = walk(pa_runtime, smtp_server, date(2027, 2, 25), date(2027, 3, 25))
    assert sent == [(date(2027, 3, 1), "charge-notice", "-30d"), (CHARGE_DAY, "charge-succeeded", "-7d")]
    (charge,) = gateway_record(pa_runtime)
    assert (charge["outcome"], charge["amount_cents"]) == ("succeeded", charged)

    notice, receipt = (one_line(message) for message in received(smtp_server))
    assert f"addebiteremo {euro(charged)} (IVA 22% " in notice
    assert ("(IVA 22% esclusa, in scissione dei pagamenti)" in notice) is split
    assert ("(IVA 22% inclusa)" in notice) is not split
    assert f"Totale: {euro(charged)}" in notice
    assert f"Totale addebitato: {euro(charged)}" in receipt
    # The VAT is shown in both ways: under split payment the administration pays it to the Treasury.
    vat_row = f"IVA 22% (scissione dei pagamenti: la versa l'ente all'Erario): {euro(price.vat_cents)}"
    assert (vat_row in notice, vat_row in receipt) == (split, split)
    if not split:
        assert f"IVA 22%: {euro(price.vat_cents)}" in receipt

    with pa_runtime.session_factory() as session:
        invoice = session.scalars(select(Invoice)).one()
        assert (invoice.status, invoice.paid_cents) == ("issued", charged)
        assert session.get_one(Mailbox, mailbox.id).expires_on == date(2028, 3, 31)
    out = pa_runtime.settings.var_dir / "invoices-out"
    result = export_invoices(
        engine,
        pa_runtime.settings.seller,
        since=CHARGE_DAY,
        out_dir=out,
        today=CHARGE_DAY,
        now=datetime(2027, 3, 24, 12, 0, tzinfo=UTC),
    )
    root = fatturapa.validate((out / result.written[0]).read_bytes())
    assert fatturapa.text(root, ".//FormatoTrasmissione") == "FPA12"
    assert fatturapa.text(root, ".//EsigibilitaIVA") == ("S" if split else "I")
    assert fatturapa.text(root, ".//ImportoTotaleDocumento") == f"{price.total_cents / 100:.2f}"
    assert fatturapa.text(root, ".//ImportoPagamento") == f"{charged / 100:.2f}"


def test_a_failed_charge_leaves_an_order_of_the_same_amount(pa_runtime, smtp_server, split):
    price = price_of(public_administration_mailbox(pa_runtime, "pm_card_chargeDeclined"))
    charged = price.subtotal_cents if split else price.total_cents

    sent = walk(pa_runtime, smtp_server, date(2027, 3, 1), CHARGE_DAY)
    assert [kind for _day, kind, _stage in sent] == ["charge-notice", "charge-failed"]
    with pa_runtime.session_factory() as session:
        order = session.scalars(select(RenewalOrder)).one()
        assert (order.subtotal_cents, order.vat_cents, order.total_cents) == (
            price.subtotal_cents,
            price.vat_cents,
            charged,
        )
    failed = one_line(received(smtp_server)[1])
    assert f"{order.order_number} ({euro(charged)}, " in failed
    assert ("IVA esclusa, in scissione dei pagamenti" in failed) is split
    assert ("IVA inclusa" in failed) is not split


def test_the_auto_renew_page_shows_the_amount_the_charge_will_take(pa_runtime, split):
    mailbox = public_administration_mailbox(pa_runtime, "pm_card_visa")
    price = price_of(mailbox)
    with pa_runtime.session_factory() as session:
        page = read_auto_renew(session, mailbox.id, date(2027, 3, 1), pa_runtime.charge_plan)
    assert page.split_payment is split
    assert page.amount_cents == (price.subtotal_cents if split else price.total_cents)
    assert page.next_charge_on == CHARGE_DAY and mailbox.expires_on == EXPIRES

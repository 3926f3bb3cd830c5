"""Invoices of manual orders on PostgreSQL: written with the payment, numbered without gaps, exported, checked."""

from __future__ import annotations

import threading
from datetime import date, timedelta

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from tests.support import fatturapa
from tests.support.invoices import (
    BILLING,
    HOLDERS,
    PAID_AT,
    SELLER,
    export,
    give_holder,
    holder_mailbox,
    invoices,
    name_of,
    pay,
    render,
    seller_env,
)
from tests.support.orders import TODAY, complete_order
from tests.support.settings import TEST_SECRET_KEYS, make_settings
from worker.cli.main import main
from worker.services.invoices.export import SellerMissing, export_invoices
from worker.services.invoices.issue import next_number
from worker.store.models import Mailbox, OutboxMessage, RenewalOrder

METHODS = {"card": "MP08", "paypal": "MP08", "bank_transfer": "MP05", "postal_slip": "MP18"}


def test_each_method_and_holder_kind_is_invoiced_with_the_payment_valid_and_equal_to_the_order(
    session_factory, engine, seller_settings, tmp_path
):
    paid: dict[int, tuple[RenewalOrder, str, str]] = {}
    with session_factory() as session:
        for kind in HOLDERS:
            for method in METHODS:
                mailbox = holder_mailbox(session, kind, expires_on=TODAY + timedelta(days=20))
                order = complete_order(session, seller_settings, mailbox, method=method, years=2, plan="pro")
                pay(session, seller_settings, order, method)
                session.commit()
                paid[order.id] = (order, kind, method)
        rows = invoices(session)
    assert len(rows) == len(paid) == 16
    # Numbered with the payment, one after the other, in the year of the payment.
    assert [(row.status, row.year, row.number) for row in rows] == [("issued", 2027, n) for n in range(1, 17)]
    assert [row.document_number for row in rows] == [f"{n}/2027" for n in range(1, 17)]

    result = export(seller_settings, engine, tmp_path / "out")
    assert sorted(result.written) == sorted(name_of(row.id) for row in rows)
    for row in rows:
        order, kind, method = paid[row.order_id]
        root = fatturapa.validate((tmp_path / "out" / name_of(row.id)).read_bytes())
        assert fatturapa.text(root, ".//Numero") == row.document_number
        assert fatturapa.text(root, ".//Data") == "2027-03-01"
        assert root.get("versione") == ("FPA12" if kind == "public_administration" else "FPR12")
        assert fatturapa.text(root, ".//ModalitaPagamento") == METHODS[method]
        total = fatturapa.text(root, ".//ImportoTotaleDocumento")
        assert fatturapa.text(root, ".//ImportoPagamento") == f"{order.total_cents / 100:.2f}"
        if kind == "public_administration":  # split payment (the default): the order asked the taxable amount
            assert order.total_cents == order.subtotal_cents == 5000 and order.vat_cents == 1100
            assert (total, fatturapa.text(root, ".//EsigibilitaIVA")) == ("61.00", "S")
        else:
            assert (total, fatturapa.text(root, ".//EsigibilitaIVA")) == ("61.00", "I")
            assert order.total_cents == 6100
        # Two years of a Pro mailbox: one line per year.
        assert fatturapa.texts(root, ".//PrezzoTotale") == ["25.00", "25.00"]
        buyer = root.find(".//CessionarioCommittente")
        confirmed = order.holder_data
        if kind == "private":
            name = f"{fatturapa.text(buyer, './/Nome')} {fatturapa.text(buyer, './/Cognome')}"
            assert name == confirmed["name"] and fatturapa.text(buyer, ".//Denominazione") is None
        else:
            assert fatturapa.text(buyer, ".//Denominazione") == confirmed["name"]
        assert fatturapa.text(buyer, ".//CodiceFiscale") == confirmed["tax_code"]
        assert fatturapa.text(buyer, ".//IdFiscaleIVA/IdCodice") == confirmed["vat_number"]
        assert fatturapa.text(buyer, ".//Indirizzo") == confirmed["billing_address"] == BILLING["billing_address"]
        assert fatturapa.text(buyer, ".//CAP") == confirmed["billing_postcode"]
        assert fatturapa.text(buyer, ".//Comune") == confirmed["billing_city"]
        if kind == "public_administration":
            assert fatturapa.text(root, ".//CodiceDestinatario") == confirmed["office_code"]
            assert fatturapa.text(root, ".//CodiceCIG") == confirmed["cig"]
            assert fatturapa.text(root, ".//CodiceCUP") == confirmed["cup"]


def test_export_marks_each_file_and_writes_none_again_unless_all(session_factory, engine, seller_settings, tmp_path):
    with session_factory() as session:
        for kind in ("private", "company"):
            order = complete_order(session, seller_settings, holder_mailbox(session, kind, expires_on=TODAY))
            pay(session, seller_settings, order, "bank_transfer")
            session.commit()
    first = export(seller_settings, engine, tmp_path / "a")
    assert len(first.written) == 2
    with session_factory() as session:
        assert all(row.exported_at is not None for row in invoices(session))
    assert export(seller_settings, engine, tmp_path / "b").written == []
    assert not (tmp_path / "b").exists() or list((tmp_path / "b").iterdir()) == []
    again = export(seller_settings, engine, tmp_path / "c", include_exported=True)
    assert sorted(again.written) == sorted(first.written)
    assert (tmp_path / "c" / first.written[0]).read_bytes() == (tmp_path / "a" / first.written[0]).read_bytes()
    # --since leaves out what was issued before the date.
    later = export_invoices(
        engine,
        seller_settings.seller,
        since=TODAY + timedelta(days=1),
        out_dir=tmp_path / "d",
        today=TODAY,
        now=PAID_AT,
        include_exported=True,
    )
    assert later.written == []


def test_the_export_command_writes_reports_and_refuses_without_seller(
    session_factory, database_url, seller_settings, tmp_path
):
    with session_factory() as session:
        order = complete_order(session, seller_settings, holder_mailbox(session, "company", expires_on=TODAY))
        pay(session, seller_settings, order, "postal_slip")
        session.commit()
    env = {
        "PEC_RENEWAL_VAR_DIR": str(tmp_path / "var"),
        "PEC_RENEWAL_DATABASE_URL": database_url,
        **{f"PEC_RENEWAL_{key.upper()}": value for key, value in SELLER.items()},
    }
    out = tmp_path / "sdi"
    arguments = ["invoices", "export", "--since", "2027-01-01", "--out", str(out)]
    result = CliRunner().invoke(main, arguments, env=env)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().splitlines()[-1] == f"1 invoice(s) written to {out}"
    assert [path.name for path in out.iterdir()] == ["IT01234560017_00001.xml"]
    result = CliRunner().invoke(main, arguments, env=env)
    assert result.stdout.strip().splitlines()[-1] == f"0 invoice(s) written to {out}"
    result = CliRunner().invoke(main, [*arguments, "--all"], env=env)
    assert result.stdout.strip().splitlines()[-1] == f"1 invoice(s) written to {out}"

    without = {key: value for key, value in env.items() if "SELLER" not in key}
    result = CliRunner().invoke(main, arguments, env=without)
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [f"pec-renewal: invoices not exported: {SellerMissing()}"]


def test_a_payment_without_the_sellers_settings_renews_and_its_invoice_waits(
    session_factory, engine, settings, seller_settings, tmp_path
):
    with session_factory() as session:
        mailbox = holder_mailbox(session, "private", expires_on=TODAY)
        order = complete_order(session, settings, mailbox)
        result = pay(session, settings, order, "bank_transfer")
        session.commit()
        assert result.registered and result.renewed[0].new_expires_on == date(2028, 3, 1)
        [row] = invoices(session)
        assert (row.status, row.waiting_reason, row.number) == ("waiting", "seller_settings", None)
    with pytest.raises(SellerMissing):
        export(settings, engine, tmp_path / "out")
    # The settings come: the export issues it, numbered and dated on that day.
    result = export(seller_settings, engine, tmp_path / "out")
    assert result.issued_now == 1 and len(result.written) == 1
    with session_factory() as session:
        [row] = invoices(session)
        assert (row.status, row.document_number, row.issued_on) == ("issued", "1/2027", TODAY)


def test_a_holder_without_a_billing_address_is_renewed_and_invoiced_once_the_import_gives_it(
    session_factory, engine, seller_settings, tmp_path
):
    with session_factory() as session:
        mailbox = holder_mailbox(session, "company", expires_on=TODAY, billing=False)
        order = complete_order(session, seller_settings, mailbox)
        pay(session, seller_settings, order, "bank_transfer")
        session.commit()
        [row] = invoices(session)
        assert (row.status, row.waiting_reason) == ("waiting", "billing_address")
        mailbox_id = row.mailbox_id
    result = export(seller_settings, engine, tmp_path / "out")
    assert result.written == []
    assert [(waiting.reference, waiting.reasons) for waiting in result.waiting] == [
        (order.order_number, ("billing_address",))
    ]
    report = CliRunner().invoke(main, ["report", "--json", "--date", "2027-03-01"], env=seller_env(seller_settings))
    assert '"invoices_waiting": {"billing_address": 1}' in report.stdout
    # New holder data with the address (an import writes a new holder row for the mailbox).
    with session_factory() as session:
        give_holder(session, session.get(Mailbox, mailbox_id), "company")
        session.commit()
    result = export(seller_settings, engine, tmp_path / "out")
    assert result.issued_now == 1 and result.waiting == []
    root = fatturapa.validate((tmp_path / "out" / result.written[0]).read_bytes())
    assert fatturapa.text(root, ".//CessionarioCommittente//Indirizzo") == BILLING["billing_address"]


def test_a_number_taken_by_a_transaction_that_rolls_back_is_given_again(session_factory, engine):
    """The counter row is locked until commit: a second transaction waits, then takes the number the
    first gave back by rolling back; nothing is skipped."""
    first = engine.connect()
    first.begin()
    assert next_number(first, 2027) == 1
    got: list[int] = []
    started = threading.Event()

    def second() -> None:
        with engine.begin() as connection:
            started.set()
            got.append(next_number(connection, 2027))

    thread = threading.Thread(target=second)
    thread.start()
    started.wait(5)
    thread.join(0.5)
    assert thread.is_alive(), "the second transaction waits for the counter row"
    first.rollback()
    first.close()
    thread.join(10)
    assert got == [1]
    with engine.begin() as connection:
        assert next_number(connection, 2027) == 2
        assert next_number(connection, 2028) == 1  # each calendar year starts again


def test_two_concurrent_registrations_take_consecutive_numbers(session_factory, seller_settings):
    with session_factory() as session:
        orders = [
            complete_order(session, seller_settings, holder_mailbox(session, "private", expires_on=TODAY))
            for _ in range(2)
        ]
        session.commit()
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def register(order: RenewalOrder) -> None:
        try:
            with session_factory() as session:
                barrier.wait(5)
                pay(session, seller_settings, order, "bank_transfer")
                session.commit()
        except BaseException as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=register, args=(order,)) for order in orders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    with session_factory() as session:
        rows = invoices(session)
    assert sorted(row.number for row in rows) == [1, 2]
    assert {row.order_id for row in rows} == {order.id for order in orders}


def test_check_says_whether_invoices_can_be_issued(tmp_path, database_url, session_factory):
    env = {
        "PEC_RENEWAL_VAR_DIR": str(tmp_path / "var"),
        "PEC_RENEWAL_DATABASE_URL": database_url,
        "PEC_RENEWAL_SECRET_KEYS": TEST_SECRET_KEYS,
    }
    without = CliRunner().invoke(main, ["check"], env=env)
    [line] = [line for line in without.output.splitlines() if line.startswith("invoices")]
    assert line.split(None, 2) == ["invoices", "WARN", f"{SellerMissing()}; paid renewals' invoices wait"]
    with_seller = CliRunner().invoke(
        main, ["check"], env={**env, **{f"PEC_RENEWAL_{key.upper()}": value for key, value in SELLER.items()}}
    )
    [line] = [line for line in with_seller.output.splitlines() if line.startswith("invoices")]
    assert line.split(None, 2) == ["invoices", "ok", "seller IT01234560017, RF01"]


@pytest.mark.parametrize("split", [True, False])
def test_a_public_administrations_order_and_invoice_follow_the_split_payment_setting(
    session_factory, engine, tmp_path, database_url, split
):
    settings = make_settings(tmp_path, database_url=database_url, split_payment_for_pa=str(split).lower(), **SELLER)
    with session_factory() as session:
        mailbox = holder_mailbox(session, "public_administration", expires_on=TODAY + timedelta(days=20))
        order = complete_order(session, settings, mailbox, method="bank_transfer", plan="pro")
        assert (order.subtotal_cents, order.vat_cents, order.total_cents) == (2500, 550, 2500 if split else 3050)
        confirmation = session.scalars(select(OutboxMessage).where(OutboxMessage.kind == "order-confirmation")).one()
        text = " ".join(render(settings, confirmation).text.split())
        assert ("IVA 22% (scissione dei pagamenti: la versa l'ente all'Erario): 5,50" in text) is split
        assert f"Importo: {'25,00' if split else '30,50'}" in text
        pay(session, settings, order, "bank_transfer")
        session.commit()
        receipt = session.scalars(select(OutboxMessage).where(OutboxMessage.kind == "renewal-completed")).one()
        html = render(settings, receipt).html
    assert ("Netto a pagare, IVA esclusa (scissione dei pagamenti, art. 17-ter DPR 633/1972)" in html) is split
    result = export(settings, engine, tmp_path / "out")
    root = fatturapa.validate((tmp_path / "out" / result.written[0]).read_bytes())
    assert fatturapa.text(root, ".//EsigibilitaIVA") == ("S" if split else "I")
    assert fatturapa.text(root, ".//ImportoTotaleDocumento") == "30.50"
    assert fatturapa.text(root, ".//ImportoPagamento") == ("25.00" if split else "30.50")

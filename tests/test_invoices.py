"""Invoices of paid renewals on PostgreSQL: written with the payment, numbered without gaps, exported."""

from __future__ import annotations

import threading
from datetime import UTC, date, datetime, timedelta

import pytest
from click.testing import CliRunner
from sqlalchemy import event, select

from tests.support import fatturapa
from tests.support.gateway_webhooks import StripeServer
from tests.support.invoices import BILLING, HOLDERS, SELLER, give_holder, holder_mailbox, invoices
from tests.support.orders import TODAY, complete_order
from tests.support.renewals import charge, charge_batch
from tests.support.settings import TEST_SECRET_KEYS, make_settings
from worker.cli.main import main
from worker.rules import einvoice
from worker.services import payments
from worker.services.invoices import number_pending_invoices, record_credit_note
from worker.services.invoices.export import SellerMissing, export_invoices
from worker.services.invoices.issue import next_number
from worker.services.payments.gateway_events import GatewayNotice, NoticeKind
from worker.services.payments.refunds import REQUESTED, start_refund
from worker.services.payments.webhooks import record_event
from worker.services.runtime import Runtime
from worker.store.models import GatewayRefund, Holder, Mailbox, NoticeLedgerEntry, OutboxMessage, RenewalOrder

METHODS = {"card": "MP08", "paypal": "MP08", "bank_transfer": "MP05", "postal_slip": "MP18"}
TOKENS = {"card": "pm_card_visa", "paypal": "paypal_billing_agreement_ok"}
PAID_AT = datetime(2027, 3, 1, 10, 0, tzinfo=UTC)


@pytest.fixture
def seller_settings(tmp_path, database_url):
    return make_settings(tmp_path, database_url=database_url, **SELLER)


def name_of(invoice_id: int) -> str:
    return f"IT01234560017_{einvoice.progressive(invoice_id)}.xml"


def pay(session, settings, order: RenewalOrder, method: str, reference: str | None = None):
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
    return export_invoices(
        engine, settings.seller, since=TODAY, out_dir=out, today=TODAY, now=PAID_AT + timedelta(hours=1), **options
    )


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
    report = CliRunner().invoke(main, ["report", "--json", "--date", "2027-03-01"], env=_env(seller_settings))
    assert '"invoices_waiting": {"billing_address": 1}' in report.stdout
    # New holder data with the address (an import writes a new holder row for the mailbox).
    with session_factory() as session:
        give_holder(session, session.get(Mailbox, mailbox_id), "company")
        session.commit()
    result = export(seller_settings, engine, tmp_path / "out")
    assert result.issued_now == 1 and result.waiting == []
    root = fatturapa.validate((tmp_path / "out" / result.written[0]).read_bytes())
    assert fatturapa.text(root, ".//CessionarioCommittente//Indirizzo") == BILLING["billing_address"]


def _env(settings):
    return {
        "PEC_RENEWAL_VAR_DIR": str(settings.var_dir),
        "PEC_RENEWAL_DATABASE_URL": settings.database_url,
        **{f"PEC_RENEWAL_{key.upper()}": value for key, value in SELLER.items()},
    }


def test_an_auto_renew_charge_is_invoiced_and_its_receipt_carries_the_courtesy_copy(
    session_factory, engine, seller_settings, tmp_path
):
    charge_day = date(2027, 3, 24)
    with session_factory() as session:
        mailbox = holder_mailbox(
            session,
            "professional",
            expires_on=date(2027, 3, 31),
            auto_renew=True,
            payment_method="pm_card_visa",
            address="studio@pec.example.it",
        )
        session.commit()
    result = charge_batch(session_factory, ["studio@pec.example.it"], charge_day, seller=seller_settings.seller)
    assert result.outcomes == {"succeeded": 1} and result.invoices_numbered == 1
    with session_factory() as session:
        [row] = invoices(session)
        assert (row.status, row.document_number, row.issued_on, row.payment_method) == (
            "issued",
            "1/2027",
            charge_day,
            "card",
        )
        assert row.charge_intent_id is not None and row.order_id is None
        receipt = session.scalars(select(OutboxMessage).where(OutboxMessage.kind == "charge-succeeded")).one()
        rendered = render(seller_settings, receipt)
    text = " ".join(rendered.text.split())
    assert "tramite il Sistema di Interscambio (SDI)" in text and "fattura n. 1/2027 del 24 marzo 2027" in text
    assert "Copia di cortesia della fattura n. 1/2027" in rendered.html
    assert "Laura Bianchi" in rendered.html and "Totale documento" in rendered.html and "6,10" in rendered.html
    result = export(seller_settings, engine, tmp_path / "out")
    root = fatturapa.validate((tmp_path / "out" / result.written[0]).read_bytes())
    assert fatturapa.text(root, ".//ImportoTotaleDocumento") == "6.10"
    assert fatturapa.text(root, ".//PECDestinatario") == HOLDERS["professional"]["einvoice_code"]
    assert fatturapa.texts(root, ".//DataInizioPeriodo") == ["2027-04-01"]
    assert mailbox.id == row.mailbox_id


def render(settings, receipt: OutboxMessage):
    return Runtime(settings).renderer.render(
        kind=receipt.kind,
        stage=receipt.stage,
        language=receipt.language,
        to_address=receipt.to_address,
        message_id=receipt.message_id,
        context=receipt.context,
        now=PAID_AT,
    )


def receipt_of(session, mailbox_id: int) -> OutboxMessage:
    """The mailbox's charge-succeeded receipt, through its ledger row."""
    return session.scalars(
        select(OutboxMessage)
        .join(NoticeLedgerEntry, NoticeLedgerEntry.outbox_message_id == OutboxMessage.id)
        .where(NoticeLedgerEntry.mailbox_id == mailbox_id, NoticeLedgerEntry.kind == "charge-succeeded")
    ).one()


CHARGED = {
    "private": "privato@pec.example.it",
    "company": "azienda@pec.example.it",
    "professional": "studio@pec.example.it",
}


def auto_renew_mailboxes(session_factory) -> dict[str, int]:
    with session_factory() as session:
        ids = {
            kind: holder_mailbox(
                session,
                kind,
                expires_on=date(2027, 3, 31),
                auto_renew=True,
                payment_method="pm_card_visa",
                address=address,
            ).id
            for kind, address in CHARGED.items()
        }
        session.commit()
    return ids


def test_a_charge_batch_numbers_its_invoices_once_in_the_order_of_payment(session_factory, engine, seller_settings):
    """The charges' transactions write their invoices unnumbered; the batch numbers them in one step that
    locks the year's counter once, in the order of payment, and fills each receipt's courtesy copy."""
    auto_renew_mailboxes(session_factory)
    counters: list[str] = []

    def seen(_connection, _cursor, statement, *_args):
        if "invoice_counters" in statement:
            counters.append(statement.split()[0])

    event.listen(engine, "before_cursor_execute", seen)
    try:
        result = charge_batch(
            session_factory, list(CHARGED.values()), date(2027, 3, 24), seller=seller_settings.seller, concurrency=3
        )
    finally:
        event.remove(engine, "before_cursor_execute", seen)
    assert result.outcomes == {"succeeded": 3} and result.invoices_numbered == 3
    # The year's row is absent: the step's update finds none, makes it, and takes the three numbers in one update.
    assert counters == ["UPDATE", "INSERT", "UPDATE"]
    with session_factory() as session:
        rows = invoices(session)
        assert [row.document_number for row in rows] == ["1/2027", "2/2027", "3/2027"]  # ids: the order of payment
        for row in rows:
            receipt = receipt_of(session, row.mailbox_id)
            assert receipt.context["invoice"]["number"] == row.document_number
            assert f"fattura n. {row.document_number} del 24 marzo 2027" in " ".join(
                render(seller_settings, receipt).text.split()
            )


def test_an_invoice_left_unnumbered_by_a_crash_is_numbered_by_the_next_step_without_a_gap(
    session_factory, engine, seller_settings, tmp_path
):
    """A charge committed without its batch's numbering step (the process died between the two): its invoice
    is issued unnumbered and its receipt says the number is being assigned; the next batch numbers it first,
    then its own, and ``invoices export`` numbers another one before writing it."""
    ids = auto_renew_mailboxes(session_factory)
    charge_day = date(2027, 3, 24)
    assert charge(session_factory, CHARGED["private"], charge_day, seller=seller_settings.seller).outcome == "succeeded"
    with session_factory() as session:
        [row] = invoices(session)
        assert (row.status, row.number, row.document_number) == ("issued", None, None)
        rendered = render(seller_settings, receipt_of(session, ids["private"]))
    text = " ".join(rendered.text.split())
    assert "fattura del 24 marzo 2027, il cui numero è in corso di assegnazione" in text and "None" not in text
    assert "Copia di cortesia della fattura del 24 marzo 2027 (numero in corso di assegnazione)" in rendered.html

    result = charge_batch(session_factory, [CHARGED["company"]], charge_day, seller=seller_settings.seller)
    assert result.invoices_numbered == 2
    assert charge(session_factory, CHARGED["professional"], charge_day, seller=seller_settings.seller).outcome == (
        "succeeded"
    )
    written = export_invoices(
        engine, seller_settings.seller, since=charge_day, out_dir=tmp_path / "out", today=charge_day, now=PAID_AT
    ).written
    assert len(written) == 3
    with session_factory() as session:
        numbers = {row.mailbox_id: row.document_number for row in invoices(session)}
        assert numbers == {ids["private"]: "1/2027", ids["company"]: "2/2027", ids["professional"]: "3/2027"}
        for mailbox_id, number in numbers.items():
            assert receipt_of(session, mailbox_id).context["invoice"]["number"] == number
    with session_factory() as session, session.begin():
        assert number_pending_invoices(session) == []  # nothing left: a further step gives no number


def test_a_refund_gets_a_credit_note_that_refers_to_its_invoice(session_factory, engine, seller_settings, tmp_path):
    with session_factory() as session:
        order = complete_order(session, seller_settings, holder_mailbox(session, "company", expires_on=TODAY))
        pay(session, seller_settings, order, "card")
        session.commit()
        [invoice] = invoices(session)
    with engine.begin() as connection:
        note = record_credit_note(
            connection,
            invoice_id=invoice.id,
            refunded_cents=300,
            refund_key="refund:1",
            seller=seller_settings.seller,
            today=TODAY + timedelta(days=2),
            now=PAID_AT,
        )
        again = record_credit_note(
            connection,
            invoice_id=invoice.id,
            refunded_cents=300,
            refund_key="refund:1",
            seller=seller_settings.seller,
            today=TODAY + timedelta(days=2),
            now=PAID_AT,
        )
    assert again == note and note.document_number == "2/2027"
    result = export(seller_settings, engine, tmp_path / "out")
    assert len(result.written) == 2
    root = fatturapa.validate((tmp_path / "out" / name_of(note.id)).read_bytes())
    assert fatturapa.text(root, ".//TipoDocumento") == "TD04"
    assert fatturapa.text(root, ".//DatiFattureCollegate/IdDocumento") == "1/2027"
    assert fatturapa.text(root, ".//ImportoTotaleDocumento") == "3.00"


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


def paid_by_card(session, seller_settings, kind: str, payment_intent: str, *, today: date) -> RenewalOrder:
    """An order of a ``kind`` holder's mailbox, paid by card on Stripe (``stripe:{payment_intent}``) and invoiced."""
    mailbox = holder_mailbox(session, kind, expires_on=today + timedelta(days=40))
    order = complete_order(session, seller_settings, mailbox, method="card", today=today)
    payments.register_payment(
        session,
        order_number=order.order_number,
        amount_cents=order.total_cents,
        method="card",
        reference=f"stripe:{payment_intent}",
        now=PAID_AT,
        today=today,
        settings=seller_settings,
    )
    return order


def test_a_requested_refund_through_the_gateway_gets_its_credit_note(
    session_factory, database_url, seller_settings, tmp_path
):
    today = date.today()  # the CLI runs on the wall clock
    with session_factory() as session:
        order = paid_by_card(session, seller_settings, "company", "pi_invoiced", today=today)
        session.commit()
    stripe = StripeServer().start()
    try:
        stripe.paid("pi_invoiced", order.total_cents, order_number=order.order_number)
        env = {
            **_env(seller_settings),
            "PEC_RENEWAL_SECRET_KEYS": TEST_SECRET_KEYS,
            "PEC_RENEWAL_PAYMENT_GATEWAY": "stripe",
            "PEC_RENEWAL_STRIPE_API_KEY": "sk_test_local",
            "PEC_RENEWAL_STRIPE_API_BASE": stripe.url,
        }
        result = CliRunner().invoke(main, ["payments", "refund", order.order_number, "--amount", "1,22"], env=env)
        assert result.exit_code == 0, result.output
    finally:
        stripe.stop()
    with session_factory() as session:
        invoice, note = invoices(session)
    assert (note.kind, note.status, note.corrects_invoice_id, note.paid_cents) == ("TD04", "issued", invoice.id, 122)
    assert (note.subtotal_cents, note.vat_cents) == (100, 22)
    out = tmp_path / "out"
    export_invoices(
        engine_of(session_factory), seller_settings.seller, since=today, out_dir=out, today=today, now=PAID_AT
    )
    root = fatturapa.validate((out / name_of(note.id)).read_bytes())
    assert fatturapa.text(root, ".//DatiFattureCollegate/IdDocumento") == invoice.document_number


def engine_of(session_factory):
    with session_factory() as session:
        return session.get_bind()


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


def test_a_refund_the_gateway_confirms_later_by_webhook_gets_its_credit_note(session_factory, seller_settings):
    """A requested refund the gateway first accepted as pending: its ``charge.refunded`` event settles
    it, and the credit note is written with that event, as with an immediate success."""
    with session_factory() as session:
        order = paid_by_card(session, seller_settings, "private", "pi_later", today=TODAY)
        refund = start_refund(
            session,
            gateway="stripe",
            order=order,
            payment_reference="pi_later",
            amount_cents=order.total_cents,
            currency="EUR",
            kind=REQUESTED,
            reason="the holder asked",
            now=PAID_AT,
        )
        refund.status = "pending"
        session.commit()
        assert [row.kind for row in invoices(session)] == ["TD01"]
    notice = GatewayNotice(
        gateway="stripe",
        event_id="evt_refunded_later",
        event_type="charge.refunded",
        kind=NoticeKind.REFUNDED,
        order_number=order.order_number,
        payment_reference="pi_later",
    )
    for _ in range(2):  # the event again changes nothing: one credit note
        with session_factory() as session:
            record_event(session, notice, now=PAID_AT, today=TODAY, settings=seller_settings)
            session.commit()
    with session_factory() as session:
        invoice, note = invoices(session)
        status = session.get(GatewayRefund, refund.id).status
    assert status == "succeeded"
    assert (note.kind, note.corrects_invoice_id, note.paid_cents) == ("TD04", invoice.id, order.total_cents)


def test_the_credit_notes_of_an_invoice_never_add_up_to_more_than_was_paid(session_factory, engine, seller_settings):
    with session_factory() as session:
        order = complete_order(session, seller_settings, holder_mailbox(session, "company", expires_on=TODAY))
        pay(session, seller_settings, order, "card")
        session.commit()
        [invoice] = invoices(session)

    def note(key: str, cents: int):
        with engine.begin() as connection:
            return record_credit_note(
                connection,
                invoice_id=invoice.id,
                refunded_cents=cents,
                refund_key=key,
                seller=seller_settings.seller,
                today=TODAY,
                now=PAID_AT,
            )

    note("refund:1", invoice.paid_cents - 100)
    with pytest.raises(ValueError, match="1.00 EUR of it is not credited yet"):
        note("refund:2", 101)
    assert note("refund:3", 100).document_number == "3/2027"
    with session_factory() as session:
        assert sorted(row.paid_cents for row in invoices(session)) == [
            100,
            invoice.paid_cents - 100,
            invoice.paid_cents,
        ]


def test_a_private_persons_invoice_and_courtesy_copy_name_nome_and_cognome_once_the_tax_code_agrees(
    session_factory, engine, seller_settings, tmp_path
):
    charge_day = date(2027, 3, 24)
    with session_factory() as session:
        mailbox = holder_mailbox(
            session, "private", expires_on=date(2027, 3, 31), auto_renew=True, payment_method="pm_card_visa"
        )
        holder = session.get_one(Holder, mailbox.holder_id)
        holder.name, holder.holder_key = "Mario Rosi", "misspelt"  # not the name the tax code was made from
        session.commit()
        address = mailbox.address
    charge_batch(session_factory, [address], charge_day, seller=seller_settings.seller)
    with session_factory() as session:
        [row] = invoices(session)
        assert (row.status, row.waiting_reason) == ("waiting", "person_name")
        receipt = session.scalars(select(OutboxMessage).where(OutboxMessage.kind == "charge-succeeded")).one()
        assert "Copia di cortesia" not in render(seller_settings, receipt).html
        give_holder(session, session.get(Mailbox, mailbox.id), "private")  # the import corrects the name
        session.commit()

    result = export(seller_settings, engine, tmp_path / "out")
    assert result.issued_now == 1 and result.waiting == []
    root = fatturapa.validate((tmp_path / "out" / result.written[0]).read_bytes())
    registry = root.find(".//CessionarioCommittente/DatiAnagrafici/Anagrafica")
    assert [(child.tag, child.text) for child in registry] == [("Nome", "Mario"), ("Cognome", "Rossi")]


def test_a_private_persons_receipt_names_nome_and_cognome_in_its_courtesy_copy(session_factory, seller_settings):
    with session_factory() as session:
        mailbox = holder_mailbox(
            session, "private", expires_on=date(2027, 3, 31), auto_renew=True, payment_method="pm_card_visa"
        )
        session.commit()
        address = mailbox.address
    charge_batch(session_factory, [address], date(2027, 3, 24), seller=seller_settings.seller)
    with session_factory() as session:
        receipt = session.scalars(select(OutboxMessage).where(OutboxMessage.kind == "charge-succeeded")).one()
        html = render(seller_settings, receipt).html
    assert "Copia di cortesia della fattura n. 1/2027" in html
    assert "Nome Mario<br>Cognome Rossi<br>" in html


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

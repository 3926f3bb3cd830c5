"""Invoices of auto-renew charges: numbered by their batch or after a crash, and their receipts' courtesy copies."""

from __future__ import annotations

from datetime import date

from sqlalchemy import event, select

from tests.support import fatturapa
from tests.support.invoices import (
    HOLDERS,
    PAID_AT,
    export,
    give_holder,
    holder_mailbox,
    invoices,
    render,
)
from tests.support.renewals import charge, charge_batch
from worker.services.invoices import number_pending_invoices
from worker.services.invoices.export import export_invoices
from worker.store.models import Holder, Mailbox, NoticeLedgerEntry, OutboxMessage


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

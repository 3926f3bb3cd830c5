"""The FatturaPA documents as the pure rule writes them, validated against the official schema (offline)."""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import date

import pytest
import xmlschema

from tests.support import fatturapa
from tests.support.invoices import BILLING, HOLDERS
from worker.rules import einvoice, pricing
from worker.rules.einvoice import Address, Buyer, Seller
from worker.rules.holder_data import check_holder
from worker.services import demo

SELLER = Seller("Provider PEC S.p.A.", "01234560017", Address("Via Roma 1", "00184", "Roma", "RM"))
ISSUED_ON = date(2027, 3, 1)
#: Each payment method and its ModalitaPagamento.
METHODS = {"card": "MP08", "paypal": "MP08", "bank_transfer": "MP05", "postal_slip": "MP18"}


def buyer_of(kind: str, **billing: str) -> Buyer:
    data, problems = check_holder(
        kind=kind, reference_email="titolare@example.it", **HOLDERS[kind], **{**BILLING, **billing}
    )
    assert data is not None, problems
    address = Address(
        data.billing_address, data.billing_postcode, data.billing_city, data.billing_province, data.billing_country
    )
    fields = ("tax_code", "vat_number", "sdi_code", "einvoice_pec", "office_code", "cig", "cup")
    return Buyer(kind=data.kind, name=data.name, address=address, **{name: getattr(data, name) for name in fields})


def an_invoice(buyer: Buyer, method: str = "card", years: int = 2) -> tuple[einvoice.InvoiceDocument, int]:
    order = pricing.price_order(
        [pricing.LineInput("studio@pec.example.it", "pro", 3, 5), pricing.LineInput("info@pec.example.it", "standard")],
        years,
    )
    lines = einvoice.lines_for(
        order.lines, {"studio@pec.example.it": date(2027, 3, 31), "info@pec.example.it": date(2027, 4, 15)}
    )
    document = einvoice.build_invoice(
        number="7/2027",
        issued_on=ISSUED_ON,
        buyer=buyer,
        lines=lines,
        paid_cents=order.total_cents,
        payment_method=method,
        reference="PEC-2027-000042",
    )
    return document, order.total_cents


def cents(text: str | None) -> int:
    assert text is not None and re.fullmatch(r"-?\d+\.\d{2}", text), text
    whole, part = text.split(".")
    return int(whole) * 100 + int(part)


def test_the_local_schema_takes_the_reference_example_and_refuses_it_without_its_number():
    fatturapa.schema().validate(str(fatturapa.EXAMPLE_FILE))
    broken = fatturapa.EXAMPLE_FILE.read_bytes().replace(b"<Numero>2025/000123</Numero>", b"")
    with pytest.raises(xmlschema.XMLSchemaValidationError):
        fatturapa.validate(broken)


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("kind", sorted(HOLDERS))
def test_each_method_and_holder_kind_gives_a_valid_invoice_whose_totals_are_the_amount_paid(kind, method):
    buyer = buyer_of(kind)
    document, paid = an_invoice(buyer, method)
    root = fatturapa.validate(einvoice.render_xml(document, SELLER, einvoice.progressive(42)))

    public = kind == "public_administration"
    assert root.get("versione") == ("FPA12" if public else "FPR12")
    assert fatturapa.text(root, ".//FormatoTrasmissione") == root.get("versione")
    assert fatturapa.text(root, ".//TipoDocumento") == "TD01"
    assert fatturapa.text(root, ".//ModalitaPagamento") == METHODS[method]
    # Totals: the lines, the summary and the payment all come to the amount paid, to the cent.
    line_totals = [cents(value) for value in fatturapa.texts(root, ".//DettaglioLinee/PrezzoTotale")]
    taxable = cents(fatturapa.text(root, ".//DatiRiepilogo/ImponibileImporto"))
    tax = cents(fatturapa.text(root, ".//DatiRiepilogo/Imposta"))
    assert sum(line_totals) == taxable
    assert tax == (taxable * 22 + 50) // 100
    assert taxable + tax == paid
    assert cents(fatturapa.text(root, ".//ImportoTotaleDocumento")) == paid
    assert cents(fatturapa.text(root, ".//ImportoPagamento")) == paid
    # One line per mailbox and year, and per extra and year: (plan + space + archive) x 2 years + plan x 2.
    assert len(line_totals) == 8
    assert fatturapa.texts(root, ".//DettaglioLinee/DataInizioPeriodo")[:2] == ["2027-04-01", "2028-04-01"]
    # The buyer as the holder data give it.
    buyer_part = root.find(".//CessionarioCommittente")
    if kind == "private":  # a natural person without a VAT number: Nome and Cognome
        assert fatturapa.text(buyer_part, ".//Anagrafica/Nome") == "Mario"
        assert fatturapa.text(buyer_part, ".//Anagrafica/Cognome") == "Rossi"
        assert buyer_part.find(".//Denominazione") is None
    else:
        assert fatturapa.text(buyer_part, ".//Denominazione") == HOLDERS[kind]["name"]
        assert buyer_part.find(".//Anagrafica/Nome") is None
    assert fatturapa.text(buyer_part, ".//CodiceFiscale") == HOLDERS[kind].get("tax_code")
    assert fatturapa.text(buyer_part, ".//IdFiscaleIVA/IdCodice") == HOLDERS[kind].get("vat_number")
    assert fatturapa.text(buyer_part, ".//Sede/Indirizzo") == BILLING["billing_address"]
    assert fatturapa.text(buyer_part, ".//Sede/CAP") == BILLING["billing_postcode"]
    assert fatturapa.text(buyer_part, ".//Sede/Comune") == BILLING["billing_city"]
    assert fatturapa.text(buyer_part, ".//Sede/Provincia") == BILLING["billing_province"]
    # Where SDI delivers it.
    expected_code = {
        "private": "0000000",
        "company": "ABC1234",
        "professional": "0000000",
        "public_administration": "UFE7HK",
    }[kind]
    assert fatturapa.text(root, ".//CodiceDestinatario") == expected_code
    assert (
        fatturapa.text(root, ".//PECDestinatario") == HOLDERS[kind]["einvoice_code"]
        if kind == "professional"
        else (fatturapa.text(root, ".//PECDestinatario") is None)
    )
    if public:
        assert fatturapa.text(root, ".//DatiOrdineAcquisto/CodiceCIG") == "Z1234567AB"
        assert fatturapa.text(root, ".//DatiOrdineAcquisto/CodiceCUP") == "J12B34000560007"
    else:
        assert root.find(".//DatiOrdineAcquisto") is None


def test_a_buyer_abroad_is_delivered_by_the_xxxxxxx_code_with_a_placeholder_postcode():
    buyer = buyer_of(
        "company", billing_country="FR", billing_postcode="75008", billing_province="", billing_city="Paris"
    )
    document, _paid = an_invoice(buyer)
    root = fatturapa.validate(einvoice.render_xml(document, SELLER, "00001"))
    assert fatturapa.text(root, ".//CodiceDestinatario") == "XXXXXXX"
    sede = root.find(".//CessionarioCommittente/Sede")
    assert (fatturapa.text(sede, "CAP"), fatturapa.text(sede, "Comune"), fatturapa.text(sede, "Nazione")) == (
        "00000",
        "75008 Paris",
        "FR",
    )


def test_letters_outside_latin_1_are_written_so_the_schema_takes_them():
    buyer = Buyer(
        kind="company",
        name="Łukasz Żółć – “Studio” 株式会社",
        vat_number="12345670017",
        address=Address("Ulica Długa 5", "20121", "Milano", "MI"),
    )
    document, _paid = an_invoice(buyer)
    root = fatturapa.validate(einvoice.render_xml(document, SELLER, "00001"))
    assert fatturapa.text(root, ".//CessionarioCommittente//Denominazione") == 'Lukasz Zólc - "Studio" ????'
    assert fatturapa.text(root, ".//CessionarioCommittente//Indirizzo") == "Ulica Dluga 5"


def test_an_amount_that_the_lines_do_not_make_is_refused():
    document, paid = an_invoice(buyer_of("private"))
    with pytest.raises(einvoice.InvoiceMismatch):
        einvoice.build_invoice(
            number="1/2027",
            issued_on=ISSUED_ON,
            buyer=document.buyer,
            lines=document.lines,
            paid_cents=paid + 1,
            payment_method="card",
            reference="PEC-2027-000042",
        )


@pytest.mark.parametrize("refunded", ["all", 1, 123, 1001, 4999])
def test_a_credit_note_validates_refers_to_its_invoice_and_totals_the_refund(refunded):
    invoice, paid = an_invoice(buyer_of("company"))
    amount = paid if refunded == "all" else refunded
    note = einvoice.credit_note(invoice, refunded_cents=amount, number="8/2027", issued_on=date(2027, 3, 9))
    root = fatturapa.validate(einvoice.render_xml(note, SELLER, "00002"))
    assert fatturapa.text(root, ".//TipoDocumento") == "TD04"
    assert fatturapa.text(root, ".//DatiFattureCollegate/IdDocumento") == "7/2027"
    assert fatturapa.text(root, ".//DatiFattureCollegate/Data") == "2027-03-01"
    taxable = cents(fatturapa.text(root, ".//ImponibileImporto"))
    tax = cents(fatturapa.text(root, ".//Imposta"))
    assert taxable + tax == amount == cents(fatturapa.text(root, ".//ImportoTotaleDocumento"))
    assert abs(tax - taxable * 22 / 100) <= 1  # SDI's tolerance on the tax of a summary: one cent
    assert sum(cents(value) for value in fatturapa.texts(root, ".//PrezzoTotale")) == taxable


def test_a_credit_note_larger_than_its_invoice_is_refused():
    invoice, paid = an_invoice(buyer_of("private"))
    with pytest.raises(ValueError, match="does not fit"):
        einvoice.credit_note(invoice, refunded_cents=paid + 1, number="8/2027", issued_on=ISSUED_ON)


def test_file_names_follow_the_specification():
    assert einvoice.progressive(1) == "00001"
    assert einvoice.progressive(36) == "00010"
    assert einvoice.progressive(36**5 - 1) == "ZZZZZ"
    with pytest.raises(ValueError):
        einvoice.progressive(36**5)
    names = {einvoice.file_name(SELLER, einvoice.progressive(number)) for number in range(1, 5000, 7)}
    assert all(re.fullmatch(r"IT01234560017_[0-9A-Z]{5}\.xml", name) for name in names)
    assert len(names) == len(range(1, 5000, 7))


def test_the_buyers_data_a_document_needs():
    assert einvoice.missing_data(Buyer("private", "Mario Rossi")) == ("billing_address", "tax_id")
    assert einvoice.missing_data(buyer_of("private")) == ()


@pytest.mark.parametrize(
    ("full_name", "tax_code", "expected"),
    [
        ("Mario Rossi", "RSSMRA80A01H501U", ("Mario", "Rossi")),
        ("Rossi Mario", "RSSMRA80A01H501U", ("Mario", "Rossi")),
        ("Maria Grazia De Luca", "DLCMGR70A41H501X", ("Maria Grazia", "De Luca")),
        ("De Luca Maria Grazia", "DLCMGR70A41H501X", ("Maria Grazia", "De Luca")),
        ("Nicolò D'Amico", "DMCNCL90B12F205Z", ("Nicolò", "D'Amico")),
        ("Ugo Fo", "FOXGUO50C03L219Y", ("Ugo", "Fo")),
        ("Mario Rossi", "BNCLRA85M41F205C", None),  # the tax code is someone else's (or misspelt)
        ("Rossi", "RSSMRA80A01H501U", None),  # one word: no Nome to tell from the Cognome
    ],
)
def test_a_private_persons_name_is_split_where_the_tax_code_says(full_name, tax_code, expected):
    assert einvoice.person_name(full_name, tax_code) == expected


def test_a_private_person_is_named_by_nome_and_cognome_in_the_invoice_and_its_credit_note():
    buyer = Buyer(
        "private", "De Luca Maria Grazia", tax_code="DLCMGR70A41H501X", address=Address("Via Po 3", "10123", "Torino")
    )
    invoice, paid = an_invoice(buyer)
    note = einvoice.credit_note(invoice, refunded_cents=paid // 2, number="8/2027", issued_on=ISSUED_ON)
    for document in (invoice, note):
        root = fatturapa.validate(einvoice.render_xml(document, SELLER, "00001"))
        registry = root.find(".//CessionarioCommittente/DatiAnagrafici/Anagrafica")
        assert [(child.tag, child.text) for child in registry] == [("Nome", "Maria Grazia"), ("Cognome", "De Luca")]


def test_a_buyer_with_a_vat_number_or_a_companys_tax_code_keeps_denominazione():
    for buyer in (
        buyer_of("professional"),  # a person, but invoiced as a business with a VAT number
        buyer_of("company"),
        buyer_of("public_administration"),
        Buyer(
            "private", "Associazione Esempio", tax_code="80012340016", address=Address("Via Po 3", "10123", "Torino")
        ),
    ):
        assert not einvoice.is_natural_person(buyer)
        root = fatturapa.validate(einvoice.render_xml(an_invoice(buyer)[0], SELLER, "00001"))
        registry = root.find(".//CessionarioCommittente/DatiAnagrafici/Anagrafica")
        assert [child.tag for child in registry] == ["Denominazione"]


def test_a_private_persons_name_the_tax_code_does_not_split_waits():
    buyer = replace(buyer_of("private"), name="Mario Rosi")
    assert einvoice.missing_data(buyer) == ("person_name",)
    with pytest.raises(ValueError, match="person_name"):
        einvoice.render_xml(an_invoice(buyer)[0], SELLER, "00001")


def test_a_public_administration_under_split_payment_pays_the_taxable_amount_and_the_vat_is_s():
    buyer = replace(buyer_of("public_administration"), split_payment=True)
    order = pricing.price_order([pricing.LineInput("ufficio@pec.example.it", "pro", 3, 5)], 2)
    lines = einvoice.lines_for(order.lines, {"ufficio@pec.example.it": date(2027, 3, 31)})
    with pytest.raises(einvoice.InvoiceMismatch, match="before VAT"):  # the total with VAT is not what it pays
        einvoice.build_invoice(
            number="7/2027", issued_on=ISSUED_ON, buyer=buyer, lines=lines, paid_cents=order.total_cents,
            payment_method="bank_transfer", reference="PEC-2027-000042",
        )  # fmt: skip
    invoice = einvoice.build_invoice(
        number="7/2027", issued_on=ISSUED_ON, buyer=buyer, lines=lines, paid_cents=order.subtotal_cents,
        payment_method="bank_transfer", reference="PEC-2027-000042",
    )  # fmt: skip
    root = fatturapa.validate(einvoice.render_xml(invoice, SELLER, "00001"))
    assert root.get("versione") == "FPA12"
    assert fatturapa.text(root, ".//DatiRiepilogo/EsigibilitaIVA") == "S"
    assert (
        fatturapa.texts(root, ".//Causale")[1]
        == "Operazione soggetta a scissione dei pagamenti, art. 17-ter DPR 633/1972"
    )
    assert cents(fatturapa.text(root, ".//DatiRiepilogo/ImponibileImporto")) == order.subtotal_cents
    assert cents(fatturapa.text(root, ".//DatiRiepilogo/Imposta")) == order.vat_cents
    assert cents(fatturapa.text(root, ".//ImportoTotaleDocumento")) == order.total_cents
    assert cents(fatturapa.text(root, ".//ImportoPagamento")) == order.subtotal_cents

    with pytest.raises(ValueError, match="does not fit"):
        einvoice.credit_note(invoice, refunded_cents=order.subtotal_cents + 1, number="8/2027", issued_on=ISSUED_ON)
    for refunded in (1000, order.subtotal_cents):
        note = einvoice.credit_note(invoice, refunded_cents=refunded, number="8/2027", issued_on=ISSUED_ON)
        root = fatturapa.validate(einvoice.render_xml(note, SELLER, "00002"))
        assert fatturapa.text(root, ".//DatiRiepilogo/EsigibilitaIVA") == "S"
        assert cents(fatturapa.text(root, ".//ImportoPagamento")) == refunded
        assert cents(fatturapa.text(root, ".//DatiRiepilogo/ImponibileImporto")) == refunded
        assert cents(fatturapa.text(root, ".//DatiRiepilogo/Imposta")) == (refunded * 22 + 50) // 100


def test_without_split_payment_a_public_administration_pays_the_total_and_the_vat_is_i():
    invoice, paid = an_invoice(buyer_of("public_administration"))
    root = fatturapa.validate(einvoice.render_xml(invoice, SELLER, "00001"))
    assert fatturapa.text(root, ".//DatiRiepilogo/EsigibilitaIVA") == "I"
    assert len(fatturapa.texts(root, ".//Causale")) == 1
    assert cents(fatturapa.text(root, ".//ImportoPagamento")) == paid


def test_the_demos_private_holders_have_tax_codes_their_names_split_by():
    rows = [row for row in demo.sample_rows(60, date(2027, 3, 1)) if row["holder_kind"] == "private"]
    assert rows
    for row in rows:
        given, family = row["holder_name"].split(" ", 1)
        assert einvoice.person_name(row["holder_name"], row["tax_code"]) == (given, family)

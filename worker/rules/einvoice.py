"""Electronic invoices in the FatturaPA 1.2.2 format: what an invoice holds, and its XML.

Pure: every function here is a function of its arguments (no I/O, no clock).  The
invoice service (``worker.services.invoices``) stores an :class:`InvoiceDocument`'s
data when a renewal is paid and renders it with :func:`render_xml` at export time, so
the same stored data always give the same file.

- ``FPR12`` for private persons, sole proprietors, professionals and companies:
  ``CodiceDestinatario`` is the holder's 7-character SDI code, or ``0000000`` (with
  ``PECDestinatario`` when the holder gave a PEC address for invoices), or ``XXXXXXX``
  for a buyer outside Italy.  ``FPA12`` for public administrations: their 6-character
  office code, and the CIG and CUP, when given, in ``DatiOrdineAcquisto``.
- The buyer's ``Anagrafica``: ``Nome`` and ``Cognome`` for a private person (no VAT
  number, a natural person's 16-character tax code), split from the one full name the
  holder gives by the tax code's letters (:func:`person_name`); ``Denominazione`` for
  everyone else.  A private person's name that no split matches waits for corrected data.
- Prices are VAT excluded (``config/catalogue.py``); the VAT is 22 % of the taxable
  amount, rounded half up to the cent, as the order computed it (``pricing.vat_cents``),
  so the document's total (``ImportoTotaleDocumento``) is the amount paid, to the cent,
  but under split payment.
- Split payment (scissione dei pagamenti, art. 17-ter DPR 633/1972): a public
  administration's invoice, when the provider applies it (``SPLIT_PAYMENT_FOR_PA``),
  says ``EsigibilitaIVA`` ``S`` in ``DatiRiepilogo`` (and so in a second ``Causale``);
  ``ImportoTotaleDocumento`` stays
  the total with VAT and ``ImportoPagamento`` is the taxable amount, what the
  administration pays the seller (it pays the VAT to the Treasury itself).  Otherwise
  ``I``, and ``ImportoPagamento`` is the total.
- ``ModalitaPagamento``: MP05 bank transfer, MP08 payment card (cards and PayPal, an
  electronic-money payment made through a card network account), MP18 postal slip
  (bollettino di conto corrente postale).  ``CondizioniPagamento`` TP02: paid in full.
- A credit note (``TD04``) names the invoice it corrects in ``DatiFattureCollegate``.
- The file is ``IT{seller VAT}_{progressive}.xml``; the progressive is 5 characters of
  ``[0-9A-Z]`` (the specification allows 1 to 5 alphanumeric characters), the invoice's
  id in base 36, so every file of the seller has its own name.

The XML is built with the standard library's ``xml.etree.ElementTree``: the document
is a plain tree of short text elements, with no signature or attachment; no extra
dependency is needed to write it, and its types are checked by mypy.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import date, timedelta
from typing import Any
from xml.etree import ElementTree

from config import catalogue
from worker.rules import pricing, schedule
from worker.rules.vocabulary import BANK_TRANSFER, CARD, PAYPAL, POSTAL_SLIP, PUBLIC_ADMINISTRATION

NAMESPACE = "http://ivaservizi.agenziaentrate.gov.it/docs/xsd/fatture/v1.2"
#: The document kinds (TipoDocumento).
INVOICE = "TD01"
CREDIT_NOTE = "TD04"
#: The transmission formats: to private parties, to public administrations.
PRIVATE_FORMAT = "FPR12"
PA_FORMAT = "FPA12"
#: The seller's fiscal regimes the specification lists (RF03 was withdrawn).
FISCAL_REGIMES = tuple(f"RF{number:02d}" for number in range(1, 20) if number != 3)
DEFAULT_FISCAL_REGIME = "RF01"
#: ModalitaPagamento by payment method.
PAYMENT_MODES: Mapping[str, str] = {CARD: "MP08", PAYPAL: "MP08", BANK_TRANSFER: "MP05", POSTAL_SLIP: "MP18"}
PAID_IN_FULL = "TP02"
#: EsigibilitaIVA: VAT due at once by the seller; split payment (the public administration pays it).
IMMEDIATE = "I"
SPLIT_PAYMENT = "S"
#: The document's statement of it (a second ``Causale``).
SPLIT_PAYMENT_NOTE = "Operazione soggetta a scissione dei pagamenti, art. 17-ter DPR 633/1972"
#: CodiceDestinatario with no SDI code (delivery to the PEC address, or to the holder's tax drawer).
NO_SDI_CODE = "0000000"
#: CodiceDestinatario for a buyer without an Italian tax identity.
FOREIGN_RECIPIENT = "XXXXXXX"
#: CAP for a buyer outside Italy (the field takes only Italian postcodes).
FOREIGN_POSTCODE = "00000"
PROGRESSIVE_LENGTH = 5
_DIGITS36 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
#: Why an invoice cannot be issued yet; the operator's words are the service's.
MISSING_ADDRESS = "billing_address"
MISSING_TAX_ID = "tax_id"
#: A private person's name that does not split into Nome and Cognome by the tax code's letters.
MISSING_PERSON_NAME = "person_name"
PERSON_TAX_CODE_LENGTH = 16
_VOWELS = frozenset("AEIOU")


@dataclass(frozen=True)
class Address:
    """A postal address as FatturaPA's ``Sede`` has it."""

    street: str
    postcode: str
    city: str
    province: str | None = None
    country: str = "IT"


@dataclass(frozen=True)
class Seller:
    """The provider: the ``SELLER_*`` settings."""

    name: str
    vat_number: str
    address: Address
    fiscal_regime: str = DEFAULT_FISCAL_REGIME


@dataclass(frozen=True)
class Buyer:
    """The holder as invoiced: the order's confirmed data, or the holder's for an auto-renewal."""

    kind: str
    name: str
    tax_code: str | None = None
    vat_number: str | None = None
    address: Address | None = None
    sdi_code: str | None = None
    einvoice_pec: str | None = None
    office_code: str | None = None
    cig: str | None = None
    cup: str | None = None
    #: A public administration under the scissione dei pagamenti (art. 17-ter DPR 633/1972): it
    #: pays the taxable amount and pays the VAT to the Treasury itself (``EsigibilitaIVA`` S).
    split_payment: bool = False

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {name: getattr(self, name) for name in _BUYER_FIELDS}
        data["address"] = None if self.address is None else dict(vars(self.address))
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Buyer:
        address = data.get("address")
        return cls(
            kind=data["kind"],
            name=data["name"],
            tax_code=data.get("tax_code"),
            vat_number=data.get("vat_number"),
            address=None if address is None else Address(**address),
            sdi_code=data.get("sdi_code"),
            einvoice_pec=data.get("einvoice_pec"),
            office_code=data.get("office_code"),
            cig=data.get("cig"),
            cup=data.get("cup"),
            split_payment=bool(data.get("split_payment", False)),
        )


_BUYER_FIELDS = (
    "kind", "name", "tax_code", "vat_number", "sdi_code", "einvoice_pec", "office_code", "cig", "cup", "split_payment",
)  # fmt: skip


@dataclass(frozen=True)
class InvoiceLine:
    """One line: one year of one mailbox's plan, or of its extra GB; amounts VAT excluded."""

    description: str
    quantity: int
    unit_cents: int
    amount_cents: int
    period_start: date | None = None
    period_end: date | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "description": self.description,
            "quantity": self.quantity,
            "unit_cents": self.unit_cents,
            "amount_cents": self.amount_cents,
            "period_start": None if self.period_start is None else self.period_start.isoformat(),
            "period_end": None if self.period_end is None else self.period_end.isoformat(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> InvoiceLine:
        start, end = data.get("period_start"), data.get("period_end")
        return cls(
            description=data["description"],
            quantity=data["quantity"],
            unit_cents=data["unit_cents"],
            amount_cents=data["amount_cents"],
            period_start=None if start is None else date.fromisoformat(start),
            period_end=None if end is None else date.fromisoformat(end),
        )


@dataclass(frozen=True)
class Totals:
    subtotal_cents: int
    vat_cents: int
    total_cents: int


@dataclass(frozen=True)
class InvoiceDocument:
    """Everything a FatturaPA document says, but the seller and the transmission."""

    kind: str
    number: str
    issued_on: date
    buyer: Buyer
    lines: tuple[InvoiceLine, ...]
    totals: Totals
    payment_method: str
    #: The order number or the charge's key: the buyer's reference (``Causale``).
    reference: str
    #: For a credit note: the invoice's number and date.
    corrects: tuple[str, date] | None = None

    @property
    def amount_due_cents(self) -> int:
        """What the buyer pays (``ImportoPagamento``): the total, or under split payment the taxable amount."""
        return self.totals.subtotal_cents if self.buyer.split_payment else self.totals.total_cents


class InvoiceMismatch(ValueError):
    """The lines do not add up to the amount paid."""


def lines_for(price_lines: Iterable[pricing.PriceLine], renews_from: Mapping[str, date]) -> tuple[InvoiceLine, ...]:
    """One line per mailbox and year bought, plus one per extra and year, with the period each covers.

    ``renews_from``: each address's expiry before the renewal; year ``k`` covers the day
    after ``add_years(expiry, k)`` to ``add_years(expiry, k + 1)``.
    """
    lines: list[InvoiceLine] = []
    for line in price_lines:
        one_year = replace(line, years=1)
        old = renews_from.get(line.address)
        for year in range(line.years):
            start = end = None
            if old is not None:
                start = schedule.add_years(old, year) + timedelta(days=1)
                end = schedule.add_years(old, year + 1)
            lines.append(
                InvoiceLine(
                    description=latin(one_year.label("it")),
                    quantity=line.quantity,
                    unit_cents=line.unit_cents,
                    amount_cents=line.unit_cents * line.quantity,
                    period_start=start,
                    period_end=end,
                )
            )
    return tuple(lines)


def totals_of(lines: Sequence[InvoiceLine]) -> Totals:
    """The taxable amount, its VAT (22 %, half up, as the order's) and the total."""
    subtotal = sum(line.amount_cents for line in lines)
    vat = pricing.vat_cents(subtotal)
    return Totals(subtotal, vat, subtotal + vat)


def build_invoice(
    *,
    number: str,
    issued_on: date,
    buyer: Buyer,
    lines: Sequence[InvoiceLine],
    paid_cents: int,
    payment_method: str,
    reference: str,
) -> InvoiceDocument:
    """The invoice of a paid renewal; :class:`InvoiceMismatch` when the amount due is not ``paid_cents``
    (the total with VAT, or the taxable amount under split payment)."""
    totals = totals_of(lines)
    due = amount_due(buyer, totals)
    if due != paid_cents:
        raise InvoiceMismatch(
            f"the lines come to {pricing.format_amount(due)} EUR "
            f"{'before VAT (split payment)' if buyer.split_payment else 'with VAT'}, "
            f"but {pricing.format_amount(paid_cents)} EUR was paid"
        )
    if payment_method not in PAYMENT_MODES:
        raise ValueError(f"no ModalitaPagamento for {payment_method!r}")
    return InvoiceDocument(INVOICE, number, issued_on, buyer, tuple(lines), totals, payment_method, reference)


def amount_due(buyer: Buyer, totals: Totals) -> int:
    """What ``buyer`` pays of a document of ``totals``: the total, or the taxable amount under split payment."""
    return totals.subtotal_cents if buyer.split_payment else totals.total_cents


def credit_note(invoice: InvoiceDocument, *, refunded_cents: int, number: str, issued_on: date) -> InvoiceDocument:
    """The credit note (TD04) of a refund of ``refunded_cents`` of ``invoice``'s amount due.

    A full refund repeats the invoice's lines.  A partial one is one line whose taxable
    amount is the share of the refund before VAT: the largest amount whose total with its
    VAT (half up) is at most the refund; the VAT is the rest, within a cent of 22 %.  Under
    split payment the buyer paid the taxable amount only: the refund is the line's taxable
    amount and its VAT (22 %, half up) is credited as the buyer's (``EsigibilitaIVA`` S).
    """
    if not 0 < refunded_cents <= invoice.amount_due_cents:
        raise ValueError(
            f"a refund of {pricing.format_amount(refunded_cents)} EUR does not fit invoice {invoice.number} "
            f"of {pricing.format_amount(invoice.amount_due_cents)} EUR"
        )
    if refunded_cents == invoice.amount_due_cents:
        lines, totals = invoice.lines, invoice.totals
    elif invoice.buyer.split_payment:
        description = latin(
            f"Rimborso parziale relativo alla fattura n. {invoice.number} del {invoice.issued_on:%d/%m/%Y}"
        )
        lines = (InvoiceLine(description, 1, refunded_cents, refunded_cents),)
        totals = totals_of(lines)
    else:
        taxable = refunded_cents * 100 // (100 + catalogue.VAT_PERCENT)
        while taxable + 1 + pricing.vat_cents(taxable + 1) <= refunded_cents:
            taxable += 1
        while taxable > 0 and taxable + pricing.vat_cents(taxable) > refunded_cents:
            taxable -= 1
        description = latin(
            f"Rimborso parziale relativo alla fattura n. {invoice.number} del {invoice.issued_on:%d/%m/%Y}"
        )
        lines = (InvoiceLine(description, 1, taxable, taxable),)
        totals = Totals(taxable, refunded_cents - taxable, refunded_cents)
    return InvoiceDocument(
        CREDIT_NOTE,
        number,
        issued_on,
        invoice.buyer,
        lines,
        totals,
        invoice.payment_method,
        invoice.reference,
        corrects=(invoice.number, invoice.issued_on),
    )


def missing_data(buyer: Buyer) -> tuple[str, ...]:
    """What the buyer's data lack for an invoice (empty: it can be issued)."""
    missing: list[str] = []
    if buyer.address is None:
        missing.append(MISSING_ADDRESS)
    if not buyer.tax_code and not buyer.vat_number:
        missing.append(MISSING_TAX_ID)
    if is_natural_person(buyer) and person_name(buyer.name, buyer.tax_code or "") is None:
        missing.append(MISSING_PERSON_NAME)
    return tuple(missing)


def is_natural_person(buyer: Buyer) -> bool:
    """A private person: no VAT number and the 16-character tax code of a natural person (not a
    public administration).  ``Anagrafica`` names them by ``Nome`` and ``Cognome``; any other
    buyer (a company, a sole proprietor or professional with a VAT number, a public
    administration) by ``Denominazione``."""
    return (
        buyer.kind != PUBLIC_ADMINISTRATION
        and not buyer.vat_number
        and len(buyer.tax_code or "") == PERSON_TAX_CODE_LENGTH
    )


def person_name(full_name: str, tax_code: str) -> tuple[str, str] | None:
    """(Nome, Cognome) of ``full_name``, split between two of its words where the tax code says.

    The holder gives one full name ("Nome e cognome"); a natural person's codice fiscale
    begins with three letters of the surname and three of the given names (DM 23/12/1976:
    the consonants, then the vowels, then ``X``; for the given names, the 1st, 3rd and 4th
    consonant when there are four or more; accents, apostrophes and spaces dropped).  Every
    split of the words is tried, given names first ("Mario Rossi", "Maria Grazia De Luca"),
    then surname first ("Rossi Mario"); the first whose letters are the tax code's is the
    answer.  None when no split matches (a single word, a misspelt name or tax code): the
    invoice then waits for corrected holder data rather than guess.
    """
    words = full_name.split()
    surname_code, given_code = tax_code.upper()[0:3], tax_code.upper()[3:6]
    for given_first in (True, False):
        for cut in range(1, len(words)):
            head, tail = " ".join(words[:cut]), " ".join(words[cut:])
            given, family = (head, tail) if given_first else (tail, head)
            if tax_code_letters(given, family) == surname_code + given_code:
                return given, family
    return None


def tax_code_letters(given: str, family: str) -> str:
    """The six letters a natural person's codice fiscale begins with: the surname's three, then the given names'."""
    return _name_code(family, given=False) + _name_code(given, given=True)


def _name_code(text: str, *, given: bool) -> str:
    """The three letters a codice fiscale takes from a surname or from the given names."""
    letters = [
        char
        for char in unicodedata.normalize("NFKD", latin(text).upper())
        if "A" <= char <= "Z"  # the combining accents, apostrophes and spaces fall out
    ]
    consonants = [char for char in letters if char not in _VOWELS]
    vowels = [char for char in letters if char in _VOWELS]
    if given and len(consonants) >= 4:
        consonants = [consonants[0], consonants[2], consonants[3]]
    return "".join(consonants + vowels + ["X", "X", "X"])[:3]


def transmission_format(buyer: Buyer) -> str:
    return PA_FORMAT if buyer.kind == PUBLIC_ADMINISTRATION else PRIVATE_FORMAT


def recipient_code(buyer: Buyer) -> str:
    """CodiceDestinatario: the office code, the SDI code, ``0000000`` or ``XXXXXXX``."""
    if buyer.kind == PUBLIC_ADMINISTRATION and buyer.office_code:
        return buyer.office_code
    if buyer.address is not None and buyer.address.country != "IT":
        return FOREIGN_RECIPIENT
    return buyer.sdi_code or NO_SDI_CODE


def progressive(number: int) -> str:
    """The file's progressive: ``number`` (1 to 36**5 - 1) in base 36, 5 characters."""
    if not 0 < number < len(_DIGITS36) ** PROGRESSIVE_LENGTH:
        raise ValueError(f"{number} has no 5-character progressive")
    digits = ""
    while number:
        number, rest = divmod(number, len(_DIGITS36))
        digits = _DIGITS36[rest] + digits
    return digits.rjust(PROGRESSIVE_LENGTH, "0")


def file_name(seller: Seller, file_progressive: str) -> str:
    return f"IT{seller.vat_number}_{file_progressive}.xml"


def latin(text: str, limit: int = 1000) -> str:
    """``text`` in the Latin-1 letters the format takes: other letters lose their accents or become ``?``;
    dashes and quotes become their ASCII forms; spaces collapse; at most ``limit`` characters."""
    out: list[str] = []
    for char in text:
        char = _PUNCTUATION.get(char, char)
        if ord(char) < 0x100:
            out.append(char if char.isprintable() else " ")
            continue
        base = "".join(part for part in unicodedata.normalize("NFKD", char) if ord(part) < 0x100)
        out.append(base if base and base.isprintable() else "?")
    return " ".join("".join(out).split())[:limit].strip()


ElementTree.register_namespace("p", NAMESPACE)
#: Dashes and quotes in their ASCII forms, and letters that have no accent to drop.
_PUNCTUATION = {
    "\u2013": "-",
    "\u2014": "-",
    "\u2018": "'",
    "\u2019": "'",
    "\u201c": '"',
    "\u201d": '"',
    "\u0141": "L",
    "\u0142": "l",
    "\u0110": "D",
    "\u0111": "d",
    "\u0152": "OE",
    "\u0153": "oe",
    "\u0131": "i",
}


def _amount(cents: int) -> str:
    sign = "-" if cents < 0 else ""
    return f"{sign}{abs(cents) // 100}.{abs(cents) % 100:02d}"


def _sub(parent: ElementTree.Element, tag: str, text: str | None = None) -> ElementTree.Element:
    element = ElementTree.SubElement(parent, tag)
    if text is not None:
        element.text = text
    return element


def _sede(parent: ElementTree.Element, address: Address) -> None:
    sede = _sub(parent, "Sede")
    _sub(sede, "Indirizzo", latin(address.street, 60))
    italian = address.country == "IT"
    _sub(sede, "CAP", address.postcode if italian else FOREIGN_POSTCODE)
    city = address.city if italian else f"{address.postcode} {address.city}"
    _sub(sede, "Comune", latin(city, 60))
    if italian and address.province:
        _sub(sede, "Provincia", address.province)
    _sub(sede, "Nazione", address.country)


def render_xml(document: InvoiceDocument, seller: Seller, file_progressive: str) -> bytes:
    """The FatturaPA XML of ``document`` from ``seller``, UTF-8 with its declaration.

    The buyer must have the data :func:`missing_data` asks for (ValueError otherwise).
    """
    buyer = document.buyer
    if missing_data(buyer):
        raise ValueError(f"the buyer's data lack {', '.join(missing_data(buyer))}")
    assert buyer.address is not None
    root = ElementTree.Element(f"{{{NAMESPACE}}}FatturaElettronica", {"versione": transmission_format(buyer)})
    header = _sub(root, "FatturaElettronicaHeader")
    transmission = _sub(header, "DatiTrasmissione")
    sender = _sub(transmission, "IdTrasmittente")
    _sub(sender, "IdPaese", "IT")
    _sub(sender, "IdCodice", seller.vat_number)
    _sub(transmission, "ProgressivoInvio", file_progressive)
    _sub(transmission, "FormatoTrasmissione", transmission_format(buyer))
    code = recipient_code(buyer)
    _sub(transmission, "CodiceDestinatario", code)
    if code == NO_SDI_CODE and buyer.einvoice_pec:
        _sub(transmission, "PECDestinatario", buyer.einvoice_pec)

    seller_part = _sub(header, "CedentePrestatore")
    identity = _sub(seller_part, "DatiAnagrafici")
    vat = _sub(identity, "IdFiscaleIVA")
    _sub(vat, "IdPaese", "IT")
    _sub(vat, "IdCodice", seller.vat_number)
    _sub(_sub(identity, "Anagrafica"), "Denominazione", latin(seller.name, 80))
    _sub(identity, "RegimeFiscale", seller.fiscal_regime)
    _sede(seller_part, seller.address)

    buyer_part = _sub(header, "CessionarioCommittente")
    identity = _sub(buyer_part, "DatiAnagrafici")
    if buyer.vat_number:
        vat = _sub(identity, "IdFiscaleIVA")
        _sub(vat, "IdPaese", "IT")
        _sub(vat, "IdCodice", buyer.vat_number)
    if buyer.tax_code:
        _sub(identity, "CodiceFiscale", buyer.tax_code)
    registry = _sub(identity, "Anagrafica")
    split = person_name(buyer.name, buyer.tax_code or "") if is_natural_person(buyer) else None
    if split is not None:
        _sub(registry, "Nome", latin(split[0], 60))
        _sub(registry, "Cognome", latin(split[1], 60))
    else:
        _sub(registry, "Denominazione", latin(buyer.name, 80))
    _sede(buyer_part, buyer.address)

    body = _sub(root, "FatturaElettronicaBody")
    general = _sub(body, "DatiGenerali")
    document_part = _sub(general, "DatiGeneraliDocumento")
    _sub(document_part, "TipoDocumento", document.kind)
    _sub(document_part, "Divisa", "EUR")
    _sub(document_part, "Data", document.issued_on.isoformat())
    _sub(document_part, "Numero", document.number)
    _sub(document_part, "ImportoTotaleDocumento", _amount(document.totals.total_cents))
    what = "Nota di credito" if document.kind == CREDIT_NOTE else "Rinnovo caselle PEC"
    _sub(document_part, "Causale", latin(f"{what}, rif. {document.reference}", 200))
    if buyer.split_payment:
        _sub(document_part, "Causale", SPLIT_PAYMENT_NOTE)
    if buyer.kind == PUBLIC_ADMINISTRATION and (buyer.cig or buyer.cup):
        order = _sub(general, "DatiOrdineAcquisto")
        _sub(order, "IdDocumento", latin(document.reference, 20))
        if buyer.cup:
            _sub(order, "CodiceCUP", buyer.cup)
        if buyer.cig:
            _sub(order, "CodiceCIG", buyer.cig)
    if document.corrects is not None:
        linked = _sub(general, "DatiFattureCollegate")
        _sub(linked, "IdDocumento", document.corrects[0])
        _sub(linked, "Data", document.corrects[1].isoformat())

    goods = _sub(body, "DatiBeniServizi")
    rate = f"{catalogue.VAT_PERCENT}.00"
    for index, line in enumerate(document.lines, start=1):
        detail = _sub(goods, "DettaglioLinee")
        _sub(detail, "NumeroLinea", str(index))
        _sub(detail, "Descrizione", latin(line.description))
        _sub(detail, "Quantita", f"{line.quantity}.00")
        if line.period_start is not None and line.period_end is not None:
            _sub(detail, "DataInizioPeriodo", line.period_start.isoformat())
            _sub(detail, "DataFinePeriodo", line.period_end.isoformat())
        _sub(detail, "PrezzoUnitario", _amount(line.unit_cents))
        _sub(detail, "PrezzoTotale", _amount(line.amount_cents))
        _sub(detail, "AliquotaIVA", rate)
    summary = _sub(goods, "DatiRiepilogo")
    _sub(summary, "AliquotaIVA", rate)
    _sub(summary, "ImponibileImporto", _amount(document.totals.subtotal_cents))
    _sub(summary, "Imposta", _amount(document.totals.vat_cents))
    _sub(summary, "EsigibilitaIVA", SPLIT_PAYMENT if buyer.split_payment else IMMEDIATE)

    payment = _sub(body, "DatiPagamento")
    _sub(payment, "CondizioniPagamento", PAID_IN_FULL)
    payment_detail = _sub(payment, "DettaglioPagamento")
    _sub(payment_detail, "ModalitaPagamento", PAYMENT_MODES[document.payment_method])
    _sub(payment_detail, "ImportoPagamento", _amount(document.amount_due_cents))

    xml: bytes = ElementTree.tostring(root, encoding="utf-8", xml_declaration=True)
    return xml

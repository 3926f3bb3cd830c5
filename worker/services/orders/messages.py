"""What the order steps say to the holder when an input or a step is refused, in Italian or English.

:func:`message` words one refusal of the order flow (the pricing rules' own
messages included); :func:`holder_problem_message` words a problem that
:func:`worker.rules.holder_data.check_holder` reports in English for operators.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from worker.rules import pricing

MESSAGES: dict[str, dict[str, str]] = {
    "order_not_open": {
        "it": "L'ordine è già stato confermato e non può più essere modificato.",
        "en": "The order has already been confirmed and can no longer be changed.",
    },
    "order_paid": {"it": "L'ordine è già stato pagato.", "en": "The order has already been paid."},
    "order_cancelled": {"it": "L'ordine è stato annullato.", "en": "The order has been cancelled."},
    "order_lapsed": {
        "it": "L'ordine è scaduto senza pagamento: la casella PEC non può più essere rinnovata.",
        "en": "The order lapsed unpaid: the PEC mailbox can no longer be renewed.",
    },
    "order_not_confirmed": {
        "it": "L'ordine non è ancora confermato: scelga la modalità di pagamento nei passaggi dell'ordine.",
        "en": "The order is not confirmed yet: choose the payment method in the order's steps.",
    },
    "payment_in_progress": {
        "it": "Un pagamento con carta o PayPal di questo ordine è in corso di verifica: riprovi tra qualche minuto.",
        "en": "A card or PayPal payment of this order is being checked: try again in a few minutes.",
    },
    "in_another_order": {
        "it": "La casella PEC {address} è già nell'ordine {number}, in attesa di pagamento: "
        "paghi quell'ordine, oppure lo annulli prima di confermare questo.",
        "en": "The PEC mailbox {address} is already in order {number}, awaiting payment: "
        "pay that order, or cancel it before confirming this one.",
    },
    "charge_in_progress": {
        "it": "È in corso l'addebito automatico del rinnovo della casella PEC {address}: riprovi tra qualche minuto.",
        "en": "The automatic renewal charge of the PEC mailbox {address} is in progress: try again in a few minutes.",
    },
    "no_mailboxes": {
        "it": "Scelga almeno una casella PEC da rinnovare.",
        "en": "Choose at least one PEC mailbox to renew.",
    },
    "unknown_mailbox": {
        "it": "Questa casella PEC non fa parte dell'ordine.",
        "en": "This PEC mailbox is not part of the order.",
    },
    "step_mailboxes": {
        "it": "Confermi prima le caselle PEC da rinnovare.",
        "en": "First confirm the PEC mailboxes to renew.",
    },
    "step_holder": {
        "it": "Confermi prima i Dati intestatario.",
        "en": "First confirm the holder details (Dati intestatario).",
    },
    "step_payment": {
        "it": "Scelga prima la modalità di pagamento e la frequenza di rinnovo.",
        "en": "First choose the payment method and the renewal frequency.",
    },
    "terms_required": {
        "it": "Per completare l'ordine deve leggere e accettare le condizioni contrattuali.",
        "en": "To complete the order you must read and accept the contract terms.",
    },
    "clauses_required": {
        "it": "Per completare l'ordine deve approvare specificamente le clausole indicate (artt. 1341 e 1342 c.c.).",
        "en": "To complete the order you must specifically approve the clauses listed (Italian Civil Code, "
        "arts. 1341 and 1342).",
    },
    "method_unknown": {
        "it": "Scelga una modalità di pagamento: carta di credito, PayPal, bonifico bancario o bollettino postale.",
        "en": "Choose a payment method: credit card, PayPal, bank transfer or postal slip.",
    },
    "method_too_late": {
        "it": "Questa modalità di pagamento non è più disponibile: il pagamento verrebbe registrato "
        "dopo la cancellazione della casella ({deletion}). Scelga {methods}.",
        "en": "This payment method is no longer available: the payment would be registered after "
        "the mailbox is deleted ({deletion}). Choose {methods}.",
    },
    "years_range": {
        "it": "Scelga una frequenza di rinnovo da 1 a {max} anni.",
        "en": "Choose a renewal frequency from 1 to {max} years.",
    },
    "years_promo": {
        "it": "Per i prodotti in promozione la frequenza di rinnovo è di 1 o 2 anni.",
        "en": "For promotional products the renewal frequency is 1 or 2 years.",
    },
    "mailbox_changed": {
        "it": "La casella PEC {address} è stata rinnovata o modificata dopo l'inizio dell'ordine.",
        "en": "The PEC mailbox {address} was renewed or changed after the order started.",
    },
}


def message(key: str, language: str, **values: Any) -> str:
    """One message of the order flow in ``language`` (Italian unless "en")."""
    texts = MESSAGES.get(key) or pricing.MESSAGES[key]
    return texts["en" if language == "en" else "it"].format(**values)


_FIELD_LABELS_EN = {
    "name": "The name",
    "kind": "The holder type",
    "reference_email": "The reference email",
    "tax_code": "The tax code",
    "vat_number": "The VAT number",
    "einvoice_code": "The e-invoicing code",
    "postal_address": "The postal address",
    "cig": "The CIG",
    "cup": "The CUP",
}


def holder_problem_message(field_name: str, detail: str, kind: str, language: str) -> str:
    """A holder problem from ``check_holder`` (English, for operators) worded for the holder."""
    if language == "en":
        if detail.startswith(("is ", "contains ")):
            return f"{_FIELD_LABELS_EN.get(field_name, field_name)} {detail}."
        return detail[0].upper() + detail[1:] + "."
    wording = _ITALIAN.get(field_name)
    if wording is None:
        return "Valore non valido."
    return wording(field_name, detail, kind)


# -- The Italian wording, one function per field -----------------------------------------------------


#: The start of the detail of a value that is missing.
_REQUIRED = "is required"


def _worded(*cases: tuple[str, str], otherwise: str) -> Callable[[str, str, str], str]:
    """A field's wording: the text of the first case whose clue the detail holds ("is required" only
    at its start), else ``otherwise``."""

    def wording(_field: str, detail: str, _kind: str) -> str:
        for clue, text in cases:
            if detail.startswith(clue) if clue == _REQUIRED else clue in detail:
                return text
        return otherwise

    return wording


_name = _worded(
    (_REQUIRED, "Indichi il nome e cognome o la ragione sociale dell'intestatario."),
    ("characters long", "Il nome è troppo lungo: al massimo 200 caratteri."),
    otherwise="Il nome contiene caratteri non ammessi.",
)
_kind = _worded(
    otherwise="Scelga il tipo di intestatario: persona fisica, ditta individuale, azienda, "
    "libero professionista o pubblica amministrazione."
)
_reference_email = _worded(
    (_REQUIRED, "Indichi l'indirizzo email di riferimento: è lì che arrivano tutti gli avvisi."),
    otherwise="L'indirizzo email di riferimento non è valido.",
)
_postal_address = _worded(
    ("characters long", "L'indirizzo postale è troppo lungo: al massimo 300 caratteri."),
    ("control character", "L'indirizzo postale contiene caratteri non ammessi."),
    otherwise="L'indirizzo postale non è valido.",
)
_tax_code = _worded(
    (_REQUIRED, "Per una pubblica amministrazione il codice fiscale (11 cifre) è obbligatorio."),
    ("checksum", "Il codice fiscale non è corretto: il carattere di controllo non corrisponde."),
    ("public administration", "Il codice fiscale di una pubblica amministrazione ha 11 cifre."),
    ("birth date", "Il codice fiscale non è valido: la data di nascita non esiste."),
    otherwise="Il codice fiscale non è valido: ha 16 caratteri (persona fisica) o 11 cifre.",
)
_vat_number = _worded(
    (_REQUIRED, "La partita IVA è obbligatoria per questo tipo di intestatario."),
    ("checksum", "La partita IVA non è corretta: la cifra di controllo non corrisponde."),
    ("11 digits", "La partita IVA non è valida: ha 11 cifre."),
    otherwise="La partita IVA non è valida.",
)


def _einvoice_code(_field: str, detail: str, kind: str) -> str:
    required = detail.startswith(_REQUIRED)
    if kind == "public_administration":
        if required:
            return "Indichi il codice univoco ufficio (6 caratteri) per la fattura elettronica."
        return "Il codice univoco ufficio non è valido: ha 6 lettere o cifre."
    if required:
        return "Indichi il codice destinatario SDI (7 caratteri) o un indirizzo PEC per la fattura elettronica."
    if "PEC address:" in detail:
        return "L'indirizzo PEC per la fattura elettronica non è valido."
    return "Indichi un codice destinatario SDI di 7 caratteri oppure un indirizzo PEC."


def _cig_or_cup(field_name: str, detail: str, _kind: str) -> str:
    label = field_name.upper()
    if "only for" in detail:
        return f"Il {label} si indica solo per una pubblica amministrazione."
    length = 10 if field_name == "cig" else 15
    return f"Il {label} non è valido: ha {length} lettere o cifre."


_ITALIAN: dict[str, Callable[[str, str, str], str]] = {
    "name": _name,
    "kind": _kind,
    "reference_email": _reference_email,
    "postal_address": _postal_address,
    "tax_code": _tax_code,
    "vat_number": _vat_number,
    "einvoice_code": _einvoice_code,
    "cig": _cig_or_cup,
    "cup": _cig_or_cup,
}

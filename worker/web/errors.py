"""The error pages: a broken link, an expired form, the HTTP errors, and the database away.

Each says what happened in the visitor's language and never why a link is
broken; the 503 page is logged in one line, without a traceback or a token.
"""

from __future__ import annotations

import logging

from flask import render_template, request
from werkzeug.exceptions import HTTPException

from worker.rules.links import redact
from worker.web.i18n import translate_in_context as t

log = logging.getLogger(__name__)


def _error_page(status: int, heading: str, *paragraphs: str):
    return render_template("error.html", heading=heading, paragraphs=paragraphs), status


def invalid_link_page():
    """One page for every link that cannot be read: tampered, truncated, expired, unknown.  It says
    nothing about why."""
    return _error_page(
        404,
        t("Link non valido o scaduto", "This link is not valid or has expired"),
        t(
            "Il link che ha aperto non è valido oppure non è più utilizzabile. Controlli di averlo copiato per intero "
            "dall'email.",
            "The link you opened is not valid or can no longer be used. Check that you copied it whole from the email.",
        ),
        t(
            "Se la Sua casella PEC è ancora da rinnovare, usi il link dell'avviso di scadenza più recente, oppure "
            "rinnovi dall'area clienti PEC.",
            "If your PEC mailbox still needs renewing, use the link in the latest expiry notice, or renew from the "
            "PEC customer area.",
        ),
    )


def csrf_error(error):
    return _error_page(
        400,
        t("Modulo scaduto", "The form has expired"),
        t(
            "Il modulo non è più valido (la sessione è scaduta o la pagina è stata aperta in un'altra finestra). "
            "Torni indietro, ricarichi la pagina e riprovi.",
            "The form is no longer valid (the session expired or the page was opened in another window). Go back, "
            "reload the page and try again.",
        ),
    )


def database_unavailable(error):
    """The database cannot be reached (down, restarting, every connection cut, the pool exhausted):
    a 503 page in the error pages' style, and one log line, without a traceback."""
    log.error("database unavailable on %s [%s]: %s", redact(request.path), request.method, _one_line(error))
    page, status = _error_page(
        503,
        t("Servizio momentaneamente non disponibile", "Service temporarily unavailable"),
        t(
            "Il servizio di rinnovo non è raggiungibile in questo momento. Riprovi tra qualche minuto con lo stesso "
            "link: i dati già inseriti non sono andati persi.",
            "The renewal service cannot be reached right now. Try again in a few minutes with the same link: what you "
            "entered has not been lost.",
        ),
    )
    return page, status, {"Retry-After": str(RETRY_AFTER_SECONDS)}


#: What a 503 page asks the browser (and any proxy) to wait before trying again.
RETRY_AFTER_SECONDS = 60


def _one_line(error: BaseException) -> str:
    """The driver's reason, on one line and short: never a statement or its parameters."""
    reason = getattr(error, "orig", None) or error
    text = " ".join(str(reason).split()) or type(reason).__name__
    return f"{type(reason).__name__}: {text[:300]}"


def http_error(error):
    code = error.code if isinstance(error, HTTPException) else 500
    if code == 404:
        return _error_page(
            404,
            t("Pagina non trovata", "Page not found"),
            t(
                "La pagina non esiste o non è disponibile in questa sessione del browser. Riapra il link Rinnova "
                "dall'email.",
                "The page does not exist or is not available in this browser session. Open the Rinnova link from the "
                "email again.",
            ),
        )
    if code == 405:
        return _error_page(
            405,
            t("Operazione non consentita", "Not allowed"),
            t("Usi i pulsanti della pagina.", "Use the buttons on the page."),
        )
    if code == 413:
        return _error_page(
            413,
            t("Dati troppo lunghi", "Too much data"),
            t("Il modulo inviato è troppo grande.", "The form sent is too large."),
        )
    if code < 500:
        return _error_page(
            code,
            t("Richiesta non valida", "Bad request"),
            t(
                "La richiesta non è valida. Torni indietro e riprovi.",
                "The request is not valid. Go back and try again.",
            ),
        )
    return _error_page(
        500,
        t("Errore temporaneo", "Temporary error"),
        t(
            "Si è verificato un errore. Riprovi tra qualche minuto: nessun addebito è stato fatto due volte.",
            "Something went wrong. Try again in a few minutes: nothing has been charged twice.",
        ),
    )

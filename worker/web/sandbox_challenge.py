"""The sandbox gateway's 3-D Secure challenge page, ``/sandbox/3ds/<id>``, served by the link handler
like the sandbox's checkout (:mod:`worker.gateways.sandbox_challenge` keeps its record).

GET shows the payment with "Approva" and "Rifiuta" (in the browser's language: an issuer's page
knows no holder) and writes nothing; each button is a POST
with its CSRF token.  The answer is recorded in the sandbox's tables, then, as a gateway tells
its merchant, the payment it authenticated is completed on our side at once (the checkout's
order, or the auto-renew charge that waited), and the holder goes back to the page that sent
them (the challenge's return path): the order, or the charge's authentication page.
"""

from __future__ import annotations

import logging
import re

from flask import Blueprint, abort, current_app, flash, redirect, render_template, url_for
from werkzeug.exceptions import HTTPException
from werkzeug.routing import RequestRedirect

from worker.gateways import make_gateway, sandbox_challenge
from worker.gateways.base import ChargeAuthentication
from worker.gateways.sandbox import SandboxGateway
from worker.rules.links import TokenInvalid
from worker.services import charges, orders, payments
from worker.web import forms, i18n
from worker.web.errors import csrf_error
from worker.web.i18n import translate_in_context as t
from worker.web.runtime import runtime_of

log = logging.getLogger(__name__)

blueprint = Blueprint("sandbox_challenge", __name__)

_PUBLIC_ID_RE = re.compile(r"[A-Za-z0-9_\-]{16,64}")


def _runtime():
    return runtime_of(current_app)


def gateway():
    """The link handler's gateway (one per app, as the checkout's)."""
    app = current_app._get_current_object()
    found = app.extensions.get("pec_gateway")
    if found is None:
        runtime = _runtime()
        found = app.extensions["pec_gateway"] = make_gateway(
            runtime.settings, runtime.session_factory, clock=runtime.clock
        )
    return found


def _challenge(public_id: str) -> sandbox_challenge.Challenge:
    if not _PUBLIC_ID_RE.fullmatch(public_id):
        abort(404)
    challenge = sandbox_challenge.read_challenge(_runtime().engine, public_id)
    if challenge is None:
        abort(404)
    return challenge


@blueprint.get("/sandbox/3ds/<public_id>")
def page(public_id: str):
    """The challenge: the payment, and the two buttons.  Writes nothing."""
    challenge = _challenge(public_id)
    return render_template("sandbox_challenge.html", challenge=challenge, form=forms.ButtonForm())


@blueprint.post("/sandbox/3ds/<public_id>/<answer>")
def decide(public_id: str, answer: str):
    """The holder's answer ("approva" or "rifiuta"), recorded once; then back to where they came from."""
    if answer not in ("approva", "rifiuta"):
        abort(404)
    challenge = _challenge(public_id)
    if not forms.ButtonForm().validate_on_submit():
        return csrf_error(None)
    runtime = _runtime()
    if challenge.status == sandbox_challenge.PENDING:
        found = gateway()
        if isinstance(found, SandboxGateway):
            decided = found.answer_challenge(public_id, approve=answer == "approva")
        else:  # a challenge left open when the installation moved to another gateway
            decided = sandbox_challenge.decide_challenge(
                runtime.engine, public_id, approve=answer == "approva", now=runtime.clock()
            )
        if decided is not None:
            _complete(decided)
    return redirect(challenge.return_path, 303)


def _complete(challenge: sandbox_challenge.Challenge) -> None:
    """Complete on our side the payment the challenge answered, found by its return path."""
    try:
        endpoint, values = current_app.url_map.bind("localhost").match(challenge.return_path.split("?")[0])
    except (HTTPException, RequestRedirect):
        log.warning("sandbox challenge with a return path of no page")
        return
    runtime = _runtime()
    if endpoint == "web.checkout":
        _complete_order(values["public_id"], approved=challenge.status == sandbox_challenge.APPROVED)
    elif endpoint in ("charge_authentication.page", "charge_authentication.returned"):
        # The gateway's answer is the sandbox's record, read by finish_authentication.
        try:
            intent_id = runtime.signer.read_charge_authentication_token(values["token"])
        except TokenInvalid:
            return
        charges.finish_authentication(
            runtime.session_factory, gateway(), intent_id, today=runtime.today(), **runtime.charge_options
        )


def _complete_order(public_id: str, *, approved: bool) -> None:
    runtime = _runtime()
    settings = runtime.settings
    with runtime.session_factory() as session:
        order = orders.find_order(session, public_id)
        if order is None:
            return
        i18n.set_language(getattr(order, "language", None))  # the message is shown on the order's pages
        result = payments.complete_checkout_authentication(
            session,
            gateway(),
            order,
            now=runtime.clock(),
            today=runtime.today(),
            settings=settings,
            stages=settings.notice_stages,
        )
    if result is not None and not result.succeeded and not approved:
        flash(
            t(
                "L'autenticazione del pagamento (3-D Secure) è stata rifiutata: nulla è stato addebitato e l'ordine "
                "resta in attesa di pagamento. Può riprovare, anche con un altro metodo, bonifico bancario compreso.",
                "The payment's authentication (3-D Secure) was refused: nothing was charged and the order is still "
                "awaiting payment. You can try again, also with another method, bank transfer included.",
            )
        )


def start_for_order(order, result):
    """The checkout's payment asked for the holder's authentication: the sandbox's challenge page for
    it, returning to the checkout; None when the gateway has no challenge for it."""
    found = gateway()
    if not result.reference or not isinstance(found, ChargeAuthentication):
        return None
    step = found.start_authentication(
        reference=result.reference,
        payment_method=order.gateway_token or "",
        return_url=url_for("web.checkout", public_id=order.public_id),
    )
    if step.url is None:
        return None
    return redirect(step.url, 303)

"""The page where the holder authenticates an auto-renew charge on session,
``/rinnovo-automatico/autenticazione/<token>`` (the charge-authentication-required email's link,
signed for one charge intent under a salt of its own).

- GET explains where the charge stands and writes nothing: waiting (with the last day to
  authenticate and the button), renewed, or given up (the unpaid order to pay by any method).
- POST (CSRF) sends the holder to authenticate THAT payment: the sandbox's challenge page,
  Stripe's ``next_action.redirect_to_url``, PayPal's ``payer-action`` link
  (:func:`worker.services.charges.start_authentication`).
- Back from the gateway, ``…/esito`` (GET) shows the page with a button whose POST asks the
  gateway where the payment stands (PayPal: captures it) and completes the renewal, once
  (:func:`worker.services.charges.finish_authentication`); the webhook may have done it first.
"""

from __future__ import annotations

import logging
import re

from flask import Blueprint, abort, current_app, redirect, render_template, request, url_for

from worker.rules.links import MAILBOX, TokenInvalid
from worker.services import charges
from worker.web import forms, i18n
from worker.web.errors import csrf_error, invalid_link_page
from worker.web.runtime import runtime_of
from worker.web.sandbox_challenge import gateway as _gateway

log = logging.getLogger(__name__)

blueprint = Blueprint("charge_authentication", __name__)

#: A PayPal order id, as its return names it.
_PAYPAL_ORDER_RE = re.compile(r"[A-Z0-9]{8,36}")


def _runtime():
    return runtime_of(current_app)


def _intent_id(token: str) -> int:
    try:
        return _runtime().signer.read_charge_authentication_token(token)
    except TokenInvalid:
        abort(404)


def _read(intent_id: int) -> charges.AuthenticationView:
    runtime = _runtime()
    with runtime.session_factory() as session:
        view = charges.read_authentication(session, intent_id, runtime.charge_plan)
        session.rollback()  # read-only
    if view is None:
        abort(404)
    i18n.set_language(view.language)
    return view


@blueprint.errorhandler(404)
def _not_found(_error):
    return invalid_link_page()


def _render(token: str, view: charges.AuthenticationView, *, returned: bool):
    runtime = _runtime()
    renewal_url = None
    if view.state is charges.AuthenticationState.FAILED:
        renewal_url = url_for(
            "web.renewal_link", token=runtime.signer.renewal_token(MAILBOX, view.mailbox_id, view.cycle_expires_on)
        )
    return render_template(
        "charge_authentication.html",
        view=view,
        S=charges.AuthenticationState,
        token=token,
        returned=returned,
        form=forms.ButtonForm(),
        renewal_url=renewal_url,
        auto_renew_url=url_for("auto_renew.page", token=runtime.signer.auto_renew_token(view.mailbox_id)),
    )


@blueprint.get("/rinnovo-automatico/autenticazione/paypal")
def paypal_return():
    """Where PayPal sends the payer back after its payer action (``?token=<order id>``): the
    charge's own page, with the button that captures it.  Writes nothing."""
    order_id = request.args.get("token", "")
    if not _PAYPAL_ORDER_RE.fullmatch(order_id):
        abort(404)
    runtime = _runtime()
    with runtime.session_factory() as session:
        intent_id = charges.intent_by_reference(session, order_id)
        session.rollback()
    if intent_id is None:
        abort(404)
    token = runtime.signer.charge_authentication_token(intent_id)
    return redirect(url_for("charge_authentication.returned", token=token), 303)


@blueprint.get("/rinnovo-automatico/autenticazione/<token>")
def page(token: str):
    """Where the charge stands, and the button to authenticate it.  Writes nothing."""
    return _render(token, _read(_intent_id(token)), returned=False)


@blueprint.get("/rinnovo-automatico/autenticazione/<token>/esito")
def returned(token: str):
    """Back from the gateway's page: the same page, with the button that completes the renewal."""
    return _render(token, _read(_intent_id(token)), returned=True)


@blueprint.post("/rinnovo-automatico/autenticazione/<token>")
def start(token: str):
    """Send the holder to authenticate the waiting charge on the gateway's page (or the sandbox's)."""
    intent_id = _intent_id(token)
    if not forms.ButtonForm().validate_on_submit():
        return csrf_error(None)
    runtime = _runtime()
    with runtime.session_factory() as session:
        try:
            step = charges.start_authentication(
                session,
                _gateway(),
                intent_id,
                return_url=url_for("charge_authentication.returned", token=token, _external=True),
                plan=runtime.charge_plan,
            )
        except charges.AuthenticationUnavailable:
            return redirect(url_for("charge_authentication.page", token=token), 303)
    if step.url is not None:
        return redirect(step.url, 303)
    _finish(intent_id, step.result)
    return redirect(url_for("charge_authentication.page", token=token), 303)


@blueprint.post("/rinnovo-automatico/autenticazione/<token>/esito")
def verify(token: str):
    """Ask the gateway where the authenticated payment stands and complete the renewal (once)."""
    intent_id = _intent_id(token)
    if not forms.ButtonForm().validate_on_submit():
        return csrf_error(None)
    _finish(intent_id, None)
    return redirect(url_for("charge_authentication.page", token=token), 303)


def _finish(intent_id: int, answer) -> None:
    runtime = _runtime()
    charges.finish_authentication(
        runtime.session_factory, _gateway(), intent_id, today=runtime.today(), answer=answer, **runtime.charge_options
    )

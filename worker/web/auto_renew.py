"""The auto-renew page, ``/rinnovo-automatico/<token>``: its state, and the holder's switch.

The token is signed for one mailbox (:meth:`worker.rules.links.LinkSigner.auto_renew_url`);
the charge-notice, card-expiring, charge-succeeded and charge-failed emails carry it.

- GET shows the state, the next charge's date and amount and the masked method; it
  writes nothing.
- Each change is a POST with its CSRF token, first answered with a confirmation page
  (itself a POST form) and carried out only when that is confirmed; then POST,
  redirect, GET, with a message saying what happened (:mod:`worker.services.auto_renew_switch`
  decides under the charge's lock, and says whether the switch or a charge won).
- A new method is entered on the gateway's hosted page: the sandbox's is here, as its
  checkout is (:class:`worker.gateways.MethodSetup`); Stripe's (a Checkout Session in ``setup``
  mode) and PayPal's (a vault setup token) are theirs
  (:class:`worker.gateways.hosted.HostedMethodSetup`).  The return page names no token: the page
  the holder started from is kept in the signed session cookie with the setup's reference, and
  only that reference is read; its GET shows a button, whose POST saves the method.
"""

from __future__ import annotations

import logging
import secrets
from datetime import date

from flask import Blueprint, abort, current_app, flash, redirect, render_template, request, session, url_for
from flask_wtf import FlaskForm
from wtforms import HiddenField, RadioField

from worker.gateways import MethodSetup
from worker.gateways.base import GatewayError
from worker.gateways.hosted import HostedMethodSetup
from worker.rules.links import MAILBOX, TokenInvalid
from worker.services import auto_renew_switch as switch
from worker.services.auto_renew_switch import Outcome, PageState
from worker.web import forms, i18n
from worker.web.errors import csrf_error, invalid_link_page
from worker.web.i18n import translate_in_context as t
from worker.web.runtime import runtime_of
from worker.web.webhooks import gateway_named

log = logging.getLogger(__name__)

blueprint = Blueprint("auto_renew", __name__)
#: The signed session cookie's key for the setup started on a gateway's page: the page's token and the
#: setup's reference (a Checkout Session, a PayPal setup token).
SETUP_KEY = "method_setup"


class SwitchForm(FlaskForm):
    """A switch's button: the expiry the page showed, and whether this is the confirmation."""

    cycle = HiddenField()
    confirmed = HiddenField()


class SandboxMethodForm(FlaskForm):
    """The sandbox's hosted page: one of its test tokens."""

    payment_token = RadioField(choices=[])


def _runtime():
    return runtime_of(current_app)


def _mailbox_id(token: str) -> int:
    try:
        return _runtime().signer.read_auto_renew_token(token)
    except TokenInvalid:
        abort(404)


def _read(mailbox_id: int) -> switch.AutoRenewPage:
    runtime = _runtime()
    with runtime.session_factory() as session:
        page = switch.read_auto_renew(session, mailbox_id, runtime.today(), runtime.charge_plan)
        session.rollback()  # read-only, whatever the service did
    i18n.set_language(page.language)
    return page


def _method_setup():
    """The gateway, when its hosted page can take a new method (the sandbox's here, Stripe's and
    PayPal's their own); else None."""
    gateway = gateway_named(_runtime().settings.payment_gateway)
    return gateway if isinstance(gateway, MethodSetup) else None


def _back(token: str):
    return redirect(url_for("auto_renew.page", token=token), 303)


@blueprint.errorhandler(404)
def _not_found(_error):
    return invalid_link_page()


@blueprint.get("/rinnovo-automatico/<token>")
def page(token: str):
    """The page: what is on, when and how much the next charge is, with which method.  Writes nothing."""
    view = _read(_mailbox_id(token))
    if view.state is PageState.NOT_FOUND:
        return invalid_link_page()
    runtime = _runtime()
    renewal_url = None
    if view.state in (PageState.OFF, PageState.ON, PageState.FAILED) and view.expires_on is not None:
        token_of_cycle = runtime.signer.renewal_token(MAILBOX, view.mailbox_id, view.expires_on)
        renewal_url = url_for("web.renewal_link", token=token_of_cycle)
    return render_template(
        "auto_renew.html",
        view=view,
        S=PageState,
        token=token,
        form=SwitchForm(cycle=view.expires_on.isoformat() if view.expires_on else ""),
        renewal_url=renewal_url,
        can_replace=_method_setup() is not None,
        # The cycle's charge waits for the holder's authentication: its own page.
        authentication_url=url_for(
            "charge_authentication.page",
            token=runtime.signer.charge_authentication_token(view.authentication_intent_id),
        )
        if view.authentication_intent_id
        else None,
    ), 410 if view.state is PageState.DELETED else 200


@blueprint.post("/rinnovo-automatico/<token>/disattiva")
def switch_off(token: str):
    """Switch auto-renew off: the confirmation page, then (confirmed) the switch."""
    return _switch(token, "off")


@blueprint.post("/rinnovo-automatico/<token>/attiva")
def switch_on(token: str):
    """Switch auto-renew back on: the confirmation page, then (confirmed) the switch."""
    return _switch(token, "on")


def _switch(token: str, action: str):
    """The confirmation page when the page offers the switch and it is not confirmed yet; else the
    service, which decides under the charge's lock (and changes nothing where the switch is not
    allowed, saying why)."""
    mailbox_id = _mailbox_id(token)
    form = SwitchForm()
    if not form.validate_on_submit():
        return csrf_error(None)
    view = _read(mailbox_id)
    if view.state is PageState.NOT_FOUND:
        return invalid_link_page()
    offered = view.state in (PageState.ON, PageState.FAILED) if action == "off" else view.can_switch_on
    if offered and form.confirmed.data != "yes":
        return render_template(
            "auto_renew_confirm.html",
            view=view,
            action=action,
            token=token,
            form=SwitchForm(cycle=form.cycle.data or "", confirmed="yes"),
            charge_days=_runtime().charge_plan.charge_days[0],
        )
    runtime = _runtime()
    if action == "off":
        result = switch.switch_off(
            runtime.session_factory,
            mailbox_id,
            seen_expires_on=_seen(form.cycle.data),
            today=runtime.today(),
            stages=runtime.settings.notice_stages,
            clock=runtime.clock,
        )
    else:
        result = switch.switch_on(
            runtime.session_factory, mailbox_id, today=runtime.today(), plan=runtime.charge_plan, clock=runtime.clock
        )
    flash(*_message(result))
    return _back(token)


def _seen(value: str | None) -> date | None:
    try:
        return date.fromisoformat(value) if value else None
    except ValueError:
        return None


@blueprint.post("/rinnovo-automatico/<token>/metodo")
def replace_method(token: str):
    """Replace the payment method: to the gateway's hosted page (a POST: a real gateway opens a
    setup session there)."""
    mailbox_id = _mailbox_id(token)
    if not FlaskForm().validate_on_submit():
        return csrf_error(None)
    gateway = _method_setup()
    if gateway is None:
        abort(404)
    if not isinstance(gateway, HostedMethodSetup):
        return redirect(url_for("auto_renew.sandbox_method", token=token), 303)
    view = _read(mailbox_id)
    if view.state in (PageState.NOT_FOUND, PageState.ON_DOMAIN, PageState.DELETED):
        return invalid_link_page()
    settings = _runtime().settings
    back = f"{settings.base_url}/rinnovo-automatico/metodo/esito"
    try:
        hosted = gateway.start_method_setup(
            # Stripe puts the session's id in place of {CHECKOUT_SESSION_ID}; PayPal adds ?approval_token_id=.
            success_url=back + ("?session_id={CHECKOUT_SESSION_ID}" if settings.payment_gateway == "stripe" else ""),
            cancel_url=f"{settings.base_url}/rinnovo-automatico/metodo/annullato",
            idempotency_key=f"setup:{mailbox_id}:{secrets.token_hex(8)}",
            language=view.language,
            label=view.address,
        )
    except GatewayError as error:
        log.warning("mailbox %s: the gateway did not open the setup page: %s", mailbox_id, error)
        flash(_not_answering(), "error")
        return _back(token)
    session[SETUP_KEY] = {"token": token, "reference": hosted.reference}
    return redirect(hosted.url, 303)


@blueprint.route("/rinnovo-automatico/metodo/esito", methods=["GET", "POST"])
def method_result():
    """Back from Stripe's or PayPal's page: GET shows the last button, its POST saves the method of the
    setup this browser started (any other reference is the broken-link page)."""
    form = FlaskForm()
    if request.method == "POST" and not form.validate_on_submit():
        return csrf_error(None)
    started = session.get(SETUP_KEY) or {}
    token, reference = started.get("token"), started.get("reference")
    returned = request.args.get("session_id") or request.args.get("approval_token_id")
    if not token or not reference or returned != reference:
        return invalid_link_page()
    mailbox_id = _mailbox_id(token)
    gateway = _method_setup()
    if not isinstance(gateway, HostedMethodSetup):
        abort(404)
    view = _read(mailbox_id)
    if view.state in (PageState.NOT_FOUND, PageState.ON_DOMAIN, PageState.DELETED):
        return invalid_link_page()
    if request.method == "GET":
        return render_template("auto_renew_setup.html", view=view, form=form, token=token)
    try:
        saved = gateway.save_method(reference)
    except GatewayError as error:
        log.warning("mailbox %s: the new method was not read: %s", mailbox_id, error)
        flash(_not_answering(), "error")
        return _back(token)
    runtime = _runtime()
    result = switch.replace_method(runtime.session_factory, mailbox_id, saved, today=runtime.today())
    session.pop(SETUP_KEY, None)
    flash(*_message(result))
    return _back(token)


@blueprint.get("/rinnovo-automatico/metodo/annullato")
def method_cancelled():
    """The holder left the gateway's page: back to the auto-renew page, the stored method unchanged."""
    token = (session.get(SETUP_KEY) or {}).get("token")
    if not token:
        return invalid_link_page()
    return _back(token)


def _not_answering() -> str:
    return t(
        "Il servizio di pagamento non risponde in questo momento: il metodo registrato non è cambiato. "
        "Riprovi tra qualche minuto.",
        "The payment service is not answering now: the stored method has not changed. Try again in a few minutes.",
    )


@blueprint.route("/rinnovo-automatico/<token>/metodo/sandbox", methods=["GET", "POST"])
def sandbox_method(token: str):
    """The sandbox's hosted page for a new method: GET shows the test methods, POST saves the one chosen."""
    mailbox_id = _mailbox_id(token)
    gateway = _method_setup()
    if gateway is None or isinstance(gateway, HostedMethodSetup):
        abort(404)
    view = _read(mailbox_id)
    if view.state in (PageState.NOT_FOUND, PageState.ON_DOMAIN, PageState.DELETED):
        return invalid_link_page()
    form = SandboxMethodForm()
    methods = _sandbox_methods()
    form.payment_token.choices = forms.choices(methods)
    if request.method == "POST":
        if not form.validate_on_submit():
            if form.csrf_token.errors:
                return csrf_error(None)
            return render_template("auto_renew_sandbox.html", view=view, form=form, token=token, methods=methods), 422
        runtime = _runtime()
        result = switch.replace_method(
            runtime.session_factory, mailbox_id, gateway.save_method(form.payment_token.data), today=runtime.today()
        )
        flash(*_message(result))
        return _back(token)
    return render_template("auto_renew_sandbox.html", view=view, form=form, token=token, methods=methods)


def _sandbox_methods() -> list[tuple[str, str]]:
    return [
        ("pm_card_visa", t("Visa •••• 4242: addebiti approvati", "Visa •••• 4242: charges approved")),
        ("paypal_ok", t("Conto PayPal: addebiti approvati", "PayPal account: charges approved")),
        ("pm_card_chargeDeclinedInsufficientFunds", t("Carta con fondi insufficienti", "Card with insufficient funds")),
        ("pm_card_chargeDeclined", t("Carta che verrà rifiutata", "Card that will be declined")),
    ]


#: The outcomes told as done (a notice); the others are told as what stopped the change.
_DONE = frozenset((Outcome.SWITCHED_OFF, Outcome.SWITCHED_ON, Outcome.METHOD_SAVED))


def _message(result: switch.SwitchResult) -> tuple[str, str]:
    """What the holder is told after a POST, and its flash category ("notice" when done, else
    "error"): what happened, and who won when a charge came first."""
    expires = i18n.date_with_article(result.expires_on) if result.expires_on else ""
    messages = {
        Outcome.SWITCHED_OFF: t(
            "Il rinnovo automatico è stato disattivato: non verrà effettuato alcun addebito. Riceverà gli avvisi di "
            "scadenza con il link per rinnovare.",
            "Auto-renew has been switched off: no charge will be made. You will receive the expiry notices with the "
            "link to renew.",
        ),
        Outcome.ALREADY_OFF: t("Il rinnovo automatico era già disattivato.", "Auto-renew was already off."),
        Outcome.CHARGE_RUNNING: t(
            "L'addebito del rinnovo era già in corso: il rinnovo automatico non è stato disattivato. Riceverà l'esito "
            "dell'addebito via email; potrà poi disattivare il rinnovo automatico per la scadenza successiva.",
            "The renewal charge was already under way: auto-renew has not been switched off. You will receive the "
            "result of the charge by email; you can then switch auto-renew off for the following expiry.",
        ),
        Outcome.RENEWED: t(
            "Nel frattempo la casella è stata rinnovata: la nuova scadenza è {date}. Il rinnovo automatico non è "
            "stato disattivato e resta attivo per la prossima scadenza; se lo desidera, può disattivarlo ora.",
            "Meanwhile the mailbox has been renewed: its new expiry is {date}. Auto-renew has not been switched off "
            "and stays on for the next expiry; you can switch it off now if you wish.",
            date=expires,
        ),
        Outcome.SWITCHED_ON: t(
            "Il rinnovo automatico è stato riattivato. Prima dell'addebito riceverà un avviso.",
            "Auto-renew has been switched back on. You will get a notice before the charge.",
        ),
        Outcome.ALREADY_ON: t("Il rinnovo automatico era già attivo.", "Auto-renew was already on."),
        Outcome.NO_METHOD: t(
            "Per riattivare il rinnovo automatico serve un metodo di pagamento registrato.",
            "Switching auto-renew on needs a stored payment method.",
        ),
        Outcome.TOO_LATE: t(
            "Per la scadenza attuale non è più possibile riattivare il rinnovo automatico: rinnovi con il link di "
            "rinnovo.",
            "Auto-renew can no longer be switched on for the current expiry: renew with the renewal link.",
        ),
        Outcome.METHOD_SAVED: t(
            "Il nuovo metodo di pagamento è stato registrato e verrà usato per i prossimi addebiti.",
            "The new payment method has been saved and will be used for the next charges.",
        ),
        Outcome.METHOD_REFUSED: t(
            "Il metodo di pagamento non è stato accettato: il metodo registrato non è cambiato.",
            "The payment method was not accepted: the stored method has not changed.",
        ),
        Outcome.NOT_ALLOWED: t(
            "Per questa casella PEC il rinnovo automatico non può essere modificato.",
            "Auto-renew cannot be changed for this PEC mailbox.",
        ),
    }
    return messages[result.outcome], "notice" if result.outcome in _DONE else "error"

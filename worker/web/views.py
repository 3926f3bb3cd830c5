"""The pages: the link page, the five order steps, the confirmation and the sandbox checkout.

Every view is thin: it reads the request, calls ``worker.services.orders`` /
``worker.services.payments`` in one database session, commits, and redirects (POST,
then redirect, then GET).  A GET never writes.  An order is reachable only
from the browser session that started it: its public id is kept in the
signed Flask session, and any other id is a 404.
"""

from __future__ import annotations

from flask import Blueprint, current_app, flash, redirect, render_template, request, url_for
from flask_wtf.csrf import generate_csrf

from config import catalogue
from worker.gateways import make_gateway
from worker.rules import pricing
from worker.rules.links import MAILBOX, TokenInvalid
from worker.services import orders, payments
from worker.web import forms, i18n, sandbox_challenge, templating
from worker.web.errors import csrf_error, invalid_link_page
from worker.web.i18n import method_label
from worker.web.i18n import translate_in_context as t
from worker.web.order_session import db as _db
from worker.web.order_session import load_order as _load_order
from worker.web.order_session import now as _now
from worker.web.order_session import remember_order as _remember_order
from worker.web.order_session import runtime as _runtime
from worker.web.order_session import today as _today

blueprint = Blueprint("web", __name__)

STEPS = ("mailboxes", "holder", "payment", "terms", "confirm")
STEP_ENDPOINTS = {
    "mailboxes": "web.step_mailboxes",
    "holder": "web.step_holder",
    "payment": "web.step_payment",
    "terms": "web.step_terms",
    "confirm": "web.step_confirm",
}


#: The link page's states that show the button (a POST, with its CSRF token).
STATES_WITH_FORM = frozenset((orders.LinkState.RENEWABLE, orders.LinkState.AUTO_RENEW))


def _step_redirect(order):
    step = orders.next_step(order)
    if step in STEP_ENDPOINTS:
        return redirect(url_for(STEP_ENDPOINTS[step], public_id=order.public_id), 303)
    return redirect(url_for("web.order_status", public_id=order.public_id), 303)


def _guard_step(order, step: str):
    """A redirect when ``step`` may not be shown: the order is no longer a draft, or an earlier
    step is still to do.  None when the step may be shown."""
    upcoming = orders.next_step(order)
    if upcoming not in STEPS:
        return redirect(url_for("web.order_status", public_id=order.public_id), 303)
    if STEPS.index(step) > STEPS.index(upcoming):
        return redirect(url_for(STEP_ENDPOINTS[upcoming], public_id=order.public_id), 303)
    return None


def _apply_errors(form, errors: dict[str, str]) -> list[str]:
    """Put the service's messages next to their fields; the rest are returned for the top of the form."""
    general = []
    for name, text in errors.items():
        field = form._fields.get(name) if form is not None else None
        if field is not None:
            field.errors = [*field.errors, text] if isinstance(field.errors, list) else [text]
        else:
            general.append(text)
    return general


def _step_context(order, step: str, **context):
    return dict(order=order, step=step, steps=STEPS, **context)


# -- The link -------------------------------------------------------------------------------------


@blueprint.get("/")
def index():
    return render_template("index.html")


@blueprint.route("/rinnova/<path:token>", methods=["GET", "POST"])
def renewal_link(token: str):
    """GET shows the link page and writes nothing; POST (with its CSRF token) starts the order."""
    try:
        link = _runtime().signer.read_renewal_token(token)
    except TokenInvalid:
        return invalid_link_page()
    if request.method == "POST":
        form = forms.ButtonForm()
        if not form.validate_on_submit():
            return csrf_error(None)
        with _db() as db_session:
            try:
                order = orders.start_order(db_session, link, _today(), _now())
            except orders.LinkNotUsable as refused:
                db_session.rollback()
                if refused.state == orders.LinkState.NOT_FOUND:
                    return invalid_link_page()  # a link to nothing: the page of any broken link
                # The page itself says why (already renewed, deleted...): show it again.
                return redirect(url_for("web.renewal_link", token=token), 303)
            db_session.commit()
            _remember_order(order.public_id)
            return _step_redirect(order)
    view = _describe_link(link)
    if view.state == orders.LinkState.NOT_FOUND:
        return invalid_link_page()
    reminders_action = url_for("reminders.renewal_page_reminders", token=token)  # "Non intendo rinnovare"
    return _link_page(view, account_link=link.target != MAILBOX, reminders_action=reminders_action)


def _link_page(view, *, account_link: bool, reminders_action: str | None = None):
    """The link page of ``view``: in the holder's language, with a CSRF token where it has a button.

    The token is Flask-WTF's (``generate_csrf``), kept in the Flask session: the button's
    POST is checked by ``CSRFProtect`` like every other.  410 for a deleted mailbox.
    """
    language = i18n.set_language(view.language)
    with_form = view.state in STATES_WITH_FORM and current_app.config.get("WTF_CSRF_ENABLED", True)
    page = render_template(
        templating.localised("link.html", language),  # its fixed texts compiled in (worker.web.templating)
        view=view,
        states=orders.LinkState,
        form_token=generate_csrf() if with_form else None,
        account_link=account_link,
        reminders_action=reminders_action,
        payment=_runtime().settings,  # the payment instructions of an order awaiting payment
        # A mailbox on auto-renew: its own page switches it off (worker/web/auto_renew.py).
        auto_renew_path=None
        if account_link or view.state != orders.LinkState.AUTO_RENEW
        else url_for("auto_renew.page", token=_runtime().signer.auto_renew_token(view.mailboxes[0].id)),
        # The cycle's charge waits for the holder's authentication: its own page.
        authentication_path=url_for(
            "charge_authentication.page",
            token=_runtime().signer.charge_authentication_token(view.authentication_intent_id),
        )
        if view.authentication_intent_id and not account_link
        else None,
    )
    return page, 410 if view.state == orders.LinkState.DELETED else 200


def _describe_link(link):
    """What the link page shows, read without writing.

    A mailbox link, the page nearly every holder opens, is one SELECT outside any
    transaction (:func:`worker.services.orders.read_mailbox_link`: one round trip, and a
    dead pooled connection is replaced and the read made again).  An account link reads
    several tables: it keeps the session and its rollback.
    """
    if link.target == MAILBOX:
        return orders.read_mailbox_link(_runtime().engine, link, _today())
    with _db() as db_session:
        view = orders.describe_link(db_session, link, _today())
        db_session.rollback()  # read-only, whatever the service did
    return view


# -- Order steps ------------------------------------------------------------------------------------


@blueprint.get("/ordine/<public_id>")
def order_status(public_id: str):
    """Where an order stands: the next step while a draft, else the confirmation (awaiting payment,
    paid or cancelled)."""
    with _db() as db_session:
        order = _load_order(db_session, public_id)
        step = orders.next_step(order)
        if step in STEP_ENDPOINTS:
            return _step_redirect(order)
        summary = orders.order_summary(order)
        mailboxes = orders.order_mailboxes(db_session, order, _today())
        settings = _runtime().settings
        return render_template(
            "confirmation.html",
            order=order,
            step=step,
            summary=summary,
            mailboxes=mailboxes,
            renewals=orders.order_renewals(order),
            settings=settings,
            form=forms.ButtonForm(),
        )


@blueprint.route("/ordine/<public_id>/caselle", methods=["GET", "POST"])
def step_mailboxes(public_id: str):
    """Step 1, "Gestione caselle PEC": the plan and extras of each mailbox."""
    with _db() as db_session:
        order = _load_order(db_session, public_id)
        if (redirect_to := _guard_step(order, "mailboxes")) is not None:
            return redirect_to
        mailboxes = orders.order_mailboxes(db_session, order, _today())
        account_order = _is_account_order(order, mailboxes)
        current = _current_choices(order, mailboxes, account_order)
        form = forms.mailboxes_form(
            mailboxes, account_order=account_order, data=current if request.method == "GET" else None
        )
        general: list[str] = []
        if request.method == "POST":
            if form.validate_on_submit():
                choices = _choices_from(form, mailboxes, account_order)
                try:
                    orders.choose_mailboxes(db_session, order, choices)
                except orders.OrderValidationError as error:
                    db_session.rollback()
                    general = _apply_errors(form, error.errors)
                else:
                    db_session.commit()
                    return redirect(url_for("web.step_holder", public_id=public_id), 303)
            forms.localise_errors(form)
        return render_template(
            "step_mailboxes.html",
            **_step_context(
                order,
                "mailboxes",
                form=form,
                mailboxes=mailboxes,
                account_order=account_order,
                general=general,
                catalogue=catalogue,
            ),
        ), (422 if request.method == "POST" else 200)


def _is_account_order(order, mailboxes) -> bool:
    target = getattr(order, "link_target", None) or getattr(order, "target", None)
    if target is not None:
        return target != MAILBOX  # an account link, or a grouped notice's "Rinnova tutte"
    return len(mailboxes) > 1


def _line_for(order, mailbox_id):
    for line in getattr(order, "lines", ()) or ():
        if line.mailbox_id == mailbox_id:
            return line
    return None


def _current_choices(order, mailboxes, account_order: bool) -> dict:
    data = {}
    for mailbox in mailboxes:
        line = _line_for(order, mailbox.id)
        number = mailbox.id
        data[f"plan-{number}"] = getattr(line, "plan", None) or mailbox.plan
        data[f"extra_space_gb-{number}"] = getattr(line, "extra_space_gb", mailbox.extra_space_gb)
        data[f"extra_archive_gb-{number}"] = getattr(line, "extra_archive_gb", mailbox.extra_archive_gb)
        data[f"confirm_archive_deletion-{number}"] = bool(getattr(line, "archive_deletion_confirmed", False))
        if account_order:
            data[f"renew-{number}"] = bool(getattr(line, "selected", True))
    return data


def _choices_from(form, mailboxes, account_order: bool):
    choices = []
    for mailbox in mailboxes:
        if f"plan-{mailbox.id}" not in form._fields:
            continue
        number = mailbox.id
        choices.append(
            orders.MailboxChoice(
                mailbox_id=number,
                plan=form[f"plan-{number}"].data,
                extra_space_gb=form[f"extra_space_gb-{number}"].data or 0,
                extra_archive_gb=form[f"extra_archive_gb-{number}"].data or 0,
                confirm_archive_deletion=bool(form[f"confirm_archive_deletion-{number}"].data),
                renew=bool(form[f"renew-{number}"].data) if account_order else True,
            )
        )
    return choices


@blueprint.route("/ordine/<public_id>/intestatario", methods=["GET", "POST"])
def step_holder(public_id: str):
    """Step 2, "Dati intestatario"."""
    with _db() as db_session:
        order = _load_order(db_session, public_id)
        if (redirect_to := _guard_step(order, "holder")) is not None:
            return redirect_to
        if request.method == "GET":
            form = forms.HolderForm(formdata=None, data=orders.holder_form_data(order))
        else:
            form = forms.HolderForm()
        general: list[str] = []
        if request.method == "POST":
            if form.validate_on_submit():
                try:
                    orders.set_holder(db_session, order, form.holder_data())
                except orders.OrderValidationError as error:
                    db_session.rollback()
                    general = _apply_errors(form, error.errors)
                else:
                    db_session.commit()
                    return redirect(url_for("web.step_payment", public_id=public_id), 303)
            forms.localise_errors(form)
        return render_template("step_holder.html", **_step_context(order, "holder", form=form, general=general)), (
            422 if request.method == "POST" else 200
        )


@blueprint.route("/ordine/<public_id>/modulo", methods=["GET", "POST"])
def step_payment(public_id: str):
    """Step 3, "Modulo ordine": the payment method, the years, the price line by line."""
    with _db() as db_session:
        order = _load_order(db_session, public_id)
        if (redirect_to := _guard_step(order, "payment")) is not None:
            return redirect_to
        today = _today()
        options = orders.payment_options(db_session, order, today)
        mailboxes = orders.order_mailboxes(db_session, order, today)
        promo = any(mailbox.promo for mailbox in mailboxes if _selected(order, mailbox))
        max_years = pricing.max_years(promo)
        offered = [(option.method, method_label(option.method)) for option in options if option.available]
        if request.method == "GET":
            current = {}
            if getattr(order, "payment_method", None):
                current["method"] = order.payment_method
            current["years"] = getattr(order, "years", None) or 1
            form = forms.PaymentForm(offered, max_years, formdata=None, data=current)
        else:
            form = forms.PaymentForm(offered, max_years)
        general: list[str] = []
        if request.method == "POST":
            if form.validate_on_submit():
                try:
                    orders.choose_payment(
                        db_session,
                        order,
                        form.method.data,
                        form.years.data,
                        today,
                        split_payment_for_pa=_runtime().settings.split_payment_for_pa,
                    )
                except orders.OrderValidationError as error:
                    db_session.rollback()
                    general = _apply_errors(form, error.errors)
                else:
                    db_session.commit()
                    return redirect(url_for("web.step_terms", public_id=public_id), 303)
            forms.localise_errors(form)
        return render_template(
            "step_payment.html",
            **_step_context(
                order,
                "payment",
                form=form,
                general=general,
                options=options,
                summary=orders.order_summary(order),
                mailboxes=mailboxes,
                max_years=max_years,
            ),
        ), (422 if request.method == "POST" else 200)


def _selected(order, mailbox) -> bool:
    line = _line_for(order, mailbox.id)
    return bool(getattr(line, "selected", True)) if line is not None else True


@blueprint.route("/ordine/<public_id>/condizioni", methods=["GET", "POST"])
def step_terms(public_id: str):
    """Step 4: accept the contract terms (required)."""
    with _db() as db_session:
        order = _load_order(db_session, public_id)
        if (redirect_to := _guard_step(order, "terms")) is not None:
            return redirect_to
        form = forms.TermsForm()
        general: list[str] = []
        if request.method == "POST":
            if form.validate_on_submit():
                try:
                    orders.accept_terms(
                        db_session,
                        order,
                        _now(),
                        accepted=bool(form.accept.data),
                        clauses_approved=bool(form.approve_clauses.data),
                    )
                except orders.OrderValidationError as error:
                    db_session.rollback()
                    fields = {"terms": "accept", "clauses": "approve_clauses"}
                    general = _apply_errors(form, {fields.get(key, key): text for key, text in error.errors.items()})
                else:
                    db_session.commit()
                    return redirect(url_for("web.step_confirm", public_id=public_id), 303)
            else:
                general = [t("Il modulo non è valido.", "The form is not valid.")]
        return render_template("step_terms.html", **_step_context(order, "terms", form=form, general=general)), (
            422 if request.method == "POST" else 200
        )


@blueprint.route("/ordine/<public_id>/conferma", methods=["GET", "POST"])
def step_confirm(public_id: str):
    """Step 5, "Conferma e completa l'ordine": a review, and the button that confirms (idempotent)."""
    with _db() as db_session:
        order = _load_order(db_session, public_id)
        if request.method == "POST":
            form = forms.ButtonForm()
            if not form.validate_on_submit():
                return csrf_error(None)
            upcoming = orders.next_step(order)
            if upcoming not in STEPS:
                # Already confirmed (a double click, a re-POST): the same order, unchanged.
                return redirect(url_for("web.order_status", public_id=public_id), 303)
            try:
                orders.confirm_order(db_session, order, now=_now(), today=_today(), settings=_runtime().settings)
            except orders.OrderValidationError as error:
                db_session.rollback()
                return _render_confirm(
                    db_session,
                    orders.find_order(db_session, public_id) or order,
                    _apply_errors(None, error.errors),
                    422,
                )
            db_session.commit()
            return redirect(url_for("web.order_status", public_id=public_id), 303)
        if (redirect_to := _guard_step(order, "confirm")) is not None:
            return redirect_to
        return _render_confirm(db_session, order, [], 200)


def _render_confirm(db_session, order, general, status):
    return render_template(
        "step_confirm.html",
        **_step_context(
            order,
            "confirm",
            form=forms.ButtonForm(),
            general=general,
            summary=orders.order_summary(order),
            mailboxes=orders.order_mailboxes(db_session, order, _today()),
            renewals=orders.order_renewals(order),
            holder=orders.order_holder(order),
        ),
    ), status


# -- Sandbox checkout (card / PayPal) ---------------------------------------------------------------


@blueprint.route("/ordine/<public_id>/pagamento", methods=["GET", "POST"])
def checkout(public_id: str):
    """The sandbox's hosted checkout page: pay a confirmed card / PayPal order with a sandbox token.

    The payments service writes the attempt (intent) and commits before it
    calls the gateway, so a double POST or a reload never charges twice.  A
    decline is shown on the page (POST, redirect, GET) with the chance to retry.
    """
    settings = _runtime().settings
    with _db() as db_session:
        order = _load_order(db_session, public_id)
        step = orders.next_step(order)
        if step != "pay" or order.payment_method not in ("card", "paypal"):
            return redirect(url_for("web.order_status", public_id=public_id), 303)
        if settings.payment_gateway != "sandbox":  # the gateway's own page (worker/web/hosted_checkout.py)
            return redirect(url_for("hosted.start", public_id=public_id), 303)
        form = forms.CheckoutForm()
        if request.method == "POST":
            if not form.validate_on_submit():
                if form.csrf_token.errors:
                    return csrf_error(None)
                forms.localise_errors(form)
                return _render_checkout(db_session, order, form, 422)
            try:
                result = payments.pay_order_with_gateway(
                    db_session,
                    _gateway(),
                    order,
                    form.payment_token.data,
                    method=order.payment_method,
                    now=_now(),
                    today=_today(),
                    settings=settings,
                    stages=settings.notice_stages,
                )
            except payments.PaymentRefused:
                db_session.rollback()
                return redirect(url_for("web.order_status", public_id=public_id), 303)
            if result.outcome == "requires_authentication":
                # The issuer wants the holder: the gateway's challenge (3-D Secure), back to this page.
                challenge = sandbox_challenge.start_for_order(order, result)
                if challenge is not None:
                    return challenge
            if not (result.succeeded or result.outcome == "already_paid"):
                flash(_decline_message(result.outcome))
                return redirect(url_for("web.checkout", public_id=public_id), 303)
            return redirect(url_for("web.order_status", public_id=public_id), 303)
        return _render_checkout(db_session, order, form, 200)


def _render_checkout(db_session, order, form, status):
    offered = [
        (option.method, method_label(option.method))
        for option in orders.payment_options(db_session, order, _today())
        if option.available
    ]
    return render_template(
        "checkout.html",
        order=order,
        summary=orders.order_summary(order),
        form=form,
        # Every method still allowed, the current one chosen: after a decline the holder may switch.
        method_form=forms.MethodForm(offered, formdata=None, data={"method": order.payment_method}),
        sandbox_tokens=_sandbox_tokens(order.payment_method),
    ), status


def _gateway():
    app = current_app._get_current_object()
    gateway = app.extensions.get("pec_gateway")
    if gateway is None:
        runtime = _runtime()
        gateway = app.extensions["pec_gateway"] = make_gateway(
            runtime.settings, runtime.session_factory, clock=runtime.clock
        )
    return gateway


def _sandbox_tokens(method: str) -> list[tuple[str, str]]:
    if method == "paypal":
        return [
            ("paypal_ok", t("Conto PayPal: pagamento approvato", "PayPal account: payment approved")),
            ("paypal_declined", t("Conto PayPal: pagamento rifiutato", "PayPal account: payment declined")),
        ]
    return [
        ("pm_card_visa", t("Visa: pagamento approvato", "Visa: payment approved")),
        ("pm_card_chargeDeclined", t("Carta rifiutata", "Card declined")),
        ("pm_card_chargeDeclinedInsufficientFunds", t("Fondi insufficienti", "Insufficient funds")),
        ("pm_card_chargeDeclinedExpiredCard", t("Carta scaduta", "Expired card")),
        (
            "pm_card_authenticationRequired",
            t("Richiede autenticazione (3-D Secure)", "Needs authentication (3-D Secure)"),
        ),
        (
            "pm_card_authenticationRequiredSetupForOffSession",
            t(
                "Richiede autenticazione (3-D Secure) solo la prima volta",
                "Needs authentication (3-D Secure) the first time only",
            ),
        ),
    ]


def _decline_message(outcome: str) -> str:
    if outcome == "unknown":
        return t(
            "Non abbiamo ancora la risposta del circuito di pagamento. Riprovi tra qualche istante: non verrà "
            "addebitato due volte.",
            "We have no answer from the payment network yet. Try again in a moment: you will not be charged twice.",
        )
    if outcome == "soft_decline":
        detail = t(
            "Il pagamento è stato rifiutato (fondi insufficienti).", "The payment was declined (insufficient funds)."
        )
    elif outcome == "requires_authentication":
        detail = t(
            "La carta richiede un'autenticazione che non è stata completata.",
            "The card needs an authentication that was not completed.",
        )
    else:
        detail = t("Il pagamento è stato rifiutato.", "The payment was declined.")
    return (
        detail
        + " "
        + t(
            "Nulla è stato addebitato e l'ordine resta in attesa di pagamento: può riprovare, anche con un altro "
            "metodo.",
            "Nothing was charged and the order is still awaiting payment: you can try again, also with another method.",
        )
    )

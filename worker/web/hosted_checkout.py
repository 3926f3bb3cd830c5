"""The checkout of card and PayPal orders on the gateway's own page (``PAYMENT_GATEWAY=stripe|paypal``).

``/ordine/<id>/pagamento`` sends a real gateway's orders here.  The pages:

- ``/ordine/<id>/pagamento/sicuro``: GET shows the total and one button; its POST
  (CSRF) opens a Stripe Checkout Session or a PayPal order and redirects (303) to
  the gateway's page;
- ``/ordine/<id>/pagamento/esito``: where the gateway sends the holder back.
  Stripe: a GET that reads the session and shows the order as paid when Stripe
  says so, else "payment being confirmed" (the webhook registers it), never an
  error.  PayPal: the GET shows the total and the final button; its POST captures
  the approved order and registers the payment;
- ``/ordine/<id>/pagamento/annullato``: the holder left the gateway's page:
  nothing was charged, the order waits, and the holder may try again.

A GET never writes.  The order is reached only from the browser session that
started it (``order_session.load_order``), and only the checkout it started is read.
"""

from __future__ import annotations

import logging

from flask import Blueprint, current_app, flash, redirect, render_template, request, url_for

from worker.gateways.base import GatewayError
from worker.gateways.hosted import HostedStatus
from worker.services import orders
from worker.services.payments import PaymentRefused, hosted_checkout
from worker.web import forms, order_session
from worker.web.errors import csrf_error
from worker.web.i18n import translate_in_context as t
from worker.web.runtime import runtime_of
from worker.web.webhooks import gateway_named, settle_after

log = logging.getLogger(__name__)

blueprint = Blueprint("hosted", __name__)


def _payable(order) -> bool:
    return orders.next_step(order) == "pay" and order.payment_method in ("card", "paypal")


@blueprint.route("/ordine/<public_id>/pagamento/sicuro", methods=["GET", "POST"])
def start(public_id: str):
    runtime = runtime_of(current_app)
    form = forms.ButtonForm()
    if request.method == "POST" and not form.validate_on_submit():
        return csrf_error(None)
    with order_session.db() as db_session:
        order = order_session.load_order(db_session, public_id)
        if not _payable(order) or runtime.settings.payment_gateway == "sandbox":
            return redirect(url_for("web.order_status", public_id=public_id), 303)
        if request.method == "POST":
            gateway = gateway_named(runtime.settings.payment_gateway)
            try:
                url = hosted_checkout.start_hosted_checkout(db_session, gateway, order, settings=runtime.settings)
            except PaymentRefused:
                return redirect(url_for("web.order_status", public_id=public_id), 303)
            except GatewayError as error:
                db_session.rollback()
                log.warning("order %s: the gateway did not open the checkout: %s", order.order_number, error)
                flash(
                    t(
                        "Il servizio di pagamento non risponde in questo momento: nulla è stato addebitato. "
                        "Riprovi tra qualche minuto.",
                        "The payment service is not answering now: nothing was charged. Try again in a few minutes.",
                    )
                )
                return redirect(url_for("hosted.start", public_id=public_id), 303)
            return redirect(url, 303)
        return _page(order, "start", form=form)


@blueprint.route("/ordine/<public_id>/pagamento/esito", methods=["GET", "POST"])
def result(public_id: str):
    runtime = runtime_of(current_app)
    if request.method == "POST" and not forms.ButtonForm().validate_on_submit():
        return csrf_error(None)
    gateway_name = runtime.settings.payment_gateway
    returned = request.args.get("session_id" if gateway_name == "stripe" else "token")
    with order_session.db() as db_session:
        order = order_session.load_order(db_session, public_id)
        reference = hosted_checkout.started_checkout(order, returned)
        if not _payable(order) or reference is None or gateway_name == "sandbox":
            return redirect(url_for("web.order_status", public_id=public_id), 303)
        gateway = gateway_named(gateway_name)
        if gateway_name == "paypal":
            return _paypal_return(db_session, gateway, order, reference)
        try:
            payment = hosted_checkout.read_hosted_checkout(gateway, reference)
        except GatewayError as error:
            log.warning("order %s: the checkout was not read: %s", order.order_number, error)
            return _page(order, "confirming")
        if payment.status is HostedStatus.FAILED:
            flash(_declined())
            return redirect(url_for("web.order_status", public_id=public_id), 303)
        return _page(order, "paid" if payment.status is HostedStatus.PAID else "confirming")


def _paypal_return(db_session, gateway, order, reference):
    runtime = runtime_of(current_app)
    if request.method != "POST":
        return _page(order, "confirm", form=forms.ButtonForm())
    try:
        payment, registered = hosted_checkout.finish_hosted_checkout(
            db_session, gateway, order, reference, now=runtime.clock(), today=runtime.today(), settings=runtime.settings
        )
    except GatewayError as error:
        db_session.rollback()
        log.warning("order %s: the capture's answer was lost: %s", order.order_number, error)
        return _page(order, "confirming")
    if registered is not None:
        settle_after(db_session, gateway.name, registered)
    if payment.status is HostedStatus.FAILED:
        flash(_declined())
    if payment.status in (HostedStatus.PAID, HostedStatus.FAILED):
        return redirect(url_for("web.order_status", public_id=order.public_id), 303)
    return _page(order, "confirming")


@blueprint.get("/ordine/<public_id>/pagamento/annullato")
def cancelled(public_id: str):
    with order_session.db() as db_session:
        order = order_session.load_order(db_session, public_id)
        if not _payable(order):
            return redirect(url_for("web.order_status", public_id=public_id), 303)
        return _page(order, "cancelled", form=forms.ButtonForm())


def _declined() -> str:
    return t(
        "Il pagamento non è andato a buon fine e nulla è stato addebitato. L'ordine resta in attesa di pagamento: "
        "può riprovare.",
        "The payment did not go through and nothing was charged. The order is still awaiting payment: you can "
        "try again.",
    )


def _page(order, state: str, form=None):
    return render_template(
        "hosted_checkout.html",
        order=order,
        state=state,
        summary=orders.order_summary(order),
        form=form,
        gateway=runtime_of(current_app).settings.payment_gateway,
    )

"""``POST /webhooks/stripe``, ``/webhooks/paypal`` and ``/webhooks/sandbox``: the gateways tell us what happened.

Each endpoint verifies the event first (Stripe: ``stripe.Webhook.construct_event``
with ``STRIPE_WEBHOOK_SECRET`` and its default tolerance; PayPal: its
verify-webhook-signature call with ``PAYPAL_WEBHOOK_ID``; the sandbox: its Standard Webhooks
signature with ``SANDBOX_WEBHOOK_SECRET``) and answers 400,
changing nothing, when it does not verify.  A verified event is recorded and
applied once (``worker.services.payments.webhooks``): a replay answers 200 and
changes nothing, a type we do not handle answers 200 and changes nothing.  When
PayPal cannot be asked to verify, or the database is away, the answer is 503 and
the gateway sends the event again later.

The routes are exempt from CSRF (a gateway has no form token; the signature is
the proof), and only from CSRF: the Origin check, the headers and the body size
limit stay.  An endpoint whose secret is not set answers 404.  Log lines name
the event's id and type, never a token.
"""

from __future__ import annotations

import json
import logging

from flask import Blueprint, Response, abort, current_app, request

from worker.gateways import make_gateway, sandbox_webhooks
from worker.gateways.base import ChargeOutcome, ChargeResult, GatewayError
from worker.gateways.refunds import WebhookRefused, WebhookUnverifiable
from worker.gateways.stripe_gateway import StripeGateway
from worker.services import charges
from worker.services.payments import gateway_events, hosted_checkout, refunds, webhooks
from worker.web.runtime import runtime_of

log = logging.getLogger(__name__)

blueprint = Blueprint("webhooks", __name__)


@blueprint.post("/webhooks/stripe")
def stripe_webhook() -> Response:
    settings = runtime_of(current_app).settings
    if not (settings.stripe_webhook_secret and settings.stripe_api_key):
        abort(404)
    try:
        event = StripeGateway.verify_webhook(
            request.get_data(cache=False), request.headers.get("Stripe-Signature"), settings.stripe_webhook_secret
        )
    except WebhookRefused as refused:
        log.warning("webhook stripe refused: %s", refused)
        return _answer(400, "signature refused")
    return _process(gateway_events.stripe_notice(event))


@blueprint.post("/webhooks/paypal")
def paypal_webhook() -> Response:
    settings = runtime_of(current_app).settings
    if not settings.paypal_webhook_id:
        abort(404)
    body = request.get_data(cache=False)
    try:
        event = json.loads(body)
    except ValueError:
        event = None
    if not (isinstance(event, dict) and isinstance(event.get("id"), str) and isinstance(event.get("event_type"), str)):
        log.warning("webhook paypal refused: the body is not a PayPal event")
        return _answer(400, "not an event")
    headers = {name.lower(): value for name, value in request.headers.items()}
    try:
        verified = gateway_named("paypal").verify_webhook(headers, body, settings.paypal_webhook_id)
    except WebhookUnverifiable as error:
        log.warning("webhook paypal event %s (%s) not verified now: %s", *_named(event), error)
        return _answer(503, "cannot verify now")
    if not verified:
        log.warning("webhook paypal event %s (%s) refused: signature", *_named(event))
        return _answer(400, "signature refused")
    return _process(gateway_events.paypal_notice(event))


@blueprint.post("/webhooks/sandbox")
def sandbox_webhook() -> Response:
    """The sandbox gateway's own events (``SANDBOX_WEBHOOK_URL`` points here), verified with
    ``SANDBOX_WEBHOOK_SECRET`` as the Standard Webhooks specification says."""
    settings = runtime_of(current_app).settings
    if not settings.sandbox_webhook_secret:
        abort(404)
    headers = {name.lower(): value for name, value in request.headers.items()}
    try:
        event_id, event = sandbox_webhooks.verify(
            request.get_data(cache=False), headers, settings.sandbox_webhook_secret
        )
    except WebhookRefused as refused:
        log.warning("webhook sandbox refused: %s", refused)
        return _answer(400, "signature refused")
    return _process(gateway_events.sandbox_notice(event_id, event))


def _process(notice: gateway_events.GatewayNotice) -> Response:
    runtime = runtime_of(current_app)
    with runtime.session_factory() as session:
        try:
            result = webhooks.record_event(
                session, notice, now=runtime.clock(), today=runtime.today(), settings=runtime.settings
            )
            session.commit()
        except BaseException:
            session.rollback()
            raise
        if result.outcome == webhooks.REGISTERED and notice.saved_method_checkout:
            try:
                hosted_checkout.remember_saved_method(
                    session,
                    gateway_named(notice.gateway),
                    result.order_number,
                    notice.saved_method_checkout,
                    now=runtime.clock(),
                    today=runtime.today(),
                )
            except GatewayError as error:
                session.rollback()
                log.warning("order %s: the kept card was not read: %s", result.order_number, error)
        settle_after(session, notice.gateway, result)
        complete_authenticated_charge(session, notice)
    return _answer(200, result.outcome)


def complete_authenticated_charge(session, notice: gateway_events.GatewayNotice) -> None:
    """An auto-renew charge that waited for the holder's authentication, now paid (Stripe's
    ``payment_intent.succeeded``, PayPal's capture of the charge's order, the sandbox's
    ``charge.succeeded`` of the charge's key): its renewal, once,
    whether the return page came first or not (:func:`worker.services.charges.finish_authentication`)."""
    if notice.kind is gateway_events.NoticeKind.INTENT_SUCCEEDED:
        reference = notice.payment_reference
    elif notice.kind is gateway_events.NoticeKind.PAYMENT and notice.gateway == gateway_events.SANDBOX:
        reference = None if notice.order_number else notice.payment_reference  # the charge's key
    elif notice.kind is gateway_events.NoticeKind.PAYMENT:
        reference = notice.related_order
    else:
        return
    if not reference:
        return
    intent_id = charges.waiting_intent_for(session, reference)
    session.rollback()
    if intent_id is None:
        return
    runtime = runtime_of(current_app)
    charges.finish_authentication(
        runtime.session_factory,
        gateway_named(notice.gateway),
        intent_id,
        today=runtime.today(),
        answer=ChargeResult(ChargeOutcome.SUCCEEDED, reference, "authenticated and paid"),
        **runtime.charge_options,
    )


def settle_after(session, gateway: str, result: webhooks.EventResult) -> None:
    """Ask for the refund an event (or a return from a hosted page) started, once it is committed."""
    runtime = runtime_of(current_app)
    if result.refund_id is not None:
        try:
            refunds.settle_refund(
                session,
                gateway_named(gateway),
                result.refund_id,
                now=runtime.clock(),
                today=runtime.today(),
                settings=runtime.settings,
            )
        except Exception as error:  # the refund stays open: `payments refunds-retry` asks again with its key
            session.rollback()
            log.error("refund %s left open: %s", result.refund_id, type(error).__name__, exc_info=True)


def gateway_named(name: str):
    """The app's adapter for gateway ``name`` (the configured one, or another one a late event names)."""
    app = current_app._get_current_object()
    cache = app.extensions.setdefault("pec_gateways", {})
    gateway = cache.get(name)
    if gateway is None:
        runtime = runtime_of(app)
        gateway = cache[name] = make_gateway(runtime.settings, runtime.session_factory, clock=runtime.clock, name=name)
    return gateway


def _named(event: dict) -> tuple[str, str]:
    """An unverified event's id and type, fit for a log line (printable, short)."""
    return tuple("".join(c for c in str(event[key])[:80] if c.isprintable()) for key in ("id", "event_type"))


def _answer(status: int, outcome: str) -> Response:
    return Response(json.dumps({"outcome": outcome}), status, {"Content-Type": "application/json"})

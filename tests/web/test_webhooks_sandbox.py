"""The sandbox's signed webhooks: written with its record, POSTed by the events' sender to the link
handler served on loopback (a real HTTP server), verified, and processed once through gateway_events."""

from __future__ import annotations

import base64
import json
from datetime import UTC, date, datetime, timedelta
from types import SimpleNamespace

import httpx
import pytest
from sqlalchemy import select
from standardwebhooks.webhooks import Webhook

from tests.support.browser import served_app
from tests.support.factories import make_mailbox
from tests.support.link_handler import close_runtime, runtime_on_test_database
from tests.support.orders import complete_order
from tests.support.settings import make_settings
from worker.gateways import make_gateway
from worker.services import payments
from worker.services.health import check_webhooks
from worker.services.payments.refunds import request_refund, settle_refund
from worker.store.models import GatewayEvent, Mailbox, Payment, SandboxWebhook

SECRET = "whsec_" + base64.b64encode(b"s" * 32).decode()


def wall_clock() -> datetime:
    return datetime.now(UTC)  # the signatures' timestamps are checked against the wall clock


@pytest.fixture
def served(tmp_path, database_url, session_factory):
    """(the link handler's base URL, the worker's runtime that sends the sandbox's webhooks to it)."""
    with served_app(tmp_path / "web", database_url, session_factory, wall_clock, sandbox_webhook_secret=SECRET) as (
        _web,
        base_url,
    ):
        settings = make_settings(
            tmp_path,
            database_url=database_url,
            sandbox_webhook_url=f"{base_url}/webhooks/sandbox",
            sandbox_webhook_secret=SECRET,
        )
        worker = runtime_on_test_database(settings, session_factory, wall_clock)
        try:
            yield base_url, worker
        finally:
            close_runtime(worker)


def paid_order(session_factory, worker, token: str):
    """An order paid on the sandbox's checkout by the worker's gateway (its webhooks on)."""
    today = date.today()
    gateway = make_gateway(worker.settings, session_factory, clock=wall_clock)
    with session_factory() as session:
        mailbox = make_mailbox(session, expires_on=today + timedelta(days=40))
        order = complete_order(session, worker.settings, mailbox, method="card", today=today)
        result = payments.pay_order_with_gateway(
            session, gateway, order, token, method="card", now=wall_clock(), today=today, settings=worker.settings
        )
        return order.order_number, order.id, mailbox.id, result


def events(session_factory) -> list[tuple[str, str, str | None]]:
    with session_factory() as session:
        rows = session.scalars(select(GatewayEvent).order_by(GatewayEvent.id)).all()
        return [(row.gateway, row.event_type, row.outcome) for row in rows]


def webhooks(session_factory) -> list[tuple[str, str]]:
    with session_factory() as session:
        rows = session.scalars(select(SandboxWebhook).order_by(SandboxWebhook.id)).all()
        return [(row.type, row.status) for row in rows]


def test_a_checkout_payment_is_posted_signed_and_recorded_once(served, session_factory):
    base_url, worker = served
    number, order_id, _mailbox_id, result = paid_order(session_factory, worker, "pm_card_visa")
    assert result.succeeded
    # Written with the sandbox's record, not posted inside the checkout.
    assert webhooks(session_factory) == [("charge.succeeded", "pending")]
    assert events(session_factory) == []

    sent = worker.sandbox_webhook_sender.deliver_due()
    assert (sent.delivered, sent.failed, sent.deferred) == (1, 0, 0)
    assert webhooks(session_factory) == [("charge.succeeded", "delivered")]
    # The checkout registered it first: the event finds it registered, under the same reference.
    assert events(session_factory) == [("sandbox", "charge.succeeded", "already_registered")]
    with session_factory() as session:
        event = session.scalar(select(GatewayEvent))
        assert (event.order_number, event.payment_reference) == (number, f"order:{order_id}:1")
        assert session.scalars(select(Payment.reference)).all() == [f"sandbox:order:{order_id}:1"]
    assert worker.sandbox_webhook_sender.deliver_due().handled == 0  # sent once

    # The same signed event again (a retry after a lost 200): 200, and nothing changes.
    with session_factory() as session:
        row = session.scalar(select(SandboxWebhook))
        body = json.dumps({"type": row.type, "timestamp": row.occurred_at.isoformat(), "data": row.data})
        webhook_id = row.webhook_id
    now = wall_clock()
    headers = {
        "content-type": "application/json",
        "webhook-id": webhook_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(SECRET).sign(webhook_id, now, body),
    }
    replay = httpx.post(f"{base_url}/webhooks/sandbox", content=body, headers=headers)
    assert (replay.status_code, replay.json()) == (200, {"outcome": "replay"})
    assert len(events(session_factory)) == 1

    # A body changed after signing, or signed with another secret: 400, nothing recorded.
    forged = httpx.post(f"{base_url}/webhooks/sandbox", content=body.replace("succeeded", "failed"), headers=headers)
    assert forged.status_code == 400
    other = "whsec_" + base64.b64encode(b"o" * 32).decode()
    headers["webhook-signature"] = Webhook(other).sign(webhook_id, now, body)
    assert httpx.post(f"{base_url}/webhooks/sandbox", content=body, headers=headers).status_code == 400
    assert len(events(session_factory)) == 1


def test_the_webhook_registers_a_payment_whose_answer_the_checkout_lost(served, session_factory):
    _base_url, worker = served
    number, _order_id, mailbox_id, result = paid_order(session_factory, worker, "pm_sandbox_timeout")
    assert result.outcome == "unknown"  # the holder saw no answer; the sandbox charged
    with session_factory() as session:
        assert session.scalars(select(Payment)).all() == []
        old_expiry = session.get_one(Mailbox, mailbox_id).expires_on
    assert worker.sandbox_webhook_sender.deliver_due().delivered == 1
    assert events(session_factory) == [("sandbox", "charge.succeeded", "registered")]
    with session_factory() as session:
        assert session.scalar(select(GatewayEvent.order_number)) == number
        assert session.get_one(Mailbox, mailbox_id).expires_on == old_expiry.replace(year=old_expiry.year + 1)


def test_a_refund_and_a_declined_charge_are_told_too(served, session_factory):
    _base_url, worker = served
    number, _order_id, _mailbox_id, _result = paid_order(session_factory, worker, "pm_card_visa")
    gateway = make_gateway(worker.settings, session_factory, clock=wall_clock)
    with session_factory() as session, session.begin():
        refund_id = request_refund(session, order_number=number, amount_cents=100, reason="", now=wall_clock()).id
    with session_factory() as session:
        done = settle_refund(
            session, gateway, refund_id, now=wall_clock(), today=date.today(), settings=worker.settings
        )
        assert done.status == "succeeded"
    charge = gateway.charge(
        payment_method="pm_card_chargeDeclined", amount_cents=2440, currency="EUR", idempotency_key="renewal:9:1",
        description="Rinnovo automatico",
    )  # fmt: skip
    assert charge.decline_code == "generic_decline"
    assert worker.sandbox_webhook_sender.deliver_due().delivered == 3
    # A charge's refund goes out after the charge; another charge's event does not wait for them.
    assert events(session_factory) == [
        ("sandbox", "charge.succeeded", "already_registered"),
        ("sandbox", "charge.failed", "payment_failed"),
        ("sandbox", "refund.succeeded", "refunded"),
    ]


def test_without_a_url_the_sandbox_writes_no_webhook_and_without_a_secret_the_endpoint_is_not_there(
    tmp_path, database_url, session_factory
):
    settings = make_settings(tmp_path, database_url=database_url)
    gateway = make_gateway(settings, session_factory, clock=wall_clock)
    assert gateway.charge(
        payment_method="pm_card_visa", amount_cents=100, currency="EUR", idempotency_key="k", description="x"
    ).succeeded
    assert webhooks(session_factory) == []
    with served_app(tmp_path / "web", database_url, session_factory, wall_clock) as (_web, base_url):
        assert httpx.post(f"{base_url}/webhooks/sandbox", content=b"{}").status_code == 404


def test_check_says_where_the_sandbox_s_webhooks_go(tmp_path):
    settings = make_settings(
        tmp_path,
        sandbox_webhook_url="https://rinnovi.example.test/webhooks/sandbox?k=secret",
        sandbox_webhook_secret=SECRET,
    )
    said = check_webhooks(SimpleNamespace(settings=settings))
    assert said.startswith("sandbox webhooks sent to https://rinnovi.example.test/webhooks/sandbox;")
    assert "secret" not in said
    assert check_webhooks(SimpleNamespace(settings=make_settings(tmp_path))) == "sandbox: no webhook to receive"


def test_a_challenge_approved_is_told_by_its_own_charge_succeeded(served, session_factory):
    """A checkout charge that asked for 3-D Secure, approved on the sandbox's challenge: the sandbox
    tells both answers of the charge, in order, and the second registers the payment."""
    _base_url, worker = served
    number, order_id, mailbox_id, result = paid_order(session_factory, worker, "pm_card_authenticationRequired")
    assert result.outcome == "requires_authentication"
    gateway = make_gateway(worker.settings, session_factory, clock=wall_clock)
    step = gateway.start_authentication(reference=result.reference, payment_method="-", return_url="/o")
    challenge = gateway.answer_challenge(step.url.rsplit("/", 1)[1], approve=True)
    assert challenge.status == "approved"
    assert webhooks(session_factory) == [("charge.failed", "pending"), ("charge.succeeded", "pending")]
    assert worker.sandbox_webhook_sender.deliver_due().delivered == 2
    assert events(session_factory) == [
        ("sandbox", "charge.failed", "payment_failed"),
        ("sandbox", "charge.succeeded", "registered"),
    ]
    with session_factory() as session:
        assert session.scalars(select(Payment.reference)).all() == [f"sandbox:order:{order_id}:1"]
        assert session.scalar(select(GatewayEvent.order_number).where(GatewayEvent.outcome == "registered")) == number
        assert session.get_one(Mailbox, mailbox_id).expires_on > date.today() + timedelta(days=40)


def test_an_auto_renew_charge_authenticated_on_the_challenge_is_completed_by_the_webhook(served, session_factory):
    from tests.support.charges import mark_charge_notice_sent
    from worker.rules.schedule import add_years
    from worker.services import charges
    from worker.store.models import ChargeIntent

    _base_url, worker = served
    today = date.today()
    with session_factory() as session, session.begin():
        mailbox = make_mailbox(
            session,
            expires_on=today + timedelta(days=7),
            auto_renew=True,
            payment_method="pm_card_authenticationRequired",
        )
        mark_charge_notice_sent(session, mailbox)
        session.flush()
        mailbox_id, expires_on = mailbox.id, mailbox.expires_on
    gateway = make_gateway(worker.settings, session_factory, clock=wall_clock)
    run = charges.charge_mailbox(
        session_factory, gateway, mailbox_id, today=today, clock=wall_clock, mail_domain="x.it"
    )
    assert run.outcome == "authentication-required"
    with session_factory() as session:
        reference = session.scalar(select(ChargeIntent.reference))
    step = gateway.start_authentication(reference=reference, payment_method="-", return_url="/o")
    gateway.answer_challenge(step.url.rsplit("/", 1)[1], approve=True)
    # No return page: the sandbox's charge.succeeded alone completes the renewal.
    assert worker.sandbox_webhook_sender.deliver_due().delivered == 2
    with session_factory() as session:
        assert session.get_one(Mailbox, mailbox_id).expires_on == add_years(expires_on, 1)
        assert session.scalars(select(ChargeIntent.status)).all() == ["succeeded"]

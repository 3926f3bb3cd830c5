"""A PayPal payment taken on the holder's return, the process killed before our commit.

The web process captures the approved order at PayPal (money moved) and is
SIGKILLed right after PayPal's answer, before the payment is registered: a real
subprocess (``child_main``) runs the return page's service with the adapter
wrapped so that it kills its own process once ``checkout_status`` (the capture)
returns.  Then PayPal's ``PAYMENT.CAPTURE.COMPLETED`` webhook arrives and
registers the payment, once; the holder's second click replays the capture under
the same ``PayPal-Request-Id`` and finds it registered.  PayPal moved money once;
we registered it once.  The hook lives here, not in production code.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from datetime import date

import pytest
from sqlalchemy import func, select

from config.settings import Settings
from tests.support.factories import make_mailbox
from tests.support.faults import ROOT
from tests.support.gateway_servers import PAYPAL_CLIENT
from tests.support.gateway_webhooks import PAYPAL_WEBHOOK_ID, HostedPayPal, paypal_event
from tests.support.orders import NOW, TODAY, complete_order
from tests.support.settings import TEST_SECRET_KEYS, make_settings
from worker.gateways import make_gateway
from worker.services.payments import hosted_checkout
from worker.services.runtime import Runtime
from worker.store.models import Mailbox, Payment, RenewalOrder
from worker.web import create_app

EXPIRY = date(2027, 3, 20)


class KillingGateway:
    """The real PayPal adapter; the process dies the moment PayPal has answered the capture."""

    def __init__(self, inner):
        self._inner = inner
        self.name = inner.name

    def checkout_status(self, reference):
        answer = self._inner.checkout_status(reference)
        os.kill(os.getpid(), signal.SIGKILL)
        return answer


def child_main() -> None:  # pragma: no cover - runs in a subprocess
    rt = Runtime(Settings.from_env())
    gateway = KillingGateway(make_gateway(rt.settings, rt.session_factory))
    with rt.session_factory() as session:
        order = session.scalar(select(RenewalOrder))
        hosted_checkout.finish_hosted_checkout(
            session, gateway, order, order.gateway_token, now=NOW, today=TODAY, settings=rt.settings
        )
    print("not killed")


@pytest.fixture
def paypal_server():
    server = HostedPayPal().start()
    yield server
    server.stop()


def paypal_environment(server) -> dict[str, str]:
    return {
        "payment_gateway": "paypal",
        "paypal_client_id": PAYPAL_CLIENT[0],
        "paypal_client_secret": PAYPAL_CLIENT[1],
        "paypal_api_base": server.url,
        "paypal_webhook_id": PAYPAL_WEBHOOK_ID,
    }


def test_killed_after_the_capture_the_webhook_registers_once(tmp_path, database_url, session_factory, paypal_server):
    settings = make_settings(tmp_path, database_url=database_url, **paypal_environment(paypal_server))
    gateway = make_gateway(settings, session_factory)
    with session_factory() as session:
        mailbox = make_mailbox(session, expires_on=EXPIRY, plan="pro")
        placed = complete_order(session, settings, mailbox, method="paypal")
        session.commit()
        hosted_checkout.start_hosted_checkout(session, gateway, placed, settings=settings)
        order_id, mailbox_id = placed.gateway_token, mailbox.id
    paypal_server.approve(order_id)

    env = dict(os.environ)
    env.update({f"PEC_RENEWAL_{key.upper()}": value for key, value in paypal_environment(paypal_server).items()})
    env.update(
        PEC_RENEWAL_DATABASE_URL=database_url,
        PEC_RENEWAL_SECRET_KEYS=TEST_SECRET_KEYS,
        PEC_RENEWAL_BASE_URL="https://rinnovi.example.test",
        PEC_RENEWAL_MAIL_FROM="Rinnovi PEC <rinnovi@pec-provider.example>",
        PEC_RENEWAL_VAR_DIR=str(tmp_path / "child-var"),
        PYTHONPATH=str(ROOT),
    )
    child = subprocess.run(
        [sys.executable, "-c", "from tests.faults.test_hosted_payment_killed import child_main; child_main()"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip

    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]
    assert len(paypal_server.captures) == 1  # the money moved
    with session_factory() as session:
        assert session.scalar(select(func.count()).select_from(Payment)) == 0  # our commit never happened
        assert session.get(Mailbox, mailbox_id).expires_on == EXPIRY

    # PayPal's webhook for that capture registers it.
    capture = paypal_server.orders[order_id]["purchase_units"][0]["payments"]["captures"][0]
    event = paypal_event("PAYMENT.CAPTURE.COMPLETED", capture)
    runtime = Runtime(settings)
    runtime.__dict__["session_factory"] = session_factory
    try:
        client = create_app(runtime).test_client()
        answers = [
            client.post(
                "/webhooks/paypal", data=json.dumps(event), headers=paypal_server.signed_headers(event),
                content_type="application/json",
            ).json
            for _ in range(2)
        ]  # fmt: skip
    finally:
        runtime.close()
    assert answers == [{"outcome": "registered"}, {"outcome": "replay"}]

    # The holder clicks again: the capture is replayed under its request id, the payment found registered.
    with session_factory() as session:
        order = session.scalar(select(RenewalOrder))
        payment, result = hosted_checkout.finish_hosted_checkout(
            session, gateway, order, order_id, now=NOW, today=TODAY, settings=settings
        )
    assert result.outcome == "already_registered"
    assert len(paypal_server.captures) == 1
    with session_factory() as session:
        assert session.scalar(select(func.count()).select_from(Payment)) == 1
        mailbox = session.get(Mailbox, mailbox_id)
        assert mailbox.expires_on == date(2028, 3, 20)
        assert mailbox.auto_renew and mailbox.payment_method.startswith("paypal.VLT")
    gateway.close()

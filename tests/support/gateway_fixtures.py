"""Local Stripe and PayPal servers as fixtures, and the link handler's settings pointed at one of them.

Registered as a plugin in ``tests/conftest.py``.  The servers are the hosted ones
(:class:`~tests.support.gateway_webhooks.HostedStripe`, ``HostedPayPal``): every call the
worker makes, the checkout's and the setup's pages included, answered in the documented shapes.
"""

from __future__ import annotations

import pytest

from tests.support.gateway_servers import PAYPAL_CLIENT
from tests.support.gateway_webhooks import PAYPAL_WEBHOOK_ID, STRIPE_WEBHOOK_SECRET, HostedPayPal, HostedStripe
from tests.support.settings import make_settings


@pytest.fixture
def stripe_server():
    server = HostedStripe().start()
    yield server
    server.stop()


@pytest.fixture
def paypal_server():
    server = HostedPayPal().start()
    yield server
    server.stop()


@pytest.fixture
def gateway_settings(request, tmp_path, database_url):
    """Settings for PayPal's local server when the test's name says ``paypal``, else for Stripe's."""
    if "paypal" in request.node.name:
        server = request.getfixturevalue("paypal_server")
        return make_settings(
            tmp_path, database_url=database_url, payment_gateway="paypal", paypal_client_id=PAYPAL_CLIENT[0],
            paypal_client_secret=PAYPAL_CLIENT[1], paypal_api_base=server.url, paypal_webhook_id=PAYPAL_WEBHOOK_ID,
        )  # fmt: skip
    server = request.getfixturevalue("stripe_server")
    return make_settings(
        tmp_path, database_url=database_url, payment_gateway="stripe", stripe_api_key="sk_test_local",
        stripe_api_base=server.url, stripe_webhook_secret=STRIPE_WEBHOOK_SECRET,
    )  # fmt: skip

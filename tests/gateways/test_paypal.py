"""The PayPal adapter, over HTTP, against a local server that answers like PayPal's Orders v2 API."""

from __future__ import annotations

import pytest

from tests.support.gateway_servers import PAYPAL_CLIENT, FakePayPal
from tests.support.settings import make_settings
from worker.gateways import ChargeOutcome, GatewayError, IdempotencyConflict, PaymentGateway, make_gateway
from worker.gateways.paypal import LOOKUP_MARKER, PayPalGateway, request_id

KEY = "charge:42:2027-03-31:1"
MIT_CARD = {"payment_initiator": "MERCHANT", "payment_type": "RECURRING", "usage": "SUBSEQUENT"}
MIT_WALLET = {"payment_initiator": "MERCHANT", "usage": "SUBSEQUENT", "usage_pattern": "SUBSCRIPTION_PREPAID"}


@pytest.fixture
def server():
    server = FakePayPal().start()
    yield server
    server.stop()


@pytest.fixture
def gateway(server):
    gateway = PayPalGateway(
        client_id=PAYPAL_CLIENT[0], client_secret=PAYPAL_CLIENT[1], api_base=server.url, read_timeout=0.5
    )
    yield gateway
    gateway.close()


def charge(gateway, token, key=KEY, amount=2440):
    return gateway.charge(
        payment_method=token,
        amount_cents=amount,
        currency="EUR",
        idempotency_key=key,
        description="Rinnovo casella@pec.example.it",
    )


def test_a_vaulted_paypal_wallet_is_charged_merchant_initiated_with_request_ids(gateway, server):
    result = charge(gateway, "paypal.ok")

    assert result.outcome is ChargeOutcome.SUCCEEDED
    (create,) = server.sent("POST", "/v2/checkout/orders")[:1]
    assert create.path == "/v2/checkout/orders"
    assert create.headers["paypal-request-id"] == KEY
    assert create.headers["authorization"].startswith("Bearer A21AA")
    assert create.json == {
        "intent": "CAPTURE",
        "purchase_units": [
            {
                "reference_id": "default",
                "custom_id": KEY,
                "invoice_id": KEY,
                "description": "Rinnovo casella@pec.example.it",
                "amount": {"currency_code": "EUR", "value": "24.40"},
            }
        ],
    }
    (capture,) = [r for r in server.requests if r.path.endswith("/capture")]
    assert capture.path == f"/v2/checkout/orders/{result.reference}/capture"
    assert capture.headers["paypal-request-id"] == KEY + "-capture"
    assert capture.json == {"payment_source": {"paypal": {"vault_id": "ok", "stored_credential": MIT_WALLET}}}
    assert server.money_moved(result.reference) == 1
    assert isinstance(gateway, PaymentGateway) and gateway.name == "paypal"


def test_a_vaulted_card_carries_the_card_stored_credential_flags(gateway, server):
    result = charge(gateway, "card:ok")

    assert result.outcome is ChargeOutcome.SUCCEEDED
    (capture,) = [r for r in server.requests if r.path.endswith("/capture")]
    assert capture.json == {"payment_source": {"card": {"vault_id": "ok", "stored_credential": MIT_CARD}}}


def test_the_access_token_is_fetched_once_and_reused(gateway, server):
    charge(gateway, "paypal.ok", key="a")
    charge(gateway, "paypal.ok", key="b")
    (token,) = server.sent("POST", "/v1/oauth2/token")
    assert token.form == {"grant_type": "client_credentials"}
    assert token.headers["authorization"].startswith("Basic ")


def test_an_expired_token_is_renewed_once(gateway, server):
    charge(gateway, "paypal.ok", key="a")
    server.tokens.clear()  # PayPal revoked or expired it early
    assert charge(gateway, "paypal.ok", key="b").outcome is ChargeOutcome.SUCCEEDED
    assert len(server.sent("POST", "/v1/oauth2/token")) == 2


@pytest.mark.parametrize(
    ("vault_id", "outcome", "decline_code"),
    [
        ("insufficient", ChargeOutcome.SOFT_DECLINE, "5120"),
        ("expired", ChargeOutcome.HARD_DECLINE, "5400"),
        ("declined", ChargeOutcome.HARD_DECLINE, "INSTRUMENT_DECLINED"),
        ("auth", ChargeOutcome.REQUIRES_AUTHENTICATION, "PAYER_ACTION_REQUIRED"),
    ],
)
def test_declines_are_classified(gateway, server, vault_id, outcome, decline_code):
    result = charge(gateway, f"paypal.{vault_id}")

    assert (result.outcome, result.decline_code) == (outcome, decline_code)
    assert server.captures == []


def test_a_replay_returns_the_same_order_and_charges_once(gateway, server):
    first = charge(gateway, "paypal.ok")
    second = charge(gateway, "paypal.ok")

    assert first.outcome is second.outcome is ChargeOutcome.SUCCEEDED
    assert first.reference == second.reference
    assert len(server.orders) == 1
    assert server.money_moved(first.reference) == 1


def test_a_declined_replay_stays_declined_without_a_second_attempt(gateway, server):
    assert charge(gateway, "paypal.declined").outcome is ChargeOutcome.HARD_DECLINE
    assert charge(gateway, "paypal.declined").outcome is ChargeOutcome.HARD_DECLINE
    assert len(server.orders) == 1


def test_the_same_key_for_another_amount_is_refused(gateway, server):
    first = charge(gateway, "paypal.ok")
    with pytest.raises(IdempotencyConflict):
        charge(gateway, "paypal.declined", amount=100)
    assert server.money_moved(first.reference) == 1


@pytest.mark.parametrize("vault_id", ["error500", "slow", "badjson"])
def test_a_lost_answer_is_unknown_and_the_lookup_finds_the_capture(gateway, server, vault_id):
    result = charge(gateway, f"paypal.{vault_id}")

    assert result.outcome is ChargeOutcome.UNKNOWN
    found = gateway.lookup(KEY)
    assert found is not None
    assert found.outcome is ChargeOutcome.SUCCEEDED
    assert found.reference == result.reference
    assert len(server.orders) == 1
    assert server.money_moved(found.reference) == 1
    # The lookup repeated the order creation with the charge's own request id.
    creates = server.sent("POST", "/v2/checkout/orders")
    assert [r.headers["paypal-request-id"] for r in creates if r.path == "/v2/checkout/orders"] == [KEY, KEY]

    # A charge retried blindly with the same key still does not charge twice.
    assert charge(gateway, f"paypal.{vault_id}").outcome is ChargeOutcome.SUCCEEDED
    assert server.money_moved(found.reference) == 1


def test_lookup_of_a_key_paypal_never_saw_moves_no_money_and_the_charge_still_works(gateway, server):
    assert gateway.lookup(KEY) is None
    (placeholder,) = server.orders.values()
    assert placeholder["purchase_units"][0]["custom_id"] == LOOKUP_MARKER
    assert server.captures == []

    result = charge(gateway, "paypal.ok", amount=6100)

    assert result.outcome is ChargeOutcome.SUCCEEDED
    assert result.reference == placeholder["id"]
    unit = server.orders[result.reference]["purchase_units"][0]
    assert unit["amount"] == {"currency_code": "EUR", "value": "61.00"}
    assert unit["custom_id"] == unit["invoice_id"] == KEY
    assert server.money_moved(result.reference) == 1
    assert gateway.lookup(KEY).outcome is ChargeOutcome.SUCCEEDED


def test_an_order_created_but_never_captured_is_no_charge(gateway, server):
    assert charge(gateway, "paypal.declined").outcome is ChargeOutcome.HARD_DECLINE
    assert gateway.lookup(KEY) is None  # no money moved under this key


def test_long_keys_are_hashed_to_fit_the_request_id():
    long_key = "x" * 150
    rid = request_id(long_key)
    assert len(rid + "-capture") <= 108
    assert rid == request_id(long_key) and rid != request_id(long_key + "y")
    assert request_id(KEY) == KEY


def test_an_unreachable_paypal_is_unknown():
    gateway = PayPalGateway(client_id="a", client_secret="b", api_base="http://127.0.0.1:9", connect_timeout=0.5)
    assert charge(gateway, "paypal.ok").outcome is ChargeOutcome.UNKNOWN
    assert gateway.lookup(KEY).outcome is ChargeOutcome.UNKNOWN
    gateway.close()


def test_bad_client_credentials_are_a_configuration_error(server):
    gateway = PayPalGateway(client_id="a", client_secret="wrong", api_base=server.url)
    with pytest.raises(GatewayError):
        charge(gateway, "paypal.ok")
    gateway.close()


def test_a_token_that_is_not_a_vault_reference_is_a_hard_decline(gateway, server):
    result = charge(gateway, "pm_card_visa")
    assert (result.outcome, result.decline_code) == (ChargeOutcome.HARD_DECLINE, "invalid_payment_method")
    assert server.requests == []


def test_make_gateway_points_paypal_at_the_configured_base(tmp_path, server):
    settings = make_settings(
        tmp_path,
        payment_gateway="paypal",
        paypal_client_id=PAYPAL_CLIENT[0],
        paypal_client_secret=PAYPAL_CLIENT[1],
        paypal_api_base=server.url,
    )
    gateway = make_gateway(settings)
    assert charge(gateway, "paypal.ok").outcome is ChargeOutcome.SUCCEEDED
    gateway.close()


def test_logs_hold_neither_secrets_nor_the_vault_id(gateway, server, caplog):
    caplog.set_level("DEBUG")
    charge(gateway, "paypal.Vault8kk8451tQ")
    charge(gateway, "paypal.error500", key="other")
    text = caplog.text
    assert "Vault8kk8451tQ" not in text and "secret-local" not in text
    assert not any(token in text for token in server.tokens)


def test_after_paypal_forgets_the_request_id_the_invoice_id_still_stops_a_second_charge(gateway, server):
    first = charge(gateway, "paypal.ok")
    server.request_ids.clear()  # past PayPal's retention window (6 hours)

    again = charge(gateway, "paypal.ok")

    assert (again.outcome, again.decline_code) == (ChargeOutcome.UNKNOWN, "DUPLICATE_INVOICE_ID")
    assert len(server.captures) == 1 and server.money_moved(first.reference) == 1


def test_the_same_key_for_another_method_is_refused(gateway, server):
    first = charge(gateway, "paypal.ok")
    with pytest.raises(IdempotencyConflict):
        charge(gateway, "card.ok")
    with pytest.raises(IdempotencyConflict):
        charge(gateway, "paypal.someone-else")
    assert len(server.captures) == 1 and server.money_moved(first.reference) == 1


def test_a_payer_action_is_sent_to_its_link_and_captured_once_on_return(server):
    gateway = PayPalGateway(
        client_id=PAYPAL_CLIENT[0],
        client_secret=PAYPAL_CLIENT[1],
        api_base=server.url,
        return_url="https://rinnovi.example.test/rinnovo-automatico/autenticazione/paypal",
    )
    try:
        asked = charge(gateway, "paypal.auth")
        assert asked.outcome is ChargeOutcome.REQUIRES_AUTHENTICATION
        (capture,) = server.sent("POST", f"/v2/checkout/orders/{asked.reference}/capture")
        assert capture.json["payment_source"]["paypal"]["experience_context"] == {
            "return_url": "https://rinnovi.example.test/rinnovo-automatico/autenticazione/paypal",
            "cancel_url": "https://rinnovi.example.test/rinnovo-automatico/autenticazione/paypal",
        }
        step = gateway.start_authentication(reference=asked.reference, payment_method="paypal.auth", return_url="-")
        assert step.url == f"https://www.paypal.com/checkoutnow?token={asked.reference}"
        still = gateway.finish_authentication(reference=asked.reference, idempotency_key=KEY)
        assert still.outcome is ChargeOutcome.REQUIRES_AUTHENTICATION and server.money_moved(asked.reference) == 0
        back = server.payer_acts(asked.reference)
        assert back.endswith(f"?token={asked.reference}&PayerID=PAYERLOCAL")
        done = gateway.finish_authentication(reference=asked.reference, idempotency_key=KEY)
        again = gateway.finish_authentication(reference=asked.reference, idempotency_key=KEY)
        assert done.outcome is again.outcome is ChargeOutcome.SUCCEEDED
        assert server.money_moved(asked.reference) == 1
    finally:
        gateway.close()

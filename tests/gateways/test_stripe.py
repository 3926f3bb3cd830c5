"""The Stripe adapter, over HTTP, against a local server that answers like Stripe's API."""

from __future__ import annotations

import pytest

from tests.support.gateway_servers import FakeStripe
from tests.support.settings import make_settings
from worker.gateways import ChargeOutcome, GatewayError, IdempotencyConflict, PaymentGateway, make_gateway
from worker.gateways.stripe_gateway import StripeGateway, parse_token

KEY = "charge:42:2027-03-31:1"


@pytest.fixture
def server():
    server = FakeStripe().start()
    yield server
    server.stop()


@pytest.fixture
def gateway(server):
    gateway = StripeGateway(api_key="sk_test_local", api_base=server.url, read_timeout=0.5)
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


def test_a_success_sends_an_off_session_merchant_initiated_payment_intent(gateway, server):
    result = charge(gateway, "cus_Q1w2e3r4.pm_card_visa")

    assert result.outcome is ChargeOutcome.SUCCEEDED
    assert result.reference == "pi_000001"
    (request,) = server.sent("POST", "/v1/payment_intents")
    assert request.headers["idempotency-key"] == KEY
    assert request.headers["authorization"] == "Bearer sk_test_local"
    assert request.form == {
        "amount": "2440",
        "currency": "eur",
        "customer": "cus_Q1w2e3r4",
        "payment_method": "pm_card_visa",
        "confirm": "true",
        "off_session": "recurring",
        "description": "Rinnovo casella@pec.example.it",
        "metadata[idempotency_key]": KEY,
    }
    assert isinstance(gateway, PaymentGateway) and gateway.name == "stripe"


@pytest.mark.parametrize(
    ("token", "outcome", "decline_code"),
    [
        ("pm_card_chargeDeclinedInsufficientFunds", ChargeOutcome.SOFT_DECLINE, "insufficient_funds"),
        ("pm_card_chargeDeclined", ChargeOutcome.HARD_DECLINE, "generic_decline"),
        ("pm_card_chargeDeclinedExpiredCard", ChargeOutcome.HARD_DECLINE, "expired_card"),
        ("pm_card_chargeDeclinedLostCard", ChargeOutcome.HARD_DECLINE, "lost_card"),
        ("pm_card_authenticationRequired", ChargeOutcome.REQUIRES_AUTHENTICATION, "authentication_required"),
        ("pm_missing", ChargeOutcome.HARD_DECLINE, "resource_missing"),
    ],
)
def test_card_errors_are_classified(gateway, server, token, outcome, decline_code):
    result = charge(gateway, token)

    assert result.outcome is outcome
    assert result.decline_code == decline_code
    assert server.charges_for(KEY) == []
    if token != "pm_missing":
        assert result.reference == "pi_000001"
        # The declined PaymentIntent is found again by its key, with the same classification.
        assert gateway.lookup(KEY).outcome is outcome


def test_a_replay_returns_the_first_answer_and_charges_once(gateway, server):
    first = charge(gateway, "pm_card_visa")
    second = charge(gateway, "pm_card_visa")

    assert first == second
    assert len(server.charges_for(KEY)) == 1
    requests = server.sent("POST", "/v1/payment_intents")
    assert len(requests) == 2
    assert "customer" not in requests[0].form  # a bare PaymentMethod is sent without a customer


def test_the_same_key_for_another_amount_is_refused(gateway, server):
    charge(gateway, "pm_card_visa")
    with pytest.raises(IdempotencyConflict):
        charge(gateway, "pm_card_visa", amount=9999)
    assert len(server.charges_for(KEY)) == 1


@pytest.mark.parametrize("token", ["pm_server_error", "pm_slow", "pm_bad_json"])
def test_a_lost_answer_is_unknown_and_the_lookup_finds_the_charge(gateway, server, token):
    result = charge(gateway, token)

    assert result.outcome is ChargeOutcome.UNKNOWN
    found = gateway.lookup(KEY)
    assert found is not None
    assert found.outcome is ChargeOutcome.SUCCEEDED
    assert found.reference == "pi_000001"
    (search,) = server.sent("GET", "/v1/payment_intents/search")
    assert search.query["query"] == f"metadata['idempotency_key']:'{KEY}'"
    assert len(server.charges_for(KEY)) == 1


def test_lookup_of_a_key_stripe_never_saw_is_none(gateway, server):
    assert gateway.lookup("never-sent") is None
    charge(gateway, "pm_card_visa", key="it's")
    assert gateway.lookup("it's").outcome is ChargeOutcome.SUCCEEDED


def test_an_unreachable_stripe_is_unknown_not_an_exception():
    gateway = StripeGateway(api_key="sk_test_local", api_base="http://127.0.0.1:9", connect_timeout=0.5)
    assert charge(gateway, "pm_card_visa").outcome is ChargeOutcome.UNKNOWN
    assert gateway.lookup(KEY).outcome is ChargeOutcome.UNKNOWN
    gateway.close()


def test_bad_credentials_are_a_configuration_error(server):
    gateway = StripeGateway(api_key="sk_test_wrong", api_base=server.url)
    with pytest.raises(GatewayError):
        charge(gateway, "pm_card_visa")
    gateway.close()


def test_a_token_that_is_not_a_stripe_payment_method_is_a_hard_decline(gateway, server):
    result = charge(gateway, "paypal.8kk8451t")
    assert (result.outcome, result.decline_code) == (ChargeOutcome.HARD_DECLINE, "invalid_payment_method")
    assert "8kk8451t" not in result.message
    assert server.requests == []


def test_tokens():
    assert parse_token("cus_A.pm_B") == ("cus_A", "pm_B")
    assert parse_token("cus_A:pm_B") == ("cus_A", "pm_B")
    assert parse_token("pm_B") == (None, "pm_B")


def test_make_gateway_points_stripe_at_the_configured_base(tmp_path, server):
    settings = make_settings(
        tmp_path, payment_gateway="stripe", stripe_api_key="sk_test_local", stripe_api_base=server.url
    )
    gateway = make_gateway(settings)
    assert charge(gateway, "pm_card_visa").outcome is ChargeOutcome.SUCCEEDED
    gateway.close()


def test_logs_hold_neither_the_api_key_nor_the_payment_method(gateway, server, caplog):
    caplog.set_level("DEBUG")
    charge(gateway, "cus_Secret123456.pm_card_visa")
    charge(gateway, "pm_missing", key="other")
    charge(gateway, "pm_server_error", key="third")
    text = caplog.text
    assert "sk_test_local" not in text
    assert "cus_Secret123456" not in text and "pm_card_visa" not in text and "pm_missing" not in text


def test_results_never_quote_the_stored_token(gateway, server):
    result = charge(gateway, "cus_Q1w2e3r4.pm_missing")
    assert result.outcome is ChargeOutcome.HARD_DECLINE
    assert "pm_missing" not in result.message and "cus_Q1w2e3r4" not in result.message


def test_a_payment_that_asks_for_authentication_is_confirmed_on_session_with_a_return_url(gateway, server):
    asked = charge(gateway, "cus_Q1w2e3r4.pm_card_authenticationRequired")
    assert (asked.outcome, asked.reference) == (ChargeOutcome.REQUIRES_AUTHENTICATION, "pi_000001")
    assert server.intents["pi_000001"]["status"] == "requires_payment_method"

    step = gateway.start_authentication(
        reference=asked.reference,
        payment_method="cus_Q1w2e3r4.pm_card_authenticationRequired",
        return_url="https://rinnovi.example.test/rinnovo-automatico/autenticazione/t/esito",
    )
    assert step.url == f"{server.url}/3ds/pi_000001" and step.result is None
    (confirm,) = server.sent("POST", "/v1/payment_intents/pi_000001/confirm")
    assert confirm.form == {
        "payment_method": "pm_card_authenticationRequired",
        "return_url": "https://rinnovi.example.test/rinnovo-automatico/autenticazione/t/esito",
    }  # on session: no off_session, and no second PaymentIntent
    assert gateway.finish_authentication(reference="pi_000001", idempotency_key=KEY).outcome is (
        ChargeOutcome.REQUIRES_AUTHENTICATION
    )
    back = server.authenticate("pi_000001")
    assert back.startswith("https://rinnovi.example.test/") and "redirect_status=succeeded" in back
    done = gateway.finish_authentication(reference="pi_000001", idempotency_key=KEY)
    assert (done.outcome, done.reference) == (ChargeOutcome.SUCCEEDED, "pi_000001")
    assert len(server.intents) == 1


def test_a_refused_authentication_is_not_a_success(gateway, server):
    asked = charge(gateway, "pm_card_authenticationRequired")
    gateway.start_authentication(
        reference=asked.reference, payment_method="pm_card_authenticationRequired", return_url="https://x.test/r"
    )
    server.authenticate(asked.reference, approve=False)
    assert gateway.finish_authentication(reference=asked.reference, idempotency_key=KEY).outcome is not (
        ChargeOutcome.SUCCEEDED
    )
    # A PaymentIntent that already succeeded is not confirmed again: Stripe's answer is returned.
    paid = charge(gateway, "pm_card_visa", key="charge:43:2027-03-31:1")
    with pytest.raises(GatewayError):
        gateway.start_authentication(
            reference=paid.reference, payment_method="pm_card_visa", return_url="https://x.test/r"
        )

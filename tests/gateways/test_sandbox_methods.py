"""The sandbox's stored methods on the real PostgreSQL: created as Stripe creates a PaymentMethod,
charged off-session as the test card they were made from."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from tests.support.factories import make_mailbox
from tests.support.orders import complete_order
from tests.support.settings import TEST_SECRET_KEYS
from worker.cli.main import main
from worker.gateways import ChargeOutcome, KeepsChargedMethod, MethodSetup
from worker.gateways.sandbox import SandboxGateway
from worker.services import payments
from worker.store.models import Mailbox, SandboxCharge, SandboxMethod

NOW = datetime(2027, 3, 24, 5, 0, tzinfo=UTC)
TODAY = date(2027, 3, 24)


@pytest.fixture
def gateway(session_factory):
    gateway = SandboxGateway(session_factory, clock=lambda: NOW)
    yield gateway
    gateway.close()


def charge(gateway, token: str, key: str, amount: int = 2440):
    return gateway.charge(
        payment_method=token, amount_cents=amount, currency="EUR", idempotency_key=key, description="Rinnovo PEC"
    )


def stored(session_factory, method_id: str) -> SandboxMethod | None:
    with session_factory() as session:
        return session.scalar(select(SandboxMethod).where(SandboxMethod.method_id == method_id))


def test_the_new_method_page_stores_a_card_with_its_brand_digits_and_expiry(gateway, session_factory):
    assert isinstance(gateway, MethodSetup) and isinstance(gateway, KeepsChargedMethod)
    saved = gateway.save_method("pm_card_visa")
    assert saved.token.startswith("pm_sbx_") and saved.token != "pm_card_visa"
    assert saved.card_expires_on == date(2030, 3, 31)  # the month it was stored in, three years ahead
    method = stored(session_factory, saved.token)
    assert (method.behaviour, method.brand, method.last4, method.exp_month, method.exp_year) == (
        "pm_card_visa",
        "Visa",
        "4242",
        3,
        2030,
    )
    again = gateway.save_method("pm_card_visa")
    assert again.token != saved.token  # each setup is a method of its own
    paypal = gateway.save_method("paypal_ok")
    assert paypal.token.startswith("paypal_sbx_") and paypal.card_expires_on is None
    assert stored(session_factory, paypal.token).brand == "PayPal"


def test_a_token_the_sandbox_does_not_know_stores_nothing(gateway, session_factory):
    assert gateway.save_method("pm_card_unknown") is None
    with session_factory() as session:
        assert session.scalar(select(func.count()).select_from(SandboxMethod)) == 0


@pytest.mark.parametrize(
    ("behaviour", "outcome", "decline_code"),
    [
        ("pm_card_visa", ChargeOutcome.SUCCEEDED, None),
        ("paypal_ok", ChargeOutcome.SUCCEEDED, None),
        ("pm_card_chargeDeclinedInsufficientFunds", ChargeOutcome.SOFT_DECLINE, "insufficient_funds"),
        ("pm_card_chargeDeclined", ChargeOutcome.HARD_DECLINE, "generic_decline"),
    ],
)
def test_a_stored_method_is_charged_as_the_test_card_it_was_made_from(
    gateway, session_factory, behaviour, outcome, decline_code
):
    method = gateway.save_method(behaviour).token
    result = charge(gateway, method, "renewal:1:2027-03-31:1")
    assert (result.outcome, result.decline_code) == (outcome, decline_code)
    # The replay and the lookup answer the same, from the record of the stored method's id.
    assert charge(gateway, method, "renewal:1:2027-03-31:1") == result
    assert gateway.lookup("renewal:1:2027-03-31:1") == result
    with session_factory() as session:
        row = session.scalar(select(SandboxCharge))
        assert (row.payment_method, row.outcome) == (method, outcome.value)


def test_a_stored_method_made_from_the_timeout_card_loses_its_answer(gateway):
    method = gateway.save_method("pm_sandbox_timeout").token
    assert charge(gateway, method, "renewal:1:2027-03-31:1").outcome is ChargeOutcome.UNKNOWN
    assert gateway.lookup("renewal:1:2027-03-31:1").outcome is ChargeOutcome.SUCCEEDED


def test_an_id_that_looks_stored_but_is_not_is_no_such_method(gateway):
    result = charge(gateway, "pm_sbx_000000000000000000000000", "renewal:1:2027-03-31:1")
    assert (result.outcome, result.decline_code) == (ChargeOutcome.HARD_DECLINE, "invalid_payment_method")


def test_the_imported_test_tokens_are_charged_as_before(gateway, session_factory):
    assert charge(gateway, "pm_card_visa", "renewal:1:2027-03-31:1").succeeded
    assert charge(gateway, "pm_card_chargeDeclined", "renewal:2:2027-03-31:1").decline_code == "generic_decline"
    with session_factory() as session:
        assert session.scalar(select(func.count()).select_from(SandboxMethod)) == 0


def test_the_checkout_keeps_the_card_once_and_auto_renew_charges_it(gateway, session_factory, settings):
    with session_factory() as session:
        mailbox = make_mailbox(session, expires_on=date(2027, 4, 30))
        order = complete_order(session, settings, mailbox, method="card")
        paid = payments.pay_order_with_gateway(
            session, gateway, order, "pm_card_visa", method="card", now=NOW, today=TODAY, settings=settings
        )
        assert paid.succeeded
        key = f"order:{order.id}:1"
    with session_factory() as session:
        renewed = session.get_one(Mailbox, mailbox.id)
        method, card_expires_on = renewed.payment_method, renewed.card_expires_on
    assert method.startswith("pm_sbx_") and card_expires_on == date(2030, 3, 31)
    assert gateway.keep_charged_method(key).token == method  # asked again: the same method, not a second
    assert stored(session_factory, method).source_key == key
    with session_factory() as session:
        assert session.scalar(select(func.count()).select_from(SandboxMethod)) == 1
    # The next renewal is charged off-session on the stored method, not on the token typed.
    assert charge(gateway, method, f"renewal:{mailbox.id}:2028-04-30:1").succeeded
    # A declined checkout keeps nothing.
    assert gateway.keep_charged_method("order:999:1") is None


def test_a_charge_of_a_stored_method_keeps_that_method(gateway):
    method = gateway.save_method("pm_card_visa")
    assert charge(gateway, method.token, "order:7:1").succeeded
    assert gateway.keep_charged_method("order:7:1") == method


def test_the_sandbox_record_names_the_card_of_a_stored_method(gateway, tmp_path, database_url):
    method = gateway.save_method("pm_card_chargeDeclinedInsufficientFunds").token
    charge(gateway, method, "renewal:1:2027-03-31:1")
    env = {
        "PEC_RENEWAL_VAR_DIR": str(tmp_path / "var"),
        "PEC_RENEWAL_DATABASE_URL": database_url,
        "PEC_RENEWAL_SECRET_KEYS": TEST_SECRET_KEYS,
    }
    records = json.loads(CliRunner().invoke(main, ["sandbox", "charges", "--json"], env=env).output)
    assert [(r["payment_method"], r["stored_method"], r["outcome"]) for r in records] == [
        (method, "Visa •••• 9995", "soft_decline")
    ]
    table = CliRunner().invoke(main, ["sandbox", "charges"], env=env, catch_exceptions=False)
    assert "Visa •••• 9995" in table.output

"""The sandbox gateway on the real PostgreSQL: outcomes, idempotency, the lost answer, concurrency, the CLI."""

from __future__ import annotations

import json
import multiprocessing
import threading
import time
from datetime import UTC, datetime

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from tests.support.settings import TEST_SECRET_KEYS, make_settings
from worker.cli.main import main
from worker.gateways import (
    ChargeOutcome,
    ChargeResult,
    IdempotencyConflict,
    PaymentGateway,
    describe_payment_method,
    make_gateway,
    mask_token,
)
from worker.gateways.sandbox import SandboxGateway, sandbox_reference
from worker.store import migrate
from worker.store.db import make_engine, make_session_factory
from worker.store.models import SandboxCharge

NOW = datetime(2027, 3, 24, 5, 0, tzinfo=UTC)


@pytest.fixture
def gateway(session_factory):
    gateway = SandboxGateway(session_factory, clock=lambda: NOW)
    yield gateway
    gateway.close()


def count_rows(session_factory, key: str | None = None) -> int:
    with session_factory() as session:
        query = select(func.count()).select_from(SandboxCharge)
        if key is not None:
            query = query.where(SandboxCharge.idempotency_key == key)
        return session.execute(query).scalar_one()


def charge(gateway, token: str, key: str = "renewal:1:2027-03-31", amount: int = 2440) -> ChargeResult:
    return gateway.charge(
        payment_method=token, amount_cents=amount, currency="EUR", idempotency_key=key, description="Rinnovo PEC"
    )


@pytest.mark.parametrize(
    ("token", "outcome", "decline_code"),
    [
        ("pm_card_visa", ChargeOutcome.SUCCEEDED, None),
        ("paypal_ok", ChargeOutcome.SUCCEEDED, None),
        ("pm_card_chargeDeclinedInsufficientFunds", ChargeOutcome.SOFT_DECLINE, "insufficient_funds"),
        ("pm_card_chargeDeclined", ChargeOutcome.HARD_DECLINE, "generic_decline"),
        ("pm_card_chargeDeclinedExpiredCard", ChargeOutcome.HARD_DECLINE, "expired_card"),
        ("paypal_declined", ChargeOutcome.HARD_DECLINE, "INSTRUMENT_DECLINED"),
        ("pm_card_authenticationRequired", ChargeOutcome.REQUIRES_AUTHENTICATION, "authentication_required"),
        ("pm_something_else", ChargeOutcome.HARD_DECLINE, "invalid_payment_method"),
    ],
)
def test_each_token_has_its_outcome_and_is_recorded(gateway, session_factory, token, outcome, decline_code):
    result = charge(gateway, token)

    assert result.outcome is outcome
    assert result.decline_code == decline_code
    assert result.reference == sandbox_reference("renewal:1:2027-03-31")
    with session_factory() as session:
        row = session.execute(select(SandboxCharge)).scalar_one()
    assert (row.payment_method, row.amount_cents, row.currency, row.outcome) == (token, 2440, "EUR", outcome.value)
    assert row.at == NOW
    assert row.description == "Rinnovo PEC"
    assert gateway.lookup("renewal:1:2027-03-31") == result


def test_the_sandbox_follows_the_protocol(gateway):
    assert isinstance(gateway, PaymentGateway)
    assert gateway.name == "sandbox"


def test_a_replay_returns_the_same_result_and_records_one_charge(gateway, session_factory):
    first = charge(gateway, "pm_card_visa")
    second = charge(gateway, "pm_card_visa")
    declined = charge(gateway, "pm_card_chargeDeclined", key="other")
    declined_again = charge(gateway, "pm_card_chargeDeclined", key="other")

    assert first == second
    assert first.outcome is ChargeOutcome.SUCCEEDED
    assert declined == declined_again
    assert count_rows(session_factory) == 2


def test_the_same_key_with_another_amount_or_method_is_refused(gateway, session_factory):
    charge(gateway, "pm_card_visa", amount=2440)

    with pytest.raises(IdempotencyConflict):
        charge(gateway, "pm_card_visa", amount=2441)
    with pytest.raises(IdempotencyConflict):
        charge(gateway, "paypal_ok", amount=2440)
    with pytest.raises(IdempotencyConflict):
        gateway.charge(
            payment_method="pm_card_visa",
            amount_cents=2440,
            currency="USD",
            idempotency_key="renewal:1:2027-03-31",
            description="x",
        )
    assert count_rows(session_factory) == 1


def test_the_lost_answer_is_unknown_until_looked_up(gateway, session_factory):
    assert gateway.lookup("renewal:9") is None

    first = charge(gateway, "pm_sandbox_timeout", key="renewal:9")
    again = charge(gateway, "pm_sandbox_timeout", key="renewal:9")
    found = gateway.lookup("renewal:9")

    assert first.outcome is ChargeOutcome.UNKNOWN and first.reference is None
    assert again.outcome is ChargeOutcome.UNKNOWN
    assert found == ChargeResult(ChargeOutcome.SUCCEEDED, sandbox_reference("renewal:9"), "charge succeeded")
    assert count_rows(session_factory, "renewal:9") == 1
    with session_factory() as session:
        assert session.execute(select(SandboxCharge.outcome)).scalar_one() == "succeeded"


def test_eight_threads_charging_one_key_make_one_charge(session_factory):
    gateways = [SandboxGateway(session_factory, clock=lambda: NOW) for _ in range(8)]
    barrier = threading.Barrier(8)
    results: list[ChargeResult] = []
    errors: list[BaseException] = []

    def run(gateway):
        try:
            barrier.wait()
            results.append(charge(gateway, "pm_card_visa", key="renewal:race"))
        except BaseException as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=run, args=(gateway,)) for gateway in gateways]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert errors == []
    assert len(results) == 8
    assert {result.outcome for result in results} == {ChargeOutcome.SUCCEEDED}
    assert len({result.reference for result in results}) == 1
    assert count_rows(session_factory) == 1


def test_latency_is_spent_on_every_call(session_factory):
    gateway = SandboxGateway(session_factory, latency_ms=150)
    started = time.monotonic()
    charge(gateway, "pm_card_visa")
    gateway.lookup("renewal:1:2027-03-31")
    assert time.monotonic() - started >= 0.3


def test_make_gateway_builds_the_sandbox_from_settings(tmp_path, database_url, session_factory):
    settings = make_settings(tmp_path, database_url=database_url, sandbox_latency_ms=0)
    gateway = make_gateway(settings, session_factory, clock=lambda: NOW)
    assert isinstance(gateway, SandboxGateway)
    assert charge(gateway, "paypal_ok").outcome is ChargeOutcome.SUCCEEDED
    gateway.close()


@pytest.mark.parametrize(
    ("token", "shown"),
    [
        ("pm_card_visa", "Visa •••• 4242"),
        ("pm_card_chargeDeclinedExpiredCard", "Visa •••• 0069"),
        ("cus_Q1w2e3.pm_card_mastercard", "Mastercard •••• 4444"),
        ("paypal_ok", "PayPal"),
        ("paypal.8kk8451t", "PayPal"),
        ("pm_1Pxyz0123456789abcdef", "Carta"),
        ("card.7x1y2z", "Carta"),
    ],
)
def test_payment_methods_are_described_without_the_token(token, shown):
    assert describe_payment_method(token) == shown


def test_cli_prints_the_sandbox_record_as_json_and_as_a_table(tmp_path, database_url, session_factory):
    gateway = SandboxGateway(session_factory, clock=lambda: NOW)
    charge(gateway, "pm_card_visa", key="renewal:1")
    charge(gateway, "pm_card_chargeDeclined", key="renewal:2", amount=6100)
    env = {
        "PEC_RENEWAL_VAR_DIR": str(tmp_path / "var"),
        "PEC_RENEWAL_DATABASE_URL": database_url,
        "PEC_RENEWAL_SECRET_KEYS": TEST_SECRET_KEYS,
    }

    result = CliRunner().invoke(main, ["sandbox", "charges", "--json"], env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    records = json.loads(result.output)
    assert [
        (r["payment_method"], r["amount_cents"], r["idempotency_key"], r["outcome"], r["currency"]) for r in records
    ] == [
        ("pm_card_visa", 2440, "renewal:1", "succeeded", "EUR"),
        ("pm_card_chargeDeclined", 6100, "renewal:2", "hard_decline", "EUR"),
    ]
    assert [datetime.fromisoformat(r["at"]) for r in records] == [NOW, NOW]

    table = CliRunner().invoke(main, ["sandbox", "charges"], env=env, catch_exceptions=False)
    assert table.exit_code == 0
    assert "renewal:2" in table.output and "hard_decline" in table.output and "61.00 EUR" in table.output


def _charge_in_another_process(database_url: str, key: str) -> str:
    engine = make_engine(database_url)
    try:
        gateway = SandboxGateway(make_session_factory(engine))
        return charge(gateway, "pm_card_visa", key=key).reference
    finally:
        engine.dispose()


def test_four_processes_charging_one_key_make_one_charge(session_factory, database_url):
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        references = pool.starmap(_charge_in_another_process, [(database_url, "renewal:processes")] * 4)

    assert references == [sandbox_reference("renewal:processes")] * 4
    assert count_rows(session_factory) == 1


def test_the_sandbox_works_on_the_embedded_sqlite_database(tmp_path):
    url = f"sqlite:///{tmp_path / 'embedded.sqlite3'}"
    migrate.upgrade(url)
    engine = make_engine(url)
    try:
        factory = make_session_factory(engine)
        gateway = SandboxGateway(factory, clock=lambda: NOW)
        assert charge(gateway, "pm_card_visa").outcome is ChargeOutcome.SUCCEEDED
        assert charge(gateway, "pm_card_visa").outcome is ChargeOutcome.SUCCEEDED
        assert charge(gateway, "pm_sandbox_timeout", key="t").outcome is ChargeOutcome.UNKNOWN
        assert gateway.lookup("t").outcome is ChargeOutcome.SUCCEEDED
        with pytest.raises(IdempotencyConflict):
            charge(gateway, "pm_card_visa", amount=1)
        assert count_rows(factory) == 2
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    ("token", "masked"),
    [
        ("pm_1Pxyz0123456789abcdef", "pm_…cdef"),
        ("cus_Secret123456.pm_1Pxyz0123456789", "cus_…6789"),
        ("paypal.8kk8451t", "paypal.…451t"),
        ("short", "…rt"),
        (None, "<none>"),
    ],
)
def test_tokens_are_masked_for_logs(token, masked):
    assert mask_token(token) == masked


def test_a_challenge_answered_is_recorded_once_and_approved_takes_the_money(gateway, session_factory):
    from worker.gateways import sandbox_challenge

    engine = session_factory.kw["bind"]
    asked = charge(gateway, "pm_card_authenticationRequired", key="order:7:1")
    assert asked.outcome is ChargeOutcome.REQUIRES_AUTHENTICATION
    step = gateway.start_authentication(
        reference=asked.reference, payment_method="-", return_url="https://x.test/o?a=1"
    )
    public_id = step.url.rsplit("/", 1)[1]
    challenge = sandbox_challenge.read_challenge(engine, public_id)
    assert (challenge.status, challenge.return_path, challenge.amount_cents) == ("pending", "/o?a=1", 2440)
    refused = sandbox_challenge.decide_challenge(engine, public_id, approve=False, now=NOW)
    assert refused.status == "refused"
    assert gateway.lookup("order:7:1").outcome is ChargeOutcome.REQUIRES_AUTHENTICATION
    # Answered once: approving afterwards changes nothing.
    assert sandbox_challenge.decide_challenge(engine, public_id, approve=True, now=NOW).status == "refused"
    assert gateway.finish_authentication(reference=asked.reference, idempotency_key="order:7:1").outcome is (
        ChargeOutcome.REQUIRES_AUTHENTICATION
    )
    again = gateway.start_authentication(reference=asked.reference, payment_method="-", return_url="/o")
    assert sandbox_challenge.decide_challenge(engine, again.url.rsplit("/", 1)[1], approve=True, now=NOW).status == (
        "approved"
    )
    assert gateway.lookup("order:7:1").outcome is ChargeOutcome.SUCCEEDED
    assert [row["status"] for row in sandbox_challenge.list_challenges(engine)] == ["refused", "approved"]
    # Nothing left to authenticate: the charge's answer, and no new challenge.
    done = gateway.start_authentication(reference=asked.reference, payment_method="-", return_url="/o")
    assert done.url is None and done.result.outcome is ChargeOutcome.SUCCEEDED


def test_a_card_set_up_on_session_is_then_charged_off_session(gateway, session_factory):
    from worker.gateways import sandbox_challenge
    from worker.gateways.sandbox import SET_UP_ON_SESSION_TOKEN

    engine = session_factory.kw["bind"]
    first = charge(gateway, SET_UP_ON_SESSION_TOKEN, key="order:8:1")
    assert first.outcome is ChargeOutcome.REQUIRES_AUTHENTICATION
    assert charge(gateway, SET_UP_ON_SESSION_TOKEN, key="renewal:8:2028-03-31:1").outcome is (
        ChargeOutcome.REQUIRES_AUTHENTICATION
    )
    step = gateway.start_authentication(reference=first.reference, payment_method="-", return_url="/o")
    sandbox_challenge.decide_challenge(engine, step.url.rsplit("/", 1)[1], approve=True, now=NOW)
    assert charge(gateway, SET_UP_ON_SESSION_TOKEN, key="renewal:8:2029-03-31:1").outcome is ChargeOutcome.SUCCEEDED
    assert charge(gateway, "pm_card_authenticationRequired", key="renewal:9:2029-03-31:1").outcome is (
        ChargeOutcome.REQUIRES_AUTHENTICATION
    )


def test_cli_lists_the_challenges_and_their_answers(tmp_path, database_url, session_factory, gateway):
    from worker.gateways import sandbox_challenge

    env = {
        "PEC_RENEWAL_VAR_DIR": str(tmp_path / "var"),
        "PEC_RENEWAL_DATABASE_URL": database_url,
        "PEC_RENEWAL_SECRET_KEYS": TEST_SECRET_KEYS,
    }
    empty = CliRunner().invoke(main, ["sandbox", "challenges"], env=env, catch_exceptions=False)
    assert empty.exit_code == 0 and "no sandbox 3-D Secure challenges" in empty.output
    asked = charge(gateway, "pm_card_authenticationRequired", key="order:3:1")
    step = gateway.start_authentication(reference=asked.reference, payment_method="-", return_url="/o")
    sandbox_challenge.decide_challenge(session_factory.kw["bind"], step.url.rsplit("/", 1)[1], approve=True, now=NOW)
    result = CliRunner().invoke(main, ["sandbox", "challenges", "--json"], env=env, catch_exceptions=False)
    (record,) = json.loads(result.output)
    assert (record["charge_reference"], record["status"]) == (asked.reference, "approved")
    table = CliRunner().invoke(main, ["sandbox", "challenges"], env=env, catch_exceptions=False)
    assert asked.reference in table.output and "approved" in table.output

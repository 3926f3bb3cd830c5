"""Refunds on the sandbox: ``pec-renewal payments refund`` of an order its checkout took, against the
sandbox's own record, idempotent by key as its charges are."""

from __future__ import annotations

import threading
from datetime import UTC, date, datetime, timedelta

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from tests.support.factories import make_mailbox
from tests.support.orders import complete_order
from tests.support.settings import TEST_SECRET_KEYS
from worker.cli.main import main
from worker.gateways.refunds import RefundOutcome
from worker.gateways.sandbox import SandboxGateway
from worker.services import payments
from worker.store.models import GatewayRefund, OutboxMessage, SandboxCharge

NOW = datetime(2027, 3, 24, 5, 0, tzinfo=UTC)


@pytest.fixture
def gateway(session_factory):
    gateway = SandboxGateway(session_factory, clock=lambda: NOW)
    yield gateway
    gateway.close()


def refund(gateway, reference: str, amount: int, key: str):
    return gateway.refund(
        reference=reference, amount_cents=amount, currency="EUR", idempotency_key=key, kind="requested", reason="x"
    )


def refunded_rows(session_factory) -> list[tuple[str, int]]:
    with session_factory() as session:
        rows = session.scalars(
            select(SandboxCharge).where(SandboxCharge.outcome == "refunded").order_by(SandboxCharge.id)
        ).all()
        return [(row.idempotency_key, row.amount_cents) for row in rows]


def charged(gateway, key: str = "order:1:1", amount: int = 2440) -> str:
    result = gateway.charge(
        payment_method="pm_card_visa", amount_cents=amount, currency="EUR", idempotency_key=key, description="x"
    )
    assert result.succeeded
    return result.reference


def test_a_refund_by_charge_id_or_by_key_gives_back_at_most_what_was_charged(gateway, session_factory):
    reference = charged(gateway)
    first = refund(gateway, reference, 1000, "refund:a")
    assert first.outcome is RefundOutcome.SUCCEEDED and first.reference.startswith("sbx_re_")
    # The key the checkout charged under names the same charge.
    assert refund(gateway, "order:1:1", 1440, "refund:b").outcome is RefundOutcome.SUCCEEDED
    over = refund(gateway, reference, 1, "refund:c")
    assert (over.outcome, over.message) == (RefundOutcome.FAILED, "more than is left of the sandbox charge")
    assert refunded_rows(session_factory) == [("refund:a", 1000), ("refund:b", 1440)]


def test_the_same_key_gives_back_the_first_refund_and_never_a_second(gateway, session_factory):
    reference = charged(gateway)
    first = refund(gateway, reference, 1000, "refund:a")
    assert refund(gateway, reference, 1000, "refund:a") == first
    other = refund(gateway, reference, 500, "refund:a")
    assert other.outcome is RefundOutcome.FAILED and "already used" in other.message
    assert refunded_rows(session_factory) == [("refund:a", 1000)]


def test_a_declined_charge_or_an_unknown_one_is_not_refunded(gateway, session_factory):
    gateway.charge(
        payment_method="pm_card_chargeDeclined", amount_cents=2440, currency="EUR", idempotency_key="order:2:1",
        description="x",
    )  # fmt: skip
    assert refund(gateway, "order:2:1", 100, "refund:a").outcome is RefundOutcome.FAILED
    assert refund(gateway, "sbx_ch_nothing", 100, "refund:b").outcome is RefundOutcome.FAILED
    assert refunded_rows(session_factory) == []


def test_payments_refund_gives_back_a_sandbox_checkout_payment(
    gateway, session_factory, settings, database_url, tmp_path
):
    today = date.today()  # the CLI runs on the wall clock
    with session_factory() as session:
        mailbox = make_mailbox(session, expires_on=today + timedelta(days=40), plan="pro")
        order = complete_order(session, settings, mailbox, method="card", today=today)
        paid = payments.pay_order_with_gateway(
            session, gateway, order, "pm_card_visa", method="card", now=NOW, today=today, settings=settings
        )
        assert paid.succeeded
        number, total = order.order_number, order.total_cents
    env = {
        "PEC_RENEWAL_DATABASE_URL": database_url,
        "PEC_RENEWAL_VAR_DIR": str(tmp_path / "var"),
        "PEC_RENEWAL_SECRET_KEYS": TEST_SECRET_KEYS,
        "PEC_RENEWAL_BASE_URL": "https://rinnovi.example.test",
        "PEC_RENEWAL_MAIL_FROM": "Rinnovi PEC <rinnovi@pec-provider.example>",
    }
    runner = CliRunner()
    result = runner.invoke(main, ["payments", "refund", number, "--amount", "1,00"], env=env)
    assert result.exit_code == 0, result.output
    assert f"{number}: refund 1 of 1.00 EUR: succeeded" in result.output
    result = runner.invoke(main, ["payments", "refund", number], env=env)
    assert result.exit_code == 0 and f"of {(total - 100) / 100:.2f} EUR: succeeded" in result.output
    result = runner.invoke(main, ["payments", "refund", number], env=env)
    assert result.exit_code == 2 and "0.00 EUR is left" in result.output
    with session_factory() as session:
        rows = session.scalars(select(GatewayRefund).order_by(GatewayRefund.id)).all()
        assert [(row.gateway, row.status, row.amount_cents) for row in rows] == [
            ("sandbox", "succeeded", 100),
            ("sandbox", "succeeded", total - 100),
        ]
        assert {row.payment_reference for row in rows} == {f"order:{order.id}:1"}
        told = session.scalars(select(OutboxMessage.kind).where(OutboxMessage.kind == "payment-refunded")).all()
        assert len(told) == 2
    assert refunded_rows(session_factory) == [(row.idempotency_key, row.amount_cents) for row in rows]


def test_eight_refunds_at_once_give_back_no_more_than_the_charge(session_factory):
    gateway = SandboxGateway(session_factory, clock=lambda: NOW)
    reference = charged(gateway)
    barrier = threading.Barrier(8)
    outcomes: list[RefundOutcome] = []

    def one(number: int) -> None:
        barrier.wait()
        outcomes.append(refund(gateway, reference, 1000, f"refund:{number}").outcome)

    threads = [threading.Thread(target=one, args=(number,)) for number in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == sorted([RefundOutcome.SUCCEEDED] * 2 + [RefundOutcome.FAILED] * 6)
    assert sum(amount for _key, amount in refunded_rows(session_factory)) == 2000

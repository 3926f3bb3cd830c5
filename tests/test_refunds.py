"""``pec-renewal payments refund``: through the gateway that took the payment, recorded, the holder told."""

from __future__ import annotations

import threading
import time
from datetime import date, timedelta

from click.testing import CliRunner
from sqlalchemy import select, text

from tests.support.factories import make_mailbox
from tests.support.orders import NOW, complete_order
from tests.support.settings import TEST_SECRET_KEYS
from worker.cli.main import main
from worker.services.payments import register_payment
from worker.services.payments.refunds import request_refund
from worker.services.payments.registration import PaymentRefused
from worker.store.models import GatewayRefund, OutboxMessage


def cli_env(tmp_path, database_url, stripe_server):
    return {
        "PEC_RENEWAL_DATABASE_URL": database_url,
        "PEC_RENEWAL_VAR_DIR": str(tmp_path / "var"),
        "PEC_RENEWAL_SECRET_KEYS": TEST_SECRET_KEYS,
        "PEC_RENEWAL_BASE_URL": "https://rinnovi.example.test",
        "PEC_RENEWAL_MAIL_FROM": "Rinnovi PEC <rinnovi@pec-provider.example>",
        "PEC_RENEWAL_PAYMENT_GATEWAY": "stripe",
        "PEC_RENEWAL_STRIPE_API_KEY": "sk_test_local",
        "PEC_RENEWAL_STRIPE_API_BASE": stripe_server.url,
    }


def paid_order(session_factory, settings, *, method, reference):
    today = date.today()  # the CLI runs on the wall clock
    with session_factory() as session:
        mailbox = make_mailbox(session, expires_on=today + timedelta(days=40), plan="pro")
        order = complete_order(session, settings, mailbox, method=method, today=today)
        register_payment(
            session, order_number=order.order_number, amount_cents=order.total_cents, method=method,
            reference=reference, now=NOW, today=today, settings=settings,
        )  # fmt: skip
        session.commit()
        return order.order_number, order.total_cents


def test_refund_in_part_then_the_rest_then_nothing_is_left(
    session_factory, settings, database_url, tmp_path, stripe_server
):
    number, total = paid_order(session_factory, settings, method="card", reference="stripe:pi_paid_cli")
    stripe_server.paid("pi_paid_cli", total, order_number=number)
    runner, env = CliRunner(), cli_env(tmp_path, database_url, stripe_server)

    result = runner.invoke(
        main, ["payments", "refund", number, "--amount", "1,00", "--reason", "goodwill, ticket 42"], env=env
    )
    assert result.exit_code == 0, result.output
    assert f"{number}: refund 1 of 1.00 EUR: succeeded" in result.output
    result = runner.invoke(main, ["payments", "refund", number], env=env)
    assert result.exit_code == 0, result.output
    assert f"of {(total - 100) / 100:.2f} EUR: succeeded" in result.output
    result = runner.invoke(main, ["payments", "refund", number], env=env)
    assert result.exit_code == 2 and "0.00 EUR is left" in result.output

    first, second = stripe_server.sent("POST", "/v1/refunds")
    assert first.form == {
        "payment_intent": "pi_paid_cli",
        "amount": "100",
        "reason": "requested_by_customer",
        "metadata[idempotency_key]": "refund:stripe:pi_paid_cli:requested:1",
        "metadata[reason]": "goodwill, ticket 42",
    }
    assert first.headers["idempotency-key"] != second.headers["idempotency-key"]
    assert stripe_server.refunded_amount("pi_paid_cli") == total
    with session_factory() as session:
        rows = session.scalars(select(GatewayRefund).order_by(GatewayRefund.id)).all()
        assert [(r.kind, r.status, r.amount_cents) for r in rows] == [
            ("requested", "succeeded", 100),
            ("requested", "succeeded", total - 100),
        ]
        kinds = session.scalars(select(OutboxMessage.kind).where(OutboxMessage.kind == "payment-refunded")).all()
        assert len(kinds) == 2  # one email per refund


def test_a_bank_transfer_is_not_refunded_here(session_factory, settings, database_url, tmp_path, stripe_server):
    number, _ = paid_order(session_factory, settings, method="bank_transfer", reference="CRO 9")
    result = CliRunner().invoke(
        main, ["payments", "refund", number], env=cli_env(tmp_path, database_url, stripe_server)
    )
    assert result.exit_code == 2 and "no payment taken by a gateway" in result.output
    assert stripe_server.requests == []


def test_a_refund_the_gateway_refuses_is_recorded_as_failed(
    session_factory, settings, database_url, tmp_path, stripe_server
):
    number, _ = paid_order(session_factory, settings, method="card", reference="stripe:pi_unknown_to_stripe")
    result = CliRunner().invoke(
        main, ["payments", "refund", number], env=cli_env(tmp_path, database_url, stripe_server)
    )
    assert result.exit_code == 1 and "failed" in result.output
    with session_factory() as session:
        assert session.scalar(select(GatewayRefund.status)) == "failed"
        assert session.scalars(select(OutboxMessage.kind).where(OutboxMessage.kind == "payment-refunded")).all() == []


def test_a_refund_over_what_is_left_is_refused_in_one_line_and_writes_nothing(
    session_factory, settings, database_url, tmp_path, stripe_server
):
    number, total = paid_order(session_factory, settings, method="card", reference="stripe:pi_over")
    stripe_server.paid("pi_over", total, order_number=number)
    runner, env = CliRunner(), cli_env(tmp_path, database_url, stripe_server)
    assert runner.invoke(main, ["payments", "refund", number, "--amount", "1.00"], env=env).exit_code == 0

    over = f"{(total - 99) / 100:.2f}"  # one cent more than the rest
    result = runner.invoke(main, ["payments", "refund", number, "--amount", over], env=env)

    assert result.exit_code == 2
    assert result.output == (
        f"pec-renewal: nothing refunded: {number}: {over} EUR cannot be refunded; {(total - 100) / 100:.2f} EUR is left of the "
        "payment\n"
    )
    assert len(stripe_server.sent("POST", "/v1/refunds")) == 1
    with session_factory() as session:
        assert session.scalars(select(GatewayRefund.amount_cents)).all() == [100]


def test_two_refunds_at_once_cannot_both_take_what_is_left(session_factory, settings, engine):
    """The first request holds the order until it commits; the second, waiting meanwhile, then counts it."""
    number, total = paid_order(session_factory, settings, method="card", reference="stripe:pi_race")
    first = session_factory()
    first.begin()
    request_refund(first, order_number=number, amount_cents=total - 100, reason="first", now=NOW)

    outcome: dict[str, object] = {}

    def second_request() -> None:
        with session_factory() as session, session.begin():
            try:
                request_refund(session, order_number=number, amount_cents=200, reason="second", now=NOW)
                outcome["second"] = "started"
            except PaymentRefused as refused:
                outcome["second"] = str(refused)

    racer = threading.Thread(target=second_request)
    racer.start()
    waiting = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"
    with engine.connect() as watcher:
        deadline = time.monotonic() + 10
        while watcher.execute(text(waiting)).scalar_one() == 0:  # the second request waits for the order's lock
            watcher.rollback()
            assert time.monotonic() < deadline and racer.is_alive(), outcome
    first.commit()
    first.close()
    racer.join(10)

    assert outcome["second"] == f"{number}: 2.00 EUR cannot be refunded; 1.00 EUR is left of the payment"
    with session_factory() as session:
        assert session.scalars(select(GatewayRefund.amount_cents)).all() == [total - 100]

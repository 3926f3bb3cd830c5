"""Open refunds asked again: the beat entry and ``payments refunds-retry`` share one service, and an
auto-renew charge given back tells its holder."""

from __future__ import annotations

from datetime import UTC, date, datetime

from sqlalchemy import select

from config.celery import CHARGES_QUEUE, celery_config
from tasks.refunds import retry_refunds
from tests.support.factories import make_mailbox
from tests.support.link_handler import runtime_on_test_database
from tests.support.settings import make_settings
from worker.gateways.sandbox import SandboxGateway
from worker.metrics import GatewayCollector
from worker.services import runtime
from worker.services.open_refunds import retry_open_refunds
from worker.services.payments.refunds import AUTOMATIC, start_refund
from worker.store.models import ChargeIntent, GatewayRefund, OutboxMessage, SandboxCharge

NOW = datetime(2027, 3, 24, 9, 0, tzinfo=UTC)
TODAY = date(2027, 3, 24)
EXPIRY = date(2027, 3, 31)


def test_beat_asks_again_every_15_minutes_on_the_charges_queue(tmp_path):
    config = celery_config(make_settings(tmp_path))
    entry = config["beat_schedule"]["refunds-retry"]
    assert entry["task"] == "pec_renewal.retry_refunds"
    assert entry["schedule"].total_seconds() == 15 * 60
    assert config["task_routes"]["pec_renewal.retry_refunds"] == {"queue": CHARGES_QUEUE}


def open_refunds_gauge(engine) -> float:
    (family,) = [f for f in GatewayCollector(engine).collect() if f.name == "pec_renewal_gateway_refunds_open"]
    return family.samples[0].value


def open_charge_refund(session_factory) -> tuple[int, str]:
    """An auto-renew charge of a mailbox renewed meanwhile, its refund's intent committed and its answer
    lost: (the mailbox's id, the sandbox's charge id)."""
    gateway = SandboxGateway(session_factory, clock=lambda: NOW)
    with session_factory() as session, session.begin():
        mailbox = make_mailbox(
            session, expires_on=date(2028, 3, 31), auto_renew=True, payment_method="pm_card_visa",
            reference_email="studio@example.it",
        )  # fmt: skip
        mailbox_id = mailbox.id
    key = f"renewal:{mailbox_id}:{EXPIRY}:1"
    charged = gateway.charge(
        payment_method="pm_card_visa", amount_cents=2440, currency="EUR", idempotency_key=key, description="x"
    )
    with session_factory() as session, session.begin():
        session.add(
            ChargeIntent(
                mailbox_id=mailbox_id, cycle_expires_on=EXPIRY, attempt=1, idempotency_key=key, amount_cents=2440,
                currency="EUR", payment_method="pm_card_visa", years=1, status="succeeded",
                reference=charged.reference, business_date=TODAY, created_at=NOW,
            )
        )  # fmt: skip
        # The mailbox was renewed meanwhile: the refund's intent was committed, its answer lost.
        start_refund(
            session, gateway="sandbox", order=None, payment_reference=charged.reference, amount_cents=2440,
            currency="EUR", kind=AUTOMATIC, reason="the mailbox was renewed meanwhile", now=NOW,
        )  # fmt: skip
    return mailbox_id, charged.reference


def test_a_charge_refund_left_open_is_asked_again_once_and_its_holder_told(session_factory, settings, engine):
    mailbox_id, reference = open_charge_refund(session_factory)
    assert open_refunds_gauge(engine) == 1

    done = retry_open_refunds(session_factory, settings=settings, clock=lambda: NOW, today=TODAY)
    assert [(item.status, item.amount_cents, item.order_number) for item in done] == [("succeeded", 2440, None)]
    assert open_refunds_gauge(engine) == 0
    assert retry_open_refunds(session_factory, settings=settings, clock=lambda: NOW, today=TODAY) == []
    with session_factory() as session:
        assert session.scalar(select(GatewayRefund.status)) == "succeeded"
        refunded = session.scalars(select(SandboxCharge).where(SandboxCharge.outcome == "refunded")).all()
        assert [(row.payment_method, row.amount_cents) for row in refunded] == [(f"refund:{reference}", 2440)]
        (told,) = session.scalars(select(OutboxMessage).where(OutboxMessage.kind == "payment-refunded")).all()
        assert told.to_address == "studio@example.it"
        assert told.context["refund"] == {"amount_cents": 2440, "kind": "automatic", "method": "card", "charge": True}
        assert [item["id"] for item in told.context["mailboxes"]] == [mailbox_id]


def test_the_beat_task_asks_again_through_the_same_service(session_factory, settings):
    open_charge_refund(session_factory)
    worker = runtime_on_test_database(settings, session_factory, lambda: NOW)
    runtime.install(worker)
    try:
        assert retry_refunds() == 1
        assert retry_refunds() == 0
    finally:
        worker.__dict__.pop("engine")  # the test database's engine: not the runtime's to dispose
        runtime.install(None)
    with session_factory() as session:
        assert session.scalar(select(GatewayRefund.status)) == "succeeded"
        assert session.scalars(select(OutboxMessage.kind)).all() == ["payment-refunded"]

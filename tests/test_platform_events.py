"""Platform events: written with the change they report, posted as Standard Webhooks to a real
receiver on loopback that checks every signature with the ``standardwebhooks`` library."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest
import time_machine
from sqlalchemy import select

from tests.support.charges import add_auto_renew, run_on
from tests.support.factories import make_mailbox
from tests.support.importing import make_csv, row
from tests.support.importing import run as import_rows
from tests.support.orders import complete_order
from tests.support.settings import make_settings
from tests.support.webhook_receiver import WebhookReceiver
from worker.events import queue
from worker.events.delivery import RETRY_FOR, retry_delay
from worker.services import auto_renew_switch, payments
from worker.services.daily import run_day
from worker.services.platform_events import set_auto_renew
from worker.services.runtime import Runtime
from worker.store.models import EventStatus, Mailbox, PlatformEvent

PAID_ON = date(2027, 3, 2)
PAID_AT = datetime(2027, 3, 2, 9, 0, tzinfo=UTC)


@pytest.fixture
def receiver():
    server = WebhookReceiver().start()
    yield server
    server.stop()


def platform_runtime(tmp_path, database_url, session_factory, receiver: WebhookReceiver | None) -> Runtime:
    overrides = {}
    if receiver is not None:
        overrides = {"platform_webhook_url": receiver.url, "platform_webhook_secret": receiver.secret}
    rt = Runtime(make_settings(tmp_path, database_url=database_url, **overrides))
    rt.session_factory = session_factory
    return rt


@pytest.fixture
def rt(tmp_path, database_url, session_factory, receiver):
    runtime = platform_runtime(tmp_path, database_url, session_factory, receiver)
    yield runtime
    runtime.close()


def pay(session, settings, mailbox, *, method="bank_transfer", plan=None, token=None, reference="CRO 0001"):
    order = complete_order(session, settings, mailbox, method=method, plan=plan)
    session.commit()
    return payments.register_payment(
        session,
        order_number=order.order_number,
        amount_cents=order.total_cents,
        method=method,
        reference=reference,
        now=PAID_AT,
        today=PAID_ON,
        settings=settings,
        payment_token=token,
    )


def deliver(rt: Runtime, at: datetime):
    with time_machine.travel(at, tick=False):
        return rt.event_sender.deliver_due()


def stored(rt: Runtime) -> list[PlatformEvent]:
    with rt.session_factory() as session:
        return list(session.scalars(select(PlatformEvent).order_by(PlatformEvent.id)))


def test_a_paid_order_tells_the_platform_of_the_renewal_the_plan_and_auto_renew(rt, receiver):
    with rt.session_factory() as session:
        active = make_mailbox(session, expires_on=date(2027, 4, 30), plan="pro")
        expired = make_mailbox(session, expires_on=date(2027, 2, 20))
        session.commit()
        first = pay(session, rt.settings, active, plan="premium")
        second = pay(session, rt.settings, expired, method="card", token="pm_card_visa", reference="ch_1")
        session.commit()
    result = deliver(rt, PAID_AT + timedelta(minutes=1))

    assert result.delivered == 5 and all(delivery.verified for delivery in receiver.deliveries)
    # In order for each mailbox (the two mailboxes' events interleave).
    of_active = [d for d in receiver.accepted if d.data["address"] == active.address]
    of_expired = [d for d in receiver.accepted if d.data["address"] == expired.address]
    assert [d.type for d in of_active] == ["mailbox.renewed", "mailbox.plan_changed"]
    assert [d.type for d in of_expired] == ["mailbox.renewed", "mailbox.reactivated", "auto_renew.changed"]
    renewed, plan_changed = of_active
    renewed_expired, reactivated, auto_renew = of_expired
    assert renewed.data == {
        "mailbox_id": active.id,
        "address": active.address,
        "old_expires_on": "2027-04-30",
        "new_expires_on": "2028-04-30",
        "years": 1,
        "plan": "premium",
        "extra_space_gb": 0,
        "extra_archive_gb": 0,
        "paid_by": {"order": first.order_number},
    }
    assert renewed.payload["timestamp"] == PAID_AT.isoformat()
    assert (plan_changed.data["old_plan"], plan_changed.data["plan"]) == ("pro", "premium")
    assert renewed_expired.data["paid_by"] == {"order": second.order_number}
    assert (reactivated.data["expired_on"], reactivated.data["new_expires_on"]) == ("2027-02-20", "2028-02-20")
    assert (auto_renew.data["auto_renew"], auto_renew.data["source"]) == (True, "payment")
    # The headers of the specification; one id per event, each a stored, stable id.
    assert len({d.webhook_id for d in receiver.accepted}) == 5
    assert {d.webhook_id for d in receiver.accepted} == {event.webhook_id for event in stored(rt)}
    assert renewed.headers["webhook-timestamp"] == str(int((PAID_AT + timedelta(minutes=1)).timestamp()))
    assert renewed.headers["webhook-signature"].startswith("v1,")
    assert renewed.headers["content-type"] == "application/json"
    assert {event.status for event in stored(rt)} == {EventStatus.DELIVERED.value}


def test_registering_the_same_payment_twice_writes_its_events_once(rt, receiver):
    with rt.session_factory() as session:
        mailbox = make_mailbox(session, expires_on=date(2027, 4, 30))
        session.commit()
        order = complete_order(session, rt.settings, mailbox)
        session.commit()
        for _ in range(2):
            payments.register_payment(
                session, order_number=order.order_number, amount_cents=order.total_cents, method="bank_transfer",
                reference="CRO 7", now=PAID_AT, today=PAID_ON, settings=rt.settings,
            )  # fmt: skip
            session.commit()
    assert [event.type for event in stored(rt)] == ["mailbox.renewed"]


def test_a_successful_charge_tells_the_platform_which_charge_paid(rt, receiver):
    mailbox = add_auto_renew(rt, "pm_card_visa", notified=True)
    run_on(rt, date(2027, 3, 24))  # the charge day: run-daily charges, then delivers the events
    (renewed,) = receiver.accepted
    assert renewed.verified and renewed.type == "mailbox.renewed"
    assert (renewed.data["old_expires_on"], renewed.data["new_expires_on"]) == ("2027-03-31", "2028-03-31")
    assert renewed.data["paid_by"]["charge"] == f"renewal:{mailbox.id}:2027-03-31:1"
    assert renewed.data["paid_by"]["reference"]


def test_the_day_writes_expired_and_deleted_once_each(rt, receiver):
    with rt.session_factory() as session:
        expiring = make_mailbox(session, expires_on=date(2027, 3, 31))
        renewed_in_time = make_mailbox(session, expires_on=date(2027, 3, 31))
        renewed_in_time.expires_on = date(2028, 3, 31)
        long_gone = make_mailbox(session, expires_on=date(2026, 1, 31))  # deleted long before: not replayed
        session.commit()
    run_on(rt, date(2027, 3, 31))
    assert receiver.deliveries == []  # still active on its expiry date
    run_on(rt, date(2027, 4, 1))
    run_on(rt, date(2027, 4, 1))  # a second run of the day writes nothing more
    (expired,) = receiver.accepted
    assert (expired.type, expired.data["address"]) == ("mailbox.expired", expiring.address)
    assert expired.data["receive_only_from"] == "2027-04-01" and expired.data["deletion_on"] == "2027-06-30"
    run_on(rt, date(2027, 6, 29))
    assert len(receiver.accepted) == 1  # the last renewable day
    # A day the job did not run is caught up by the next day's run.
    run_on(rt, date(2027, 7, 2))
    run_on(rt, date(2027, 7, 3))
    assert [(d.type, d.data["address"]) for d in receiver.accepted] == [
        ("mailbox.expired", expiring.address),
        ("mailbox.deleted", expiring.address),
    ]
    assert receiver.accepted[1].data["deleted_on"] == "2027-06-30"
    assert long_gone.address not in {d.data["address"] for d in receiver.deliveries}
    assert renewed_in_time.address not in {d.data["address"] for d in receiver.deliveries}


def test_switching_auto_renew_is_an_event_and_a_switch_to_the_same_value_is_none(rt, receiver):
    with rt.session_factory() as session:
        mailbox = make_mailbox(session, expires_on=date(2027, 6, 30), auto_renew=True, payment_method="pm_card_visa")
        session.commit()
        assert set_auto_renew(session, mailbox, False, source="holder", now=PAID_AT, today=PAID_ON)
        assert not set_auto_renew(session, mailbox, False, source="holder", now=PAID_AT, today=PAID_ON)
        session.commit()
        assert not session.get(Mailbox, mailbox.id).auto_renew
    deliver(rt, PAID_AT)
    (switched,) = receiver.accepted
    assert switched.type == "auto_renew.changed"
    assert switched.data == {
        "mailbox_id": mailbox.id,
        "address": mailbox.address,
        "auto_renew": False,
        "source": "holder",
    }


def write(rt: Runtime, mailbox_id: int, about: str, event_type: str = queue.MAILBOX_RENEWED, at: datetime = PAID_AT):
    with rt.session_factory() as session, session.begin():
        event = queue.NewEvent(event_type, mailbox_id, about, {"mailbox_id": mailbox_id, "address": f"m{mailbox_id}"})
        queue.write_events(session, [event], now=at, business_date=at.date())


def test_a_5xx_is_retried_after_its_backoff_and_delivered_once_under_the_same_id(rt, receiver):
    receiver.answers = [500]
    write(rt, 1, "order=PEC-1")
    first = deliver(rt, PAID_AT)
    assert (first.delivered, first.deferred) == (0, 1)
    (event,) = stored(rt)
    assert (event.status, event.attempts, event.next_attempt_at) == ("pending", 1, PAID_AT + retry_delay(1))
    assert "HTTP 500" in event.last_error
    assert deliver(rt, PAID_AT + retry_delay(1) - timedelta(seconds=1)).handled == 0  # not before its time
    second = deliver(rt, PAID_AT + retry_delay(1))
    assert second.delivered == 1
    assert [d.status for d in receiver.deliveries] == [500, 200]
    assert receiver.deliveries[0].webhook_id == receiver.deliveries[1].webhook_id == event.webhook_id
    assert receiver.deliveries[0].headers["webhook-timestamp"] != receiver.deliveries[1].headers["webhook-timestamp"]
    assert all(d.verified for d in receiver.deliveries)
    assert deliver(rt, PAID_AT + timedelta(days=1)).handled == 0  # delivered once
    assert stored(rt)[0].status == "delivered"


@pytest.mark.parametrize("status", [408, 429, 502, 503])
def test_timeouts_and_throttling_are_retried(rt, receiver, status):
    receiver.answers = [status]
    write(rt, 1, "order=PEC-1")
    assert deliver(rt, PAID_AT).deferred == 1
    assert stored(rt)[0].status == "pending"


def test_a_400_fails_at_once_and_no_longer_holds_back_the_mailbox(rt, receiver):
    receiver.answers = [400]
    write(rt, 1, "order=PEC-1")
    write(rt, 1, "order=PEC-2")
    result = deliver(rt, PAID_AT)
    assert (result.failed, result.delivered) == (1, 1)
    failed, later = stored(rt)
    assert (failed.status, failed.attempts, failed.next_attempt_at) == ("failed", 1, None)
    assert failed.last_error.startswith("HTTP 400")
    assert later.status == "delivered"
    assert deliver(rt, PAID_AT + timedelta(days=1)).handled == 0  # never retried by itself


def test_retries_stop_after_three_days(rt, receiver):
    receiver.answers = lambda _payload: 503
    write(rt, 1, "order=PEC-1")
    at, attempts = PAID_AT, 0
    while stored(rt)[0].status == "pending":
        deliver(rt, at)
        attempts += 1
        event = stored(rt)[0]
        at = event.next_attempt_at or at
    assert event.status == "failed" and event.last_error.startswith("retried for 3 days")
    assert len(receiver.deliveries) == attempts
    assert at - PAID_AT <= RETRY_FOR
    assert PAID_AT + RETRY_FOR - at < retry_delay(attempts)  # the next try would have come after three days


def test_events_of_one_mailbox_are_delivered_in_order_while_others_go_on(rt, receiver):
    failing_once = {"first": True}

    def answer(payload):
        if payload["data"]["mailbox_id"] == 1 and failing_once["first"]:
            failing_once["first"] = False
            return 503
        return 200

    receiver.answers = answer
    write(rt, 1, "order=PEC-1")
    write(rt, 2, "order=PEC-2")
    write(rt, 1, "expiry", queue.MAILBOX_EXPIRED)
    write(rt, 2, "expiry", queue.MAILBOX_EXPIRED)
    deliver(rt, PAID_AT)
    # Mailbox 2's events both went; mailbox 1's second waits behind its first, which is retrying.
    assert [(d.data["mailbox_id"], d.type, d.status) for d in receiver.deliveries] == [
        (1, "mailbox.renewed", 503),
        (2, "mailbox.renewed", 200),
        (2, "mailbox.expired", 200),
    ]
    deliver(rt, PAID_AT + timedelta(seconds=30))
    assert len(receiver.deliveries) == 3  # the later event of mailbox 1 still waits
    deliver(rt, PAID_AT + retry_delay(1))
    assert [(d.data["mailbox_id"], d.type) for d in receiver.accepted] == [
        (2, "mailbox.renewed"),
        (2, "mailbox.expired"),
        (1, "mailbox.renewed"),
        (1, "mailbox.expired"),
    ]


def test_a_wrong_secret_is_refused_by_the_platform(tmp_path, database_url, session_factory, receiver):
    other = WebhookReceiver()  # never started: only its secret is used
    rt = platform_runtime(tmp_path, database_url, session_factory, None)
    rt.settings = make_settings(
        tmp_path, database_url=database_url, platform_webhook_url=receiver.url, platform_webhook_secret=other.secret
    )
    rt.session_factory = session_factory
    write(rt, 1, "order=PEC-1")
    result = deliver(rt, PAID_AT)
    rt.close()
    assert result.failed == 1 and [d.verified for d in receiver.deliveries] == [False]
    assert stored(rt)[0].last_error.startswith("HTTP 401")


def test_without_a_url_the_events_are_kept_not_sent(tmp_path, database_url, session_factory):
    rt = platform_runtime(tmp_path, database_url, session_factory, None)
    write(rt, 1, "order=PEC-1")
    with time_machine.travel(PAID_AT, tick=False):
        summary = run_day(rt, PAID_ON)
    rt.close()
    assert not rt.event_sender.enabled
    assert summary.as_dict()["platform_events"]["delivered"] == 0
    assert [event.status for event in stored(rt)] == ["pending"]


def test_an_import_that_switches_auto_renew_tells_the_platform(rt, receiver):
    first = make_csv(row(1), row(2))
    switched = make_csv(row(1, auto_renew="true", payment_method="pm_card_visa"), row(2))
    import_rows(rt.session_factory, first, now=PAID_AT, today=PAID_ON)  # new mailboxes: no switch
    import_rows(rt.session_factory, switched, now=PAID_AT, today=PAID_ON, dry_run=True)  # rolled back
    assert stored(rt) == []
    import_rows(rt.session_factory, switched, now=PAID_AT, today=PAID_ON)
    import_rows(rt.session_factory, switched, now=PAID_AT, today=PAID_ON)  # the same again: no switch
    deliver(rt, PAID_AT)
    (event,) = receiver.accepted
    assert event.type == "auto_renew.changed"
    assert (event.data["address"], event.data["auto_renew"], event.data["source"]) == (
        "user1@pec.example.it",
        True,
        "import",
    )


def test_the_holder_switching_auto_renew_off_and_on_tells_the_platform(rt, receiver):
    with rt.session_factory() as session:
        mailbox = make_mailbox(session, expires_on=date(2027, 6, 30), auto_renew=True, payment_method="pm_card_visa")
        session.commit()
    clock = lambda: PAID_AT  # noqa: E731
    off = auto_renew_switch.switch_off(
        rt.session_factory, mailbox.id, seen_expires_on=None, today=PAID_ON, stages=rt.settings.notice_stages,
        clock=clock,
    )  # fmt: skip
    on = auto_renew_switch.switch_on(rt.session_factory, mailbox.id, today=PAID_ON, clock=clock)
    again = auto_renew_switch.switch_on(rt.session_factory, mailbox.id, today=PAID_ON, clock=clock)
    assert (off.outcome, on.outcome, again.outcome) == (
        auto_renew_switch.Outcome.SWITCHED_OFF,
        auto_renew_switch.Outcome.SWITCHED_ON,
        auto_renew_switch.Outcome.ALREADY_ON,
    )
    deliver(rt, PAID_AT)
    assert [(d.type, d.data["auto_renew"], d.data["source"]) for d in receiver.accepted] == [
        ("auto_renew.changed", False, "holder"),
        ("auto_renew.changed", True, "holder"),
    ]

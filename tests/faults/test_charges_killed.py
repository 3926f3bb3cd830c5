"""Charges under faults: a worker killed around the gateway call, a lost answer, two processes racing.

Figure (fault suite): a Celery worker SIGKILLed right after the
gateway's answer, again and again, then the job run to completion: exactly
one charge per (mailbox, cycle) in the sandbox gateway's own table
``sandbox_charges``, and every mailbox renewed once.

The killed worker is a real subprocess: ``child_main`` runs the daily job with
the sandbox wrapped so that it SIGKILLs its own process right after
``gateway.charge`` returns (or right before calling it), controlled by
``PEC_RENEWAL_TEST_KILL``.  The hook lives here, in this test module, not in
production code.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from collections import Counter
from datetime import date, datetime, timedelta
from pathlib import Path

import pytest
import time_machine
from sqlalchemy import func, select

from config.settings import Settings
from tests.support.celery_process import worker_environment
from tests.support.charges import (
    CHARGE_DAY,
    EXPIRES,
    add_auto_renew,
    at_morning,
    build_runtime,
    gateway_record,
    received,
    run_on,
)
from tests.support.faults import (
    CeleryWorker,
    celery_client,
    charge_intents,
    gateway_charges_per_cycle,
    mark_charge_notices_sent,
    seed_mailboxes,
    wait_until,
)
from tests.support.settings import TEST_SECRET_KEYS
from worker.gateways import ChargeOutcome, ChargeResult
from worker.services import charges
from worker.services.daily import run_day
from worker.services.runtime import Runtime
from worker.store.models import ChargeIntent, Mailbox

ROOT = Path(__file__).resolve().parents[2]


class KillingGateway:
    """The real sandbox, with a SIGKILL of this process before or after ``charge``."""

    def __init__(self, inner, when: str):
        self._inner, self._when = inner, when
        self.name = inner.name

    def charge(self, **kwargs) -> ChargeResult:
        if self._when == "before":
            os.kill(os.getpid(), signal.SIGKILL)
        result = self._inner.charge(**kwargs)
        if self._when == "after":
            os.kill(os.getpid(), signal.SIGKILL)
        return result

    def lookup(self, key):
        return self._inner.lookup(key)

    def close(self):
        self._inner.close()


class LostLookups:
    """The sandbox, but the gateway cannot tell the outcome of a lookup (unreachable)."""

    def __init__(self, inner):
        self._inner = inner
        self.name = inner.name
        self.lookups = 0

    def charge(self, **kwargs) -> ChargeResult:
        return self._inner.charge(**kwargs)

    def lookup(self, key):
        self.lookups += 1
        return ChargeResult(ChargeOutcome.UNKNOWN, None, "gateway unreachable")

    def close(self):
        self._inner.close()


def child_main() -> None:  # pragma: no cover - runs in a subprocess
    rt = Runtime(Settings.from_env())
    day = date.fromisoformat(os.environ["CHILD_DAY"])
    mode = os.environ["PEC_RENEWAL_TEST_KILL"]
    with time_machine.travel(at_morning(day), tick=False):
        if mode == "race":
            ids = [int(x) for x in os.environ["CHILD_IDS"].split(",")]
            result = charges.run_charges(
                rt.session_factory,
                rt.gateway,
                ids,
                today=day,
                clock=rt.clock,
                mail_domain=rt.mail_domain,
                concurrency=8,
            )
            print(result.charges)
        else:
            rt.gateway = KillingGateway(rt.gateway, mode)
            run_day(rt, day)
    rt.close()


def child_env(tmp_path, database_url, **extra) -> dict:
    env = dict(os.environ)
    env.update(
        {
            "PEC_RENEWAL_DATABASE_URL": database_url,
            "PEC_RENEWAL_SECRET_KEYS": TEST_SECRET_KEYS,
            "PEC_RENEWAL_BASE_URL": "https://rinnovi.example.test",
            "PEC_RENEWAL_MAIL_FROM": "Rinnovi PEC <rinnovi@pec-provider.example>",
            "PEC_RENEWAL_VAR_DIR": str(tmp_path / "child-var"),
            "PYTHONPATH": str(ROOT),
        }
    )
    env.update(extra)
    return env


def spawn(tmp_path, database_url, **extra) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", "from tests.faults.test_charges_killed import child_main; child_main()"],
        cwd=ROOT,
        env=child_env(tmp_path, database_url, **extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize("when", ["after", "before"])
def test_worker_killed_around_the_gateway_call_then_the_next_run_reconciles(
    runtime,
    smtp_server,
    tmp_path,
    database_url,
    when,
):
    mailbox = add_auto_renew(runtime, "pm_card_visa", notified=True)
    child = spawn(tmp_path, database_url, CHILD_DAY=CHARGE_DAY.isoformat(), PEC_RENEWAL_TEST_KILL=when)
    _out, err = child.communicate(timeout=60)
    assert child.returncode == -signal.SIGKILL, err

    with runtime.session_factory() as session:
        (intent,) = session.scalars(select(ChargeIntent)).all()
        assert intent.status == "started"  # committed before the gateway call, never recorded
        assert session.get(Mailbox, mailbox.id).expires_on == date(2027, 3, 31)
    assert len(gateway_record(runtime)) == (1 if when == "after" else 0)

    run_on(runtime, CHARGE_DAY)  # the same day again: the claim hides it, nothing is charged blindly
    assert len(gateway_record(runtime)) == (1 if when == "after" else 0)

    summary = run_on(runtime, CHARGE_DAY + timedelta(days=1))  # the next run reconciles first
    assert summary.charges.lookups == 1
    assert summary.charges.charges == (0 if when == "after" else 1)  # "before": no money moved, same key
    (charge,) = gateway_record(runtime)
    assert charge["outcome"] == "succeeded"
    with runtime.session_factory() as session:
        (intent,) = session.scalars(select(ChargeIntent)).all()
        assert intent.status == "succeeded"
        assert session.get(Mailbox, mailbox.id).expires_on == date(2028, 3, 31)
    assert [m["X-PEC-Renewal-Kind"] for m in received(smtp_server)] == ["charge-succeeded"]
    for day in (date(2027, 3, 26), date(2027, 3, 28), date(2027, 3, 30)):
        run_on(runtime, day)
    assert len(gateway_record(runtime)) == 1 and len(smtp_server.messages) == 1


LAST_RETRY_DAY = date(2027, 3, 30)  # the -1d slot of EXPIRES = 2027-03-31


def add_on_last_retry(rt) -> Mailbox:
    """An auto-renew mailbox whose first three attempts were declined softly: its -1d retry is due."""
    mailbox = add_auto_renew(rt, "pm_card_visa", notified=True)
    with rt.session_factory() as session, session.begin():
        for attempt, day in enumerate((date(2027, 3, 24), date(2027, 3, 26), date(2027, 3, 28)), start=1):
            session.add(
                ChargeIntent(
                    mailbox_id=mailbox.id,
                    cycle_expires_on=mailbox.expires_on,
                    attempt=attempt,
                    idempotency_key=f"renewal:{mailbox.id}:{mailbox.expires_on.isoformat()}:{attempt}",
                    amount_cents=4880,
                    currency="EUR",
                    payment_method="pm_card_visa",
                    years=1,
                    status="soft_decline",
                    decline_code="insufficient_funds",
                    business_date=day,
                    created_at=at_morning(day),
                    resolved_at=at_morning(day),
                )
            )
        session.get(Mailbox, mailbox.id).next_action_on = LAST_RETRY_DAY
    return mailbox


def run_at(rt, day: date, moment: datetime):
    with time_machine.travel(moment, tick=False):
        return run_day(rt, day)


@pytest.mark.parametrize("when", ["after", "before"])
def test_killed_on_the_last_retry_the_same_day_reconciles_it_after_a_few_minutes(
    runtime,
    smtp_server,
    tmp_path,
    database_url,
    when,
):
    """A kill between the claim and the answer on the -1d slot never turns into charge-failed on
    the expiry day: a later run of the same business date looks the charge up (and, if no money
    moved, charges with the same key while still before expiry)."""
    mailbox = add_on_last_retry(runtime)
    child = spawn(tmp_path, database_url, CHILD_DAY=LAST_RETRY_DAY.isoformat(), PEC_RENEWAL_TEST_KILL=when)
    _out, err = child.communicate(timeout=60)
    assert child.returncode == -signal.SIGKILL, err
    killed_at = at_morning(LAST_RETRY_DAY)  # the child's frozen clock
    with runtime.session_factory() as session:
        intent = session.scalars(select(ChargeIntent).where(ChargeIntent.attempt == 4)).one()
        assert intent.status == "started" and intent.created_at == killed_at
    charged = 1 if when == "after" else 0
    assert len(gateway_record(runtime)) == charged

    # A minute later the charge may still be in flight (a slow gateway): nobody touches it.
    summary = run_at(runtime, LAST_RETRY_DAY, killed_at + timedelta(minutes=1))
    assert summary.charges.lookups == 0 and summary.charges.charges == 0
    with runtime.session_factory() as session:
        assert session.scalar(select(ChargeIntent.status).where(ChargeIntent.attempt == 4)) == "started"

    # Past CHARGE_RECONCILE_AFTER_MINUTES (5), the next run of the same day asks the gateway.
    summary = run_at(runtime, LAST_RETRY_DAY, killed_at + timedelta(minutes=6))
    assert summary.charges.lookups == 1
    assert summary.charges.charges == (0 if when == "after" else 1)  # "before": no money moved, same key
    (charge,) = gateway_record(runtime)
    assert charge["outcome"] == "succeeded" and charge["idempotency_key"].endswith(":4")
    with runtime.session_factory() as session:
        assert session.scalar(select(ChargeIntent.status).where(ChargeIntent.attempt == 4)) == "succeeded"
        assert session.get(Mailbox, mailbox.id).expires_on == date(2028, 3, 31)
    assert [m["X-PEC-Renewal-Kind"] for m in received(smtp_server)] == ["charge-succeeded"]

    run_on(runtime, EXPIRES)  # the expiry day: nothing failed, nothing more to send or charge
    assert len(gateway_record(runtime)) == 1
    assert [m["X-PEC-Renewal-Kind"] for m in received(smtp_server)] == ["charge-succeeded"]


def test_the_reconcile_delay_is_a_setting(tmp_path, database_url, session_factory, smtp_server):
    rt = build_runtime(tmp_path, database_url, session_factory, smtp_server, charge_reconcile_after_minutes=20)
    try:
        add_on_last_retry(rt)
        child = spawn(tmp_path, database_url, CHILD_DAY=LAST_RETRY_DAY.isoformat(), PEC_RENEWAL_TEST_KILL="before")
        assert child.communicate(timeout=60) and child.returncode == -signal.SIGKILL
        killed_at = at_morning(LAST_RETRY_DAY)
        assert run_at(rt, LAST_RETRY_DAY, killed_at + timedelta(minutes=19)).charges.lookups == 0
        summary = run_at(rt, LAST_RETRY_DAY, killed_at + timedelta(minutes=21))
        assert (summary.charges.lookups, summary.charges.charges) == (1, 1)
        assert [r["outcome"] for r in gateway_record(rt)] == ["succeeded"]
    finally:
        rt.close()


def test_an_answer_that_stays_unknown_is_asked_again_never_charged_again(runtime, smtp_server):
    mailbox = add_auto_renew(runtime, "pm_sandbox_timeout", notified=True)
    lost = LostLookups(runtime.gateway)
    runtime.gateway = lost
    summary = run_on(runtime, CHARGE_DAY)
    assert summary.charges.outcomes["unknown"] == 1
    with runtime.session_factory() as session:
        (intent,) = session.scalars(select(ChargeIntent)).all()
        assert intent.status == "unknown"
        assert session.get(Mailbox, mailbox.id).expires_on == date(2027, 3, 31)

    run_on(runtime, date(2027, 3, 26))  # a retry day: still unknown, so no new attempt
    assert len(gateway_record(runtime)) == 1
    with runtime.session_factory() as session:
        assert session.scalar(select(ChargeIntent.status)) == "unknown"

    runtime.gateway = lost._inner  # the gateway answers again
    run_on(runtime, date(2027, 3, 27))
    assert [r["outcome"] for r in gateway_record(runtime)] == ["succeeded"]
    with runtime.session_factory() as session:
        assert session.get(Mailbox, mailbox.id).expires_on == date(2028, 3, 31)
    assert [m["X-PEC-Renewal-Kind"] for m in received(smtp_server)] == ["charge-succeeded"]


def test_two_processes_racing_for_the_same_charges(runtime, smtp_server, tmp_path, database_url):
    ids = [add_auto_renew(runtime, "pm_card_visa", notified=True).id for _ in range(40)]
    with runtime.session_factory() as session, session.begin():
        for mailbox_id in ids:
            session.get(Mailbox, mailbox_id).next_action_on = CHARGE_DAY
    env = {
        "CHILD_DAY": CHARGE_DAY.isoformat(),
        "PEC_RENEWAL_TEST_KILL": "race",
        "CHILD_IDS": ",".join(map(str, ids)),
        "PEC_RENEWAL_SANDBOX_LATENCY_MS": "50",
    }
    children = [spawn(tmp_path, database_url, **env) for _ in range(2)]
    charged = []
    for child in children:
        out, err = child.communicate(timeout=120)
        assert child.returncode == 0, err
        charged.append(int(out.strip().splitlines()[-1]))
    assert sum(charged) == 40
    record = gateway_record(runtime)
    assert len(record) == 40 and len({r["idempotency_key"] for r in record}) == 40
    with runtime.session_factory() as session:
        assert {m.expires_on for m in session.scalars(select(Mailbox))} == {date(2028, 3, 31)}


MAILBOXES = 480
KILLS = 20


@pytest.mark.slow
def test_celery_worker_killed_after_the_gateways_answer_charges_each_cycle_once(
    session_factory, tmp_path, database_url, smtp_server, flushed_redis, workers
):
    """Figure: exactly one charge per (mailbox, cycle) in ``sandbox_charges``; every mailbox renewed once.

    A real worker on the scan, charges and mail queues, with two charge sweeps
    sent at once on the charge day (two beats).  In each of 20 rounds the
    worker (one pool process, so a round uses at most n + GATEWAY_CONCURRENCY
    charges and every round has work left) kills its whole process group right
    after the n-th answer of the gateway (n seeded-random, tests/faults/celery_at.py): the charge exists at
    the gateway and is not recorded.  Each round's worker starts two hours
    later on its own clock, so Redis hands back the killed worker's charge
    batches.  Then the next days' sweeps reconcile every intent left
    ``started`` by asking the gateway, never by charging again.
    """

    ids = seed_mailboxes(
        session_factory,
        MAILBOXES,
        expires_on=date(2027, 3, 31),
        next_action_on=CHARGE_DAY,
        auto_renew=True,
        payment_method="pm_card_visa",
    )
    mark_charge_notices_sent(session_factory, ids, date(2027, 3, 31))
    env = worker_environment(tmp_path, database_url, smtp_server, sandbox_latency_ms=10, gateway_concurrency=8)
    beat = celery_client(tmp_path)
    rng = random.Random(20270324)
    clock = at_morning(CHARGE_DAY)
    kills = 0

    def intents() -> Counter:
        with session_factory() as session:
            return Counter(
                dict(session.execute(select(ChargeIntent.status, func.count()).group_by(ChargeIntent.status)).all())
            )

    for round_number in range(KILLS):
        answers = rng.randint(1, 12)
        worker = CeleryWorker(
            {**env, "PEC_RENEWAL_TEST_KILL_AFTER_ANSWERS": str(answers)},
            tmp_path,
            queues="scan,charges,mail",
            concurrency=1,
            name=f"killed{round_number}",
        )
        workers.append(worker)
        worker.start(clock)
        beat.send_task("pec_renewal.charge_sweep", args=[CHARGE_DAY.isoformat()])
        beat.send_task("pec_renewal.charge_sweep", args=[CHARGE_DAY.isoformat()])  # a second beat
        wait_until(lambda worker=worker: not worker.running, timeout=60, what=f"the kill after answer {answers}")
        worker.kill()  # reaps the group; the worker killed itself
        kills += 1
        clock += timedelta(hours=2)
    assert intents()["started"] >= 1, "no kill left a charge made and unrecorded"
    assert sum(gateway_charges_per_cycle(session_factory).values()) < MAILBOXES, "the kills stopped nothing"

    # The job runs to completion: the rest of the charge day, then the next days' sweeps reconcile.
    worker = CeleryWorker(env, tmp_path, queues="scan,charges,mail", name="survivor")
    workers.append(worker)
    worker.start(clock)
    for day in (CHARGE_DAY, CHARGE_DAY + timedelta(days=1), CHARGE_DAY + timedelta(days=2)):
        beat.send_task("pec_renewal.charge_sweep", args=[day.isoformat()])
        beat.send_task("pec_renewal.charge_sweep", args=[day.isoformat()])
    wait_until(lambda: intents() == Counter(succeeded=MAILBOXES), timeout=90, what=f"{MAILBOXES} charges resolved")
    assert worker.running, worker.log()

    per_cycle = gateway_charges_per_cycle(session_factory)
    assert set(per_cycle) == {(str(mailbox_id), "2027-03-31") for mailbox_id in ids}
    assert set(per_cycle.values()) == {1}, {key: n for key, n in per_cycle.items() if n > 1}
    with session_factory() as session:
        assert {m.expires_on for m in session.scalars(select(Mailbox))} == {date(2028, 3, 31)}
    print(f"{kills} kills; {MAILBOXES} mailboxes, {sum(per_cycle.values())} gateway charges")


@pytest.mark.slow
def test_the_15_minute_sweep_reconciles_a_charge_killed_the_same_day(
    session_factory, tmp_path, database_url, smtp_server, flushed_redis, workers
):
    """A Celery worker killed right after the gateway's answer on the -1d slot; twenty minutes later,
    on the same business date, the charge sweep (beat's, every 15 minutes) looks the charges up
    and records them: no charge twice, every mailbox renewed, nothing left for the expiry day."""

    count = 3
    ids = seed_mailboxes(
        session_factory,
        count,
        expires_on=EXPIRES,
        next_action_on=LAST_RETRY_DAY,
        auto_renew=True,
        payment_method="pm_card_visa",
    )
    mark_charge_notices_sent(session_factory, ids, EXPIRES)
    with session_factory() as session, session.begin():
        for mailbox_id in ids:  # attempts 1-3 declined softly: the -1d retry is the last one
            for attempt, day in enumerate((date(2027, 3, 24), date(2027, 3, 26), date(2027, 3, 28)), start=1):
                session.add(
                    ChargeIntent(
                        mailbox_id=mailbox_id,
                        cycle_expires_on=EXPIRES,
                        attempt=attempt,
                        idempotency_key=f"renewal:{mailbox_id}:{EXPIRES.isoformat()}:{attempt}",
                        amount_cents=4880,
                        currency="EUR",
                        payment_method="pm_card_visa",
                        years=1,
                        status="soft_decline",
                        decline_code="insufficient_funds",
                        business_date=day,
                        created_at=at_morning(day),
                    )
                )
    env = worker_environment(tmp_path, database_url, smtp_server, gateway_concurrency=1)
    beat = celery_client(tmp_path)
    killed_at = at_morning(LAST_RETRY_DAY)

    killed = CeleryWorker(
        {**env, "PEC_RENEWAL_TEST_KILL_AFTER_ANSWERS": "1"},
        tmp_path,
        queues="scan,charges,mail",
        concurrency=1,
        name="killed",
    )
    workers.append(killed)
    killed.start(killed_at)
    beat.send_task("pec_renewal.charge_sweep", args=[LAST_RETRY_DAY.isoformat()])
    wait_until(lambda: not killed.running, timeout=60, what="the kill after the first answer")
    killed.kill()
    assert charge_intents(session_factory)["started"] == 1, killed.log()  # charged at the gateway, not recorded
    assert sum(gateway_charges_per_cycle(session_factory).values()) == 1

    survivor = CeleryWorker(env, tmp_path, queues="scan,charges,mail", name="survivor")
    workers.append(survivor)
    survivor.start(killed_at + timedelta(minutes=20))  # the same business date
    beat.send_task("pec_renewal.charge_sweep", args=[LAST_RETRY_DAY.isoformat()])
    wait_until(
        lambda: charge_intents(session_factory) == Counter(soft_decline=3 * count, succeeded=count),
        timeout=60,
        what="the same day's sweep to resolve every charge",
    )
    per_cycle = gateway_charges_per_cycle(session_factory)
    assert set(per_cycle.values()) == {1} and len(per_cycle) == count  # the killed charge was looked up, not repeated
    with session_factory() as session:
        assert {m.expires_on for m in session.scalars(select(Mailbox))} == {date(2028, 3, 31)}
    wait_until(lambda: len(smtp_server.messages) == count, timeout=30, what="the receipts")
    assert survivor.running, survivor.log()

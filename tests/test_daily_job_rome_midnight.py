"""The daily job half an hour after midnight in Rome, when UTC still reads the day before.

At 00:30 on 15 January 2027 in Rome it is 23:30 on 14 January in UTC.  Run
without a date (``pec-renewal run-daily``, and beat's firing of the scan), the
job takes the business date in Europe/Rome: the notices of the 15th go out,
not those of the 14th.
"""

from __future__ import annotations

import email
import email.policy
import json
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
import time_machine
from celery import Celery, _state
from click.testing import CliRunner
from sqlalchemy import select

from config.celery import celery_config
from tasks.daily import run_daily_scan
from tests.support.factories import make_mailbox
from tests.support.settings import TEST_SECRET_KEYS, make_settings
from worker.cli.main import main
from worker.rules.schedule import DEFAULT_STAGES
from worker.services import runtime as runtime_module
from worker.services.notices import SCHEDULE_STATE_KEY
from worker.services.runtime import Runtime
from worker.store.models import DailyRun, NoticeLedgerEntry, WorkerState

ROME = ZoneInfo("Europe/Rome")
DAY = date(2027, 1, 15)  # the business date in Rome
INSTANT = datetime(2027, 1, 14, 23, 30, tzinfo=UTC)
assert INSTANT.astimezone(ROME) == datetime(2027, 1, 15, 0, 30, tzinfo=ROME)

#: (reference address, expiry, next_action_on as the days before left it) -> the notice due on DAY, if any.
MAILBOXES = {
    ("settegiorni@example.it", DAY + timedelta(days=7), DAY): ("expiry-notice", "-7d"),
    ("scaduta-ieri@example.it", DAY - timedelta(days=1), DAY): ("expired-notice", "+1d"),
    # Its -1d fell on the 14th and never went out: on the 15th the expiry day's notice replaces it.
    ("scade-oggi@example.it", DAY, DAY - timedelta(days=1)): ("expiry-notice", "0d"),
    ("domani@example.it", DAY + timedelta(days=8), DAY + timedelta(days=1)): None,  # -7d is the 16th
}
EXPECTED = sorted((address, *notice) for (address, _expires, _next), notice in MAILBOXES.items() if notice)


@pytest.fixture
def fleet(session_factory):
    with session_factory() as session, session.begin():
        for address, expires_on, next_action_on in MAILBOXES:
            mailbox = make_mailbox(session, expires_on=expires_on, reference_email=address)
            mailbox.next_action_on = next_action_on
        # The dates above were set under the schedule in force: no reconciliation moves them.
        session.add(WorkerState(key=SCHEDULE_STATE_KEY, value=",".join(stage.name for stage in DEFAULT_STAGES)))
    return session_factory


def notices_received(smtp_server) -> list[tuple[str, str, str]]:
    parsed = [email.message_from_bytes(m.data, policy=email.policy.default) for m in smtp_server.messages]
    return sorted((str(m["To"]), m["X-PEC-Renewal-Kind"], m["X-PEC-Renewal-Stage"]) for m in parsed)


def assert_the_day_is_rome_s(session_factory) -> None:
    with session_factory() as session:
        assert session.scalars(select(DailyRun.business_date)).all() == [DAY]
        assert set(session.scalars(select(NoticeLedgerEntry.business_date))) == {DAY}


def test_run_daily_without_a_date_at_half_past_midnight_sends_rome_s_notices(
    fleet, database_url, smtp_server, tmp_path
):
    env = {
        "PEC_RENEWAL_DATABASE_URL": database_url,
        "PEC_RENEWAL_VAR_DIR": str(tmp_path / "var"),
        "PEC_RENEWAL_SECRET_KEYS": TEST_SECRET_KEYS,
        "PEC_RENEWAL_BASE_URL": "https://rinnovi.example.test",
        "PEC_RENEWAL_MAIL_BACKEND": "smtp",
        "PEC_RENEWAL_SMTP_HOST": smtp_server.host,
        "PEC_RENEWAL_SMTP_PORT": str(smtp_server.port),
    }
    with time_machine.travel(INSTANT, tick=False):
        result = CliRunner().invoke(main, ["run-daily", "--json"], env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["business_date"] == "2027-01-15"
    assert summary["notices"] == {"expired-notice +1d": 1, "expiry-notice -7d": 1, "expiry-notice 0d": 1}
    assert summary["superseded"] == 1  # the -1d of the 14th
    assert notices_received(smtp_server) == EXPECTED
    assert_the_day_is_rome_s(fleet)


def test_beat_s_scan_without_a_date_at_half_past_midnight_sends_rome_s_notices(
    fleet, database_url, smtp_server, tmp_path
):
    settings = make_settings(
        tmp_path,
        database_url=database_url,
        mail_backend="smtp",
        smtp_host=smtp_server.host,
        smtp_port=smtp_server.port,
        daily_scan_at="00:30",
    )
    rt = Runtime(settings)
    app = Celery("pec_renewal", include=["tasks.daily", "tasks.mail", "tasks.charges"], set_as_current=False)
    app.conf.update(celery_config(settings), task_always_eager=True, task_eager_propagates=True)
    previous_app = _state.get_current_app()
    app.set_current()
    runtime_module.install(rt)
    try:
        with time_machine.travel(INSTANT, tick=False):
            run_daily_scan()  # beat sends no date; the batches and their delivery run eagerly
    finally:
        runtime_module.install(None)
        previous_app.set_current()
        rt.close()
    assert notices_received(smtp_server) == EXPECTED
    assert_the_day_is_rome_s(fleet)

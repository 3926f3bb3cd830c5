"""``pec-renewal demo``: its own database only, and figures that add up."""

from __future__ import annotations

import json
import re
from datetime import UTC, date, datetime, timedelta

import pytest
import time_machine
from click.testing import CliRunner
from sqlalchemy import func, select

from tests.support.factories import make_mailbox
from tests.support.settings import TEST_SECRET_KEYS
from worker.cli.main import main
from worker.store.db import make_engine, make_session_factory
from worker.store.models import Mailbox

DEMO_DAY = date(2027, 3, 10)
LINE = re.compile(r"^\s+(\S+)\s+(\S+)\s+(\d+) emails$")


@pytest.fixture
def env(tmp_path):
    return {"PEC_RENEWAL_VAR_DIR": str(tmp_path / "var"), "PEC_RENEWAL_SECRET_KEYS": TEST_SECRET_KEYS}


def invoke(env, *args, day: date = DEMO_DAY):
    with time_machine.travel(datetime(day.year, day.month, day.day, 7, 0, tzinfo=UTC), tick=False):
        return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def embedded_mailboxes(tmp_path) -> dict[str, tuple]:
    """The embedded database's mailboxes: address -> (expiry, plan, auto-renew)."""
    engine = make_engine(f"sqlite:///{tmp_path / 'var' / 'pec-renewal.sqlite3'}")
    try:
        with make_session_factory(engine)() as session:
            return {
                address: (expires_on, plan, auto_renew)
                for address, expires_on, plan, auto_renew in session.execute(
                    select(Mailbox.address, Mailbox.expires_on, Mailbox.plan, Mailbox.auto_renew)
                )
            }
    finally:
        engine.dispose()


def breakdown(output: str) -> tuple[int, dict[tuple[str, str], int]]:
    """The total the demo says it sent, and its lines by kind and stage."""
    said = re.search(r"\bsent (\d+) emails|(\d+) sent", output)
    total = int(said.group(1) or said.group(2))
    lines = {}
    for line in output.splitlines():
        match = LINE.match(line)
        if match and " to " not in line:
            lines[(match.group(1), match.group(2))] = int(match.group(3))
    return total, lines


def test_the_breakdown_adds_up_to_what_was_sent(env, tmp_path):
    result = invoke(env, "demo", "--mailboxes", "150")
    assert result.exit_code == 0, result.output
    total, lines = breakdown(result.output)
    assert total > 0
    assert sum(lines.values()) == total, result.output
    assert any(kind == "charge-failed" for kind, _stage in lines), "the charge-failed emails are in the breakdown"
    assert f"{total} emails written to the Maildir" in result.output


def test_sandbox_charges_agrees_with_the_demo(env):
    demo = invoke(env, "demo", "--mailboxes", "150")
    assert demo.exit_code == 0, demo.output
    _total, lines = breakdown(demo.output)
    failed = sum(count for (kind, _stage), count in lines.items() if kind == "charge-failed")
    assert failed > 0
    assert "gateway calls: 0" in demo.output
    assert f"{failed} charge-failed without any charge attempt" in demo.output

    empty = invoke(env, "sandbox", "charges")
    assert empty.exit_code == 0
    # Not a bare "nothing recorded" after a demo that reports failed auto-renewals: it says why.
    assert "no auto-renew charge has been attempted in this database" in empty.output
    assert f"{failed} charge-failed email(s) went out without a charge attempt" in empty.output

    # The next day the late-notified cycles are charged: what run-daily says the gateway did,
    # the sandbox recorded.
    tomorrow = DEMO_DAY + timedelta(days=1)
    run = invoke(env, "run-daily", "--date", tomorrow.isoformat(), "--json", day=tomorrow)
    calls = json.loads(run.output)["charges"]["gateway_charges"]
    assert calls > 0
    recorded = json.loads(invoke(env, "sandbox", "charges", "--json", day=tomorrow).output)
    assert len(recorded) == calls
    assert {record["outcome"] for record in recorded} == {"succeeded"}


def test_the_demo_never_writes_into_a_server_database(env, database_url, session_factory):
    with session_factory() as session:
        make_mailbox(session, expires_on=date(2027, 4, 1), address="vera@pec.provider.example.it")
        session.commit()
    result = invoke({**env, "PEC_RENEWAL_DATABASE_URL": database_url}, "demo")
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("pec-renewal: the demo builds its own SQLite")
    assert "Traceback" not in result.output
    with session_factory() as session:
        assert session.scalar(select(func.count()).select_from(Mailbox)) == 1


def test_the_demo_refuses_a_database_it_did_not_create(env, tmp_path):
    source = tmp_path / "fleet.csv"
    source.write_text(
        "address,account,holder_name,holder_kind,reference_email,plan,expires_on\n"
        "vera@pec.provider.example.it,cliente@example.it,Vera Neri,private,vera@example.it,pro,2028-12-21\n"
    )
    assert invoke(env, "import", "mailboxes", str(source)).exit_code == 0
    before = embedded_mailboxes(tmp_path)
    assert before == {"vera@pec.provider.example.it": (date(2028, 12, 21), "pro", False)}

    result = invoke(env, "demo")
    assert result.exit_code == 2
    assert embedded_mailboxes(tmp_path) == before
    assert result.stderr.count("\n") == 1
    assert "is a database the demo did not create; it is left as it is" in result.stderr
    assert "PEC_RENEWAL_VAR_DIR=" in result.stderr
    assert not (tmp_path / "var" / "demo").exists()


def test_a_second_demo_rebuilds_its_own_database_and_says_so(env, tmp_path):
    first = invoke(env, "demo", "--mailboxes", "60")
    assert first.exit_code == 0, first.output
    assert "building the demo database" in first.output
    second = invoke(env, "demo", "--mailboxes", "60")
    assert second.exit_code == 0, second.output
    assert "rebuilding the demo database" in second.output and "is discarded" in second.output
    assert "imported 60 sample mailboxes" in second.output and "(60 new, 0 updated)" in second.output


def test_the_demo_will_not_rebuild_its_database_once_it_holds_other_mailboxes(env, tmp_path):
    assert invoke(env, "demo", "--mailboxes", "30").exit_code == 0
    source = tmp_path / "fleet.csv"
    source.write_text(
        "address,account,holder_name,holder_kind,reference_email,plan,expires_on\n"
        "vera@pec.provider.example.it,cliente@example.it,Vera Neri,private,vera@example.it,pro,2028-12-21\n"
    )
    assert invoke(env, "import", "mailboxes", str(source)).exit_code == 0
    before = embedded_mailboxes(tmp_path)
    result = invoke(env, "demo", "--mailboxes", "30")
    assert result.exit_code == 2
    assert embedded_mailboxes(tmp_path) == before
    assert "holds 1 mailbox(es) the demo did not import" in result.stderr


def test_the_demo_takes_an_empty_database(env):
    # Any command creates the embedded database; one that holds nothing yet is the demo's to take.
    assert invoke(env, "report", "--json").exit_code == 0
    result = invoke(env, "demo", "--mailboxes", "30")
    assert result.exit_code == 0, result.output
    assert "building the demo database in the empty database" in result.output

"""Payments from the bank: statements matched by order number, the amounts parse_euro reads, the payments CLI."""

from __future__ import annotations

import io
from datetime import date, timedelta

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import select

from tests.support.factories import make_mailbox
from tests.support.orders import TODAY
from tests.support.payments import LATER, place_order, snapshot
from tests.support.rows import count
from tests.support.settings import TEST_SECRET_KEYS
from worker.cli.main import main
from worker.rules.pricing import format_amount
from worker.rules.schedule import add_years
from worker.rules.vocabulary import format_euro
from worker.services import payments
from worker.store.models import Mailbox, Payment, RenewalOrder

# -- Bank statements ----------------------------------------------------------------------------------


def test_bank_statement_matches_by_order_number(session_factory, settings):
    with session_factory() as session:
        paid = place_order(session, settings, make_mailbox(session, expires_on=date(2027, 4, 30)))
        short = place_order(session, settings, make_mailbox(session, expires_on=date(2027, 5, 31)))
        italian = place_order(session, settings, make_mailbox(session, expires_on=date(2027, 5, 15)), plan="pro")
        short_before = snapshot(session, short.lines[0].mailbox_id)
        statement = (
            "date,amount,reference\n"
            f"2027-03-01,6.10,Bonifico da Mario Rossi causale {paid.order_number.lower()} rinnovo\n"
            f"2027-03-01,6.00,{short.order_number}\n"
            f'01/03/2027,"30,50",RINNOVO {italian.order_number}\n'
            "2027-03-01,6.10,rinnovo pec senza numero\n"
            "2027-03-01,6.10,PEC-2027-999999\n"
            "2027-03-01,-6.10,commissioni\n"
            "2027-03-01,sei euro,PEC-2027-000001\n"
        )
        report = payments.import_bank_statement(
            session, io.StringIO(statement), now=LATER, today=date(2027, 3, 2), settings=settings
        )
        session.commit()
        assert [(line.line, line.status, line.order_number) for line in report.lines] == [
            (2, "registered", paid.order_number),
            (3, "wrong_amount", short.order_number),
            (4, "registered", italian.order_number),
            (5, "unmatched", None),
            (6, "unmatched", "PEC-2027-999999"),
            (7, "skipped", None),
            (8, "invalid", None),
        ]
        assert report.counts["registered"] == 2
        assert len(report.problems) == 4
        assert session.get(RenewalOrder, paid.id).status == "paid"
        assert session.get(RenewalOrder, short.id).status == "awaiting_payment"
        assert snapshot(session, short.lines[0].mailbox_id) == short_before
        assert session.get(Mailbox, paid.lines[0].mailbox_id).expires_on == date(2028, 4, 30)

        # The same statement again registers nothing more.
        again = payments.import_bank_statement(
            session, io.StringIO(statement), now=LATER, today=date(2027, 3, 2), settings=settings
        )
        session.commit()
        assert [line.status for line in again.lines[:3]] == ["already_registered", "wrong_amount", "already_registered"]
        assert count(session, Payment) == 2
        assert session.get(Mailbox, paid.lines[0].mailbox_id).expires_on == date(2028, 4, 30)


def test_bank_statement_semicolons_and_bank_ids(session_factory, settings, tmp_path):
    with session_factory() as session:
        order = place_order(session, settings, make_mailbox(session, expires_on=date(2027, 4, 30)), years=2)
        path = tmp_path / "estratto.csv"
        path.write_text(
            "\ufeffData;Amount;Reference;ID\n"
            f"2027-03-01;12,20;{order.order_number};TRN1\n"
            f"2027-03-01;12,20;{order.order_number} {order.order_number};TRN2\n",
            encoding="utf-8",
        )
        report = payments.import_bank_statement(session, path, now=LATER, today=date(2027, 3, 2), settings=settings)
        # The number twice in one reference is still one order; TRN2 is a second payment of a paid order.
        assert [line.status for line in report.lines] == ["registered", "refused"]
        assert "already paid" in report.lines[1].message
        assert session.scalar(select(Payment.reference)) == "bank:TRN1"


def test_bank_statement_with_several_order_numbers_is_unmatched(session_factory, settings):
    with session_factory() as session:
        report = payments.import_bank_statement(
            session,
            io.StringIO("date,amount,reference\n2027-03-01,6.10,PEC-2027-000001 e PEC-2027-000002\n"),
            now=LATER,
            today=TODAY,
            settings=settings,
        )
        assert [(line.status, line.message) for line in report.lines] == [
            ("unmatched", "several order numbers in the reference: PEC-2027-000001, PEC-2027-000002")
        ]


def test_bank_statement_without_the_columns_is_refused(session_factory, settings):
    with session_factory() as session:
        with pytest.raises(payments.BankStatementInvalid, match="lacks the column"):
            payments.import_bank_statement(
                session, io.StringIO("when,amount,reference\n"), now=LATER, today=TODAY, settings=settings
            )


@pytest.mark.parametrize(
    "text, cents",
    [
        ("48.80", 4880),
        ("48,80", 4880),
        ("48", 4800),
        ("1.234,56", 123456),
        ("1,234.56", 123456),
        ("€ 48,80", 4880),
        ("48.80 EUR", 4880),
        ("0,5", 50),
        ("-6,10", -610),
    ],
)
def test_parse_euro(text, cents):
    assert payments.parse_euro(text) == cents


@given(st.integers(min_value=1, max_value=10**9))
def test_parse_euro_reads_back_every_format(cents):
    assert payments.parse_euro(format_amount(cents)) == cents
    assert payments.parse_euro(format_euro(cents, "it")) == cents
    assert payments.parse_euro(format_euro(cents, "en")) == cents
    assert payments.parse_euro(format_amount(cents).replace(".", ",")) == cents


@pytest.mark.parametrize("text", ["", "abc", "48.801", "1.234", "1.2.3", "12,345,67", "48,80,00", "1.234.56", "48,801"])
def test_parse_euro_refuses(text):
    with pytest.raises(ValueError):
        payments.parse_euro(text)


# -- The CLI -----------------------------------------------------------------------------------------


def cli_env(tmp_path, database_url):
    return {
        "PEC_RENEWAL_DATABASE_URL": database_url,
        "PEC_RENEWAL_VAR_DIR": str(tmp_path / "var"),
        "PEC_RENEWAL_SECRET_KEYS": TEST_SECRET_KEYS,
        "PEC_RENEWAL_BASE_URL": "https://rinnovi.example.test",
        "PEC_RENEWAL_MAIL_FROM": "Rinnovi PEC <rinnovi@pec-provider.example>",
    }


def test_cli_register_and_import_bank(session_factory, settings, database_url, tmp_path):
    today = date.today()  # the CLI runs on the wall clock
    with session_factory() as session:
        first = place_order(
            session, settings, make_mailbox(session, expires_on=today + timedelta(days=40)), today=today
        )
        second = place_order(
            session, settings, make_mailbox(session, expires_on=today + timedelta(days=50)), today=today
        )
        first_mailbox, second_mailbox = first.lines[0].mailbox_id, second.lines[0].mailbox_id
    runner = CliRunner()
    env = cli_env(tmp_path, database_url)

    result = runner.invoke(
        main, ["payments", "register", first.order_number, "--amount", "6,00", "--reference", "CRO 1"], env=env
    )
    assert result.exit_code == 2
    assert "payment not registered" in result.output and "6.00 EUR" in result.output

    result = runner.invoke(
        main, ["payments", "register", first.order_number, "--amount", "6,10", "--reference", "CRO 1"], env=env
    )
    assert result.exit_code == 0, result.output
    assert f"{first.order_number}: payment of 6.10 EUR registered (bank_transfer)" in result.output
    result = runner.invoke(
        main, ["payments", "register", first.order_number, "--amount", "6.10", "--reference", "CRO 1"], env=env
    )
    assert result.exit_code == 0
    assert "already registered; nothing changed" in result.output

    result = runner.invoke(
        main, ["payments", "register", "PEC-2027-424242", "--amount", "6.10", "--reference", "x"], env=env
    )
    assert result.exit_code == 2 and "no order PEC-2027-424242" in result.output
    result = runner.invoke(
        main, ["payments", "register", first.order_number, "--amount", "sei", "--reference", "x"], env=env
    )
    assert result.exit_code == 2 and "not an amount" in result.output

    statement = tmp_path / "statement.csv"
    statement.write_text(
        "date,amount,reference\n"
        f"{today.isoformat()},6.10,{second.order_number}\n"
        f"{today.isoformat()},9.99,nessun ordine\n"
    )
    result = runner.invoke(main, ["payments", "import-bank", str(statement)], env=env)
    assert result.exit_code == 1
    assert "line 2: registered" in result.output
    assert "line 3: unmatched" in result.output
    assert "2 line(s): 1 registered, 0 already registered, 1 unmatched" in result.output

    bad = tmp_path / "bad.csv"
    bad.write_text("when,how much\n")
    result = runner.invoke(main, ["payments", "import-bank", str(bad)], env=env)
    assert result.exit_code == 2 and "lacks the column(s) date, amount, reference" in result.output

    with session_factory() as session:
        assert session.get(Mailbox, first_mailbox).expires_on == add_years(today + timedelta(days=40), 1)
        assert session.get(Mailbox, second_mailbox).expires_on == add_years(today + timedelta(days=50), 1)
        assert session.get(RenewalOrder, first.id).status == "paid"
        assert session.get(RenewalOrder, second.id).status == "paid"
        assert count(session, Payment) == 2

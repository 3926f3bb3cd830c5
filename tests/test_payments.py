"""Payment registration on the real PostgreSQL: by hand, from a bank statement, at a gateway checkout, and the CLI."""

from __future__ import annotations

import email
import email.policy
import io
from datetime import UTC, date, datetime, timedelta

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import func, select

from tests.support.factories import make_mailbox
from tests.support.settings import TEST_SECRET_KEYS
from worker.cli.main import main
from worker.gateways.sandbox import SandboxGateway
from worker.mail.emails import EmailRenderer
from worker.rules.links import ACCOUNT, MAILBOX, LinkSigner, RenewalLink
from worker.rules.pricing import format_amount
from worker.rules.schedule import DEFAULT_STAGES, add_years, first_action_on
from worker.rules.vocabulary import format_euro
from worker.services import orders, payments
from worker.services.orders import LinkState, MailboxChoice
from worker.services.payments import PaymentRefused
from worker.store.models import Holder, Mailbox, OutboxMessage, Payment, RenewalOrder, SandboxCharge, SandboxMethod

TODAY = date(2027, 3, 1)
NOW = datetime(2027, 3, 1, 9, 30, tzinfo=UTC)
LATER = datetime(2027, 3, 2, 8, 0, tzinfo=UTC)


def link_for(mailbox, expires_on=None) -> RenewalLink:
    return RenewalLink(MAILBOX, mailbox.id, expires_on or mailbox.expires_on)


def count(session, model) -> int:
    return session.scalar(select(func.count()).select_from(model))


def place_order(
    session,
    settings,
    mailbox,
    *,
    method="bank_transfer",
    years=1,
    plan=None,
    extra_space_gb=0,
    extra_archive_gb=0,
    holder=None,
    today=TODAY,
):
    order = orders.start_order(session, link_for(mailbox), today, NOW)
    orders.choose_mailboxes(
        session,
        order,
        [
            MailboxChoice(
                mailbox.id, plan or mailbox.plan, extra_space_gb, extra_archive_gb, confirm_archive_deletion=True
            )
        ],
        today,
    )
    orders.set_holder(session, order, holder or orders.holder_form_data(order))
    orders.choose_payment(session, order, method, years, today)
    orders.accept_terms(session, order, NOW)
    orders.confirm_order(session, order, now=NOW, today=today, settings=settings)
    session.commit()
    return order


def register(session, settings, order, *, amount=None, reference="CRO 0001", method="bank_transfer", **kwargs):
    return payments.register_payment(
        session,
        order_number=order.order_number,
        amount_cents=order.total_cents if amount is None else amount,
        method=method,
        reference=reference,
        now=LATER,
        today=date(2027, 3, 2),
        settings=settings,
        **kwargs,
    )


def snapshot(session, mailbox_id):
    session.expire_all()
    mailbox = session.get(Mailbox, mailbox_id)
    return (
        mailbox.expires_on,
        mailbox.plan,
        mailbox.extra_space_gb,
        mailbox.extra_archive_gb,
        mailbox.auto_renew,
        mailbox.payment_method,
        mailbox.next_action_on,
        mailbox.holder_id,
    )


# -- register_payment ---------------------------------------------------------------------------------


def test_registration_renews_from_the_old_expiry_and_queues_the_email(session_factory, settings):
    with session_factory() as session:
        mailbox = make_mailbox(session, expires_on=date(2027, 4, 30), plan="pro")
        mailbox.extra_archive_gb = 4
        order = place_order(session, settings, mailbox, years=2, plan="premium", extra_space_gb=1, extra_archive_gb=2)
        result = register(session, settings, order)
        session.commit()
        assert result.registered
        assert [(r.address, r.old_expires_on, r.new_expires_on) for r in result.renewed] == [
            (mailbox.address, date(2027, 4, 30), date(2029, 4, 30))
        ]
        session.expire_all()
        mailbox = session.get(Mailbox, mailbox.id)
        assert (mailbox.expires_on, mailbox.plan, mailbox.extra_space_gb, mailbox.extra_archive_gb) == (
            date(2029, 4, 30),
            "premium",
            1,
            2,
        )
        assert mailbox.renewal_years == 2
        assert not mailbox.auto_renew  # a bank transfer does not switch it on
        assert mailbox.next_action_on == first_action_on(DEFAULT_STAGES, date(2029, 4, 30)) == date(2029, 1, 30)
        order = session.get(RenewalOrder, order.id)
        assert (order.status, order.paid_at) == ("paid", LATER)
        assert order.lines[0].new_expires_on == date(2029, 4, 30)
        # The old link now says "already renewed".
        view = orders.describe_link(session, link_for(mailbox, date(2027, 4, 30)), date(2027, 3, 2))
        assert (view.state, view.new_expires_on) == (LinkState.ALREADY_RENEWED, date(2029, 4, 30))

        completed = session.scalar(select(OutboxMessage).where(OutboxMessage.kind == "renewal-completed"))
        signer = LinkSigner(settings.secret_keys, settings.base_url, settings.link_max_age_days)
        rendered = EmailRenderer(mail_from=settings.mail_from, signer=signer).render(
            kind=completed.kind,
            stage=completed.stage,
            language=completed.language,
            to_address=completed.to_address,
            message_id=completed.message_id,
            context=completed.context,
            now=LATER,
        )
        message = email.message_from_bytes(rendered.as_bytes(), policy=email.policy.default)
        text = message.get_body(preferencelist=("plain",)).get_content()
        assert message["Subject"] == f"Rinnovo completato: la casella PEC {mailbox.address} scade ora il 30 aprile 2029"
        assert "Nuova scadenza: 30 aprile 2029" in text
        assert order.order_number in text
        assert "Tipologia: Premium (prima: Pro)" in text


def test_29_february_moves_to_28_february(session_factory, settings):
    with session_factory() as session:
        mailbox = make_mailbox(session, expires_on=date(2028, 2, 29))
        order = place_order(session, settings, mailbox, years=1, today=date(2027, 12, 1))
        payments.register_payment(
            session,
            order_number=order.order_number,
            amount_cents=order.total_cents,
            method="bank_transfer",
            reference="CRO 29",
            now=LATER,
            today=date(2027, 12, 2),
            settings=settings,
        )
        assert session.get(Mailbox, mailbox.id).expires_on == date(2029, 2, 28)
        # and four years on, the 28th stays the 28th (counted from the old expiry, not clamped back).
        other = make_mailbox(session, expires_on=date(2028, 2, 29))
        order = place_order(session, settings, other, years=4, today=date(2027, 12, 1))
        payments.register_payment(
            session,
            order_number=order.order_number,
            amount_cents=order.total_cents,
            method="bank_transfer",
            reference="CRO 30",
            now=LATER,
            today=date(2027, 12, 2),
            settings=settings,
        )
        assert session.get(Mailbox, other.id).expires_on == date(2032, 2, 29)


def test_renewed_after_expiry_counts_from_the_old_expiry(session_factory, settings):
    with session_factory() as session:
        mailbox = make_mailbox(session, expires_on=date(2027, 1, 20))  # expired 40 days ago
        order = place_order(session, settings, mailbox, years=1)
        register(session, settings, order)
        assert session.get(Mailbox, mailbox.id).expires_on == date(2028, 1, 20)


def test_registering_the_same_payment_twice_registers_once(session_factory, settings):
    with session_factory() as session:
        mailbox = make_mailbox(session, expires_on=date(2027, 4, 30))
        order = place_order(session, settings, mailbox)
        register(session, settings, order, reference="CRO 42")
        session.commit()
    with session_factory() as session:
        order = session.get(RenewalOrder, order.id)
        result = register(session, settings, order, reference="CRO  42")  # whitespace is normalised
        session.commit()
        assert not result.registered
        assert session.get(Mailbox, mailbox.id).expires_on == date(2028, 4, 30)
        assert count(session, Payment) == 1
        assert session.scalar(select(func.count()).where(OutboxMessage.kind == "renewal-completed")) == 1
        # Another payment of an order already paid is refused: it must be refunded.
        with pytest.raises(PaymentRefused) as refused:
            register(session, settings, order, reference="CRO 43")
        assert refused.value.code == "already_paid"
        assert "refund" in str(refused.value)
        with pytest.raises(PaymentRefused) as refused:
            register(session, settings, order, reference="CRO 42", amount=100)
        assert refused.value.code == "reference_reused"


def test_wrong_amount_is_refused_and_changes_nothing(session_factory, settings):
    with session_factory() as session:
        mailbox = make_mailbox(session, expires_on=date(2027, 4, 30))
        order = place_order(session, settings, mailbox)
        before = snapshot(session, mailbox.id)
        with pytest.raises(PaymentRefused) as refused:
            register(session, settings, order, amount=order.total_cents - 1)
        assert refused.value.code == "wrong_amount"
        assert str(refused.value) == (
            f"{order.order_number}: the amount is 6.09 EUR but the order's total is 6.10 EUR; nothing registered"
        )
        session.rollback()
        assert snapshot(session, mailbox.id) == before
        assert count(session, Payment) == 0
        assert session.get(RenewalOrder, order.id).status == "awaiting_payment"


@pytest.mark.parametrize(
    "number, code",
    [("PEC-2027-999999", "unknown_order"), ("", "unknown_order")],
)
def test_unknown_order(session_factory, settings, number, code):
    with session_factory() as session:
        with pytest.raises(PaymentRefused) as refused:
            payments.register_payment(
                session,
                order_number=number,
                amount_cents=610,
                method="bank_transfer",
                reference="x",
                now=LATER,
                today=TODAY,
                settings=settings,
            )
        assert refused.value.code == code


def test_draft_order_cannot_be_paid(session_factory, settings):
    with session_factory() as session:
        mailbox = make_mailbox(session, expires_on=date(2027, 4, 30))
        order = orders.start_order(session, link_for(mailbox), TODAY, NOW)
        order.order_number = "PEC-2027-000777"  # never happens; a draft has no number
        order.total_cents = 610
        with pytest.raises(PaymentRefused) as refused:
            register(session, settings, order)
        assert refused.value.code == "not_payable"


def test_two_orders_for_one_mailbox_renew_it_once(session_factory, settings):
    with session_factory() as session:
        mailbox = make_mailbox(session, expires_on=date(2027, 4, 30), reference_email="uno@example.it")
        first = place_order(session, settings, mailbox)
        account_order = orders.start_order(
            session, RenewalLink(ACCOUNT, mailbox.account_id, mailbox.expires_on), TODAY, NOW
        )
        orders.choose_mailboxes(session, account_order, [], TODAY)
        orders.set_holder(session, account_order, orders.holder_form_data(account_order))
        orders.choose_payment(session, account_order, "bank_transfer", 1, TODAY)
        orders.accept_terms(session, account_order, NOW)
        # The mailbox is in the first order, awaiting payment: the second is not confirmed.
        with pytest.raises(orders.OrderValidationError, match=first.order_number):
            orders.confirm_order(session, account_order, now=NOW, today=TODAY, settings=settings)
        register(session, settings, first)
        # Once the first is paid, the mailbox was renewed: still not confirmed, and never paid.
        with pytest.raises(orders.OrderValidationError, match="rinnovata o modificata"):
            orders.confirm_order(session, account_order, now=NOW, today=TODAY, settings=settings)
        assert account_order.status == "draft" and account_order.order_number is None
        assert session.get(Mailbox, mailbox.id).expires_on == date(2028, 4, 30)


def test_payment_after_deletion_is_refused(session_factory, settings):
    with session_factory() as session:
        mailbox = make_mailbox(session, expires_on=date(2026, 12, 3))  # deleted from 4 March 2027
        order = place_order(session, settings, mailbox)
        with pytest.raises(PaymentRefused) as refused:
            payments.register_payment(
                session,
                order_number=order.order_number,
                amount_cents=order.total_cents,
                method="bank_transfer",
                reference="late",
                now=LATER,
                today=date(2027, 3, 4),
                settings=settings,
            )
        assert refused.value.code == "mailbox_deleted"


def test_downgrade_drops_the_archive_and_edited_holder_takes_effect(session_factory, settings):
    holder = {
        "name": "Rossi S.r.l.",
        "kind": "company",
        "reference_email": "amministrazione@rossi.example.it",
        "vat_number": "00743110157",
        "einvoice_code": "ABC1234",
    }
    with session_factory() as session:
        mailbox = make_mailbox(session, expires_on=date(2027, 4, 30), plan="premium")
        mailbox.extra_archive_gb = 5
        old_holder = mailbox.holder_id
        order = place_order(session, settings, mailbox, plan="standard", holder=holder)
        register(session, settings, order)
        session.commit()
        mailbox = session.get(Mailbox, mailbox.id)
        assert (mailbox.plan, mailbox.extra_archive_gb) == ("standard", 0)
        assert mailbox.holder_id != old_holder
        new_holder = session.get(Holder, mailbox.holder_id)
        assert (new_holder.kind, new_holder.vat_number, new_holder.sdi_code) == ("company", "00743110157", "ABC1234")
        assert new_holder.account_id == mailbox.account_id
        # Notices now go to the new reference address (the scan reads the mailbox's copy).
        assert mailbox.reference_email == "amministrazione@rossi.example.it"


def test_card_payment_switches_auto_renew_on(session_factory, settings):
    with session_factory() as session:
        mailbox = make_mailbox(session, expires_on=date(2027, 4, 30))
        order = place_order(session, settings, mailbox, method="card", years=3)
        register(session, settings, order, method="card", reference="sandbox:order:1:1", payment_token="pm_card_visa")
        mailbox = session.get(Mailbox, mailbox.id)
        assert (mailbox.auto_renew, mailbox.payment_method, mailbox.renewal_years) == (True, "pm_card_visa", 3)
        assert mailbox.expires_on == date(2030, 4, 30)


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


# -- Card and PayPal at checkout -----------------------------------------------------------------------


def test_checkout_with_the_sandbox_gateway(session_factory, settings):
    gateway = SandboxGateway(session_factory)
    with session_factory() as session:
        mailbox = make_mailbox(session, expires_on=date(2027, 4, 30))
        order = place_order(session, settings, mailbox, method="card", years=2)
        declined = payments.pay_order_with_gateway(
            session, gateway, order, "pm_card_chargeDeclined", method="card", now=LATER, today=TODAY, settings=settings
        )
        assert (declined.outcome, declined.succeeded) == ("hard_decline", False)
        assert session.get(Mailbox, mailbox.id).expires_on == date(2027, 4, 30)
        paid = payments.pay_order_with_gateway(
            session, gateway, order, "pm_card_visa", method="card", now=LATER, today=TODAY, settings=settings
        )
        assert paid.succeeded
        again = payments.pay_order_with_gateway(
            session, gateway, order, "pm_card_visa", method="card", now=LATER, today=TODAY, settings=settings
        )
        assert again.outcome == "already_paid"
    with session_factory() as session:
        charges = session.scalars(select(SandboxCharge).order_by(SandboxCharge.id)).all()
        assert [(c.idempotency_key, c.outcome, c.amount_cents) for c in charges] == [
            (f"order:{order.id}:1", "hard_decline", 1220),
            (f"order:{order.id}:2", "succeeded", 1220),
        ]
        mailbox = session.get(Mailbox, mailbox.id)
        assert (mailbox.expires_on, mailbox.auto_renew, mailbox.renewal_years) == (date(2029, 4, 30), True, 2)
        # The sandbox kept the card as a stored method, as Stripe keeps a PaymentMethod.
        assert mailbox.payment_method == gateway.keep_charged_method(f"order:{order.id}:2").token
        assert mailbox.payment_method.startswith("pm_sbx_")
        assert session.scalar(select(Payment.reference)) == f"sandbox:order:{order.id}:2"


def test_checkout_timeout_is_reconciled_without_a_second_charge(session_factory, settings):
    gateway = SandboxGateway(session_factory)
    with session_factory() as session:
        mailbox = make_mailbox(session, expires_on=date(2027, 4, 30))
        order = place_order(session, settings, mailbox, method="paypal")
        lost = payments.pay_order_with_gateway(
            session, gateway, order, "pm_sandbox_timeout", method="card", now=LATER, today=TODAY, settings=settings
        )
        assert (lost.outcome, lost.succeeded) == ("unknown", False)
        assert session.get(RenewalOrder, order.id).gateway_state == "unknown"
        # The holder tries again (with another card even): the lost charge is found and registered.
        found = payments.pay_order_with_gateway(
            session, gateway, order, "pm_card_visa", method="card", now=LATER, today=TODAY, settings=settings
        )
        assert found.succeeded
    with session_factory() as session:
        assert count(session, SandboxCharge) == 1
        mailbox = session.get(Mailbox, mailbox.id)
        assert mailbox.expires_on == date(2028, 4, 30)
        # The method that was charged, kept by the sandbox: it answers as pm_sandbox_timeout.
        method = session.scalar(select(SandboxMethod).where(SandboxMethod.method_id == mailbox.payment_method))
        assert method.behaviour == "pm_sandbox_timeout"


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


# -- Concurrency ---------------------------------------------------------------------------------------


def run_together(functions):
    """Run the functions at once in threads; their results (or exceptions) in order."""
    import threading

    barrier = threading.Barrier(len(functions))
    results: list = [None] * len(functions)

    def runner(index, function):
        barrier.wait()
        try:
            results[index] = function()
        except Exception as error:
            results[index] = error

    threads = [threading.Thread(target=runner, args=(index, function)) for index, function in enumerate(functions)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return results


def test_two_registrations_at_once_register_once(session_factory, settings):
    with session_factory() as session:
        mailbox = make_mailbox(session, expires_on=date(2027, 4, 30))
        order = place_order(session, settings, mailbox)
        number, total = order.order_number, order.total_cents

    def pay(reference):
        def call():
            with session_factory() as session, session.begin():
                return payments.register_payment(
                    session,
                    order_number=number,
                    amount_cents=total,
                    method="bank_transfer",
                    reference=reference,
                    now=LATER,
                    today=date(2027, 3, 2),
                    settings=settings,
                )

        return call

    results = run_together([pay("CRO A"), pay("CRO B"), pay("CRO A")])
    registered = [r for r in results if isinstance(r, payments.RegistrationResult) and r.registered]
    assert len(registered) == 1
    assert all(
        isinstance(r, payments.RegistrationResult) or (isinstance(r, PaymentRefused) and r.code == "already_paid")
        for r in results
    ), results
    with session_factory() as session:
        assert count(session, Payment) == 1
        assert session.get(Mailbox, mailbox.id).expires_on == date(2028, 4, 30)
        assert session.scalar(select(func.count()).where(OutboxMessage.kind == "renewal-completed")) == 1


def test_two_posts_of_a_link_at_once_start_one_order(session_factory, settings):
    with session_factory() as session:
        mailbox = make_mailbox(session, expires_on=date(2027, 4, 30))
        session.commit()
        link = link_for(mailbox)

    def start():
        with session_factory() as session, session.begin():
            return orders.start_order(session, link, TODAY, NOW).id

    results = run_together([start] * 4)
    assert len(set(results)) == 1 and isinstance(results[0], int), results
    with session_factory() as session:
        assert count(session, RenewalOrder) == 1


def test_two_confirmations_at_once_confirm_once(session_factory, settings):
    with session_factory() as session:
        mailbox = make_mailbox(session, expires_on=date(2027, 4, 30))
        order = orders.start_order(session, link_for(mailbox), TODAY, NOW)
        orders.choose_mailboxes(session, order, [], TODAY)
        orders.set_holder(session, order, orders.holder_form_data(order))
        orders.choose_payment(session, order, "bank_transfer", 1, TODAY)
        orders.accept_terms(session, order, NOW)
        session.commit()
        public_id = order.public_id

    def confirm():
        with session_factory() as session, session.begin():
            found = orders.find_order(session, public_id)
            return orders.confirm_order(session, found, now=NOW, today=TODAY, settings=settings).order_number

    results = run_together([confirm] * 3)
    assert len(set(results)) == 1 and str(results[0]).startswith("PEC-2027-"), results
    with session_factory() as session:
        assert session.scalar(select(func.count()).where(OutboxMessage.kind == "order-confirmation")) == 1


def test_two_checkouts_at_once_charge_once(session_factory, settings):
    gateway = SandboxGateway(session_factory, latency_ms=300)
    with session_factory() as session:
        mailbox = make_mailbox(session, expires_on=date(2027, 4, 30))
        order = place_order(session, settings, mailbox, method="card")
        public_id = order.public_id

    def checkout():
        with session_factory() as session:
            found = orders.find_order(session, public_id)
            return payments.pay_order_with_gateway(
                session, gateway, found, "pm_card_visa", method="card", now=LATER, today=TODAY, settings=settings
            ).outcome

    results = run_together([checkout, checkout, checkout])
    assert set(results) <= {"succeeded", "already_paid"} and "succeeded" in results, results
    with session_factory() as session:
        assert count(session, SandboxCharge) == 1
        assert count(session, Payment) == 1
        assert session.get(Mailbox, mailbox.id).expires_on == date(2028, 4, 30)

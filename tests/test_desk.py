"""The operator's desk on PostgreSQL: ``mailbox show``, ``notices resend``, ``orders list|cancel``, ``links issue``."""

from __future__ import annotations

import email
import email.policy
import json
from datetime import UTC, date, datetime

import pytest
import time_machine
from click.testing import CliRunner
from sqlalchemy import select

from tests.support.settings import TEST_SECRET_KEYS, make_settings
from worker.cli.main import main
from worker.rules import schedule
from worker.rules.links import MAILBOX, LinkSigner, RenewalLink
from worker.services import orders
from worker.services.orders import MailboxChoice
from worker.store.models import Mailbox, OutboxMessage, RenewalOrder

BASE_URL = "https://rinnovi.example.test"
ANNA = "anna.neri@pec.provider.example.it"
BRUNO = "bruno.galli@pec.provider.example.it"
ROSSI = "info@pec.rossi-srl.it"
OLD = "vecchia@pec.provider.example.it"
NEW = "nuova@pec.provider.example.it"
HEADER = "address,account,holder_name,holder_kind,reference_email,plan,expires_on,domain,domain_expires_on,auto_renew,payment_method,card_expiry\n"
FLEET = HEADER + (
    f"{ANNA},anna@example.it,Anna Neri,private,anna@old.example.it,pro,2027-03-31,,,,,\n"
    f"{BRUNO},bruno@example.it,Bruno Galli,private,bruno@example.it,standard,2027-03-31,,,true,pm_card_chargeDeclined,2029-01\n"
    f"{ROSSI},rossi@example.it,Rossi S.r.l.,private,rossi@example.it,standard,,rossi-srl.it,2027-03-31,,,\n"
    f"{OLD},vecchia@example.it,Vera Vecchi,private,vecchia@example.it,standard,2026-11-01,,,,,\n"
    f"{NEW},nuova@example.it,Nina Nuovi,private,nuova@example.it,standard,2027-09-30,,,,,\n"
)
TODAY = date(2027, 3, 24)


def at(day: date):
    return time_machine.travel(datetime(day.year, day.month, day.day, 8, 0, tzinfo=UTC), tick=False)


@pytest.fixture
def env(tmp_path, database_url, session_factory, smtp_server):
    return {
        "PEC_RENEWAL_DATABASE_URL": database_url,
        "PEC_RENEWAL_VAR_DIR": str(tmp_path / "var"),
        "PEC_RENEWAL_SECRET_KEYS": TEST_SECRET_KEYS,
        "PEC_RENEWAL_BASE_URL": BASE_URL,
        "PEC_RENEWAL_MAIL_FROM": "Rinnovi PEC <rinnovi@pec-provider.example>",
        "PEC_RENEWAL_MAIL_BACKEND": "smtp",
        "PEC_RENEWAL_SMTP_HOST": smtp_server.host,
        "PEC_RENEWAL_SMTP_PORT": str(smtp_server.port),
    }


def invoke(env, *args, day: date = TODAY):
    with at(day):
        return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def show(env, address: str) -> dict:
    result = invoke(env, "mailbox", "show", address, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def one_line_refusal(result, *words: str) -> None:
    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("pec-renewal: "), result.stderr
    for word in words:
        assert word in result.stderr, result.stderr


@pytest.fixture
def fleet(env, tmp_path):
    """The fleet, run through 2027-03-01 and 2027-03-24 (charge notice, then a declined charge)."""
    source = tmp_path / "fleet.csv"
    source.write_text(FLEET)
    assert invoke(env, "import", "mailboxes", str(source)).exit_code == 0
    for day in (date(2027, 3, 1), TODAY):
        result = invoke(env, "run-daily", "--date", day.isoformat(), day=day)
        assert result.exit_code == 0, result.output
    return env


def received(smtp_server):
    return [email.message_from_bytes(m.data, policy=email.policy.default) for m in smtp_server.messages]


# -- mailbox show --------------------------------------------------------------------------------


def test_mailbox_show_tells_everything_about_a_manual_mailbox(fleet, smtp_server):
    details = show(fleet, ANNA.upper())
    assert details["address"] == ANNA
    assert details["holder"]["name"] == "Anna Neri" and details["reference_email"] == "anna@old.example.it"
    assert details["plan"] == "pro" and details["extras"] == {"space_gb": 0, "archive_gb": 0}
    expires = date(2027, 3, 31)
    assert details["expires_on"] == "2027-03-31" and details["state"] == "active"
    assert details["last_renewable_on"] == schedule.last_renewable_day(expires).isoformat()
    assert details["deletion_on"] == schedule.deletion_date(expires).isoformat() == "2027-06-30"
    assert details["auto_renew"] is False and details["payment_method"] is None
    assert (details["next_action"], details["next_action_on"]) == ("expiry-notice -1d", "2027-03-30")
    assert [(n["kind"], n["stage"], n["cycle_expires_on"], n["status"]) for n in details["notices"]] == [
        ("expiry-notice", "-1m", "2027-03-31", "sent"),
        ("expiry-notice", "-7d", "2027-03-31", "sent"),
    ]
    sent_ids = {m["Message-ID"].strip("<>") for m in received(smtp_server) if m["To"] == "anna@old.example.it"}
    assert {n["message_id"] for n in details["notices"]} == sent_ids
    assert all(n["sent_at"] for n in details["notices"])
    assert details["orders"] == [] and details["charges"] == [] and details["opt_outs"] == []


def test_mailbox_show_of_an_auto_renew_mailbox_after_a_declined_charge(fleet):
    details = show(fleet, BRUNO)
    assert details["auto_renew"] is True
    assert details["payment_method"]["masked"] == "pm_…ined"
    assert "pm_card_chargeDeclined" not in json.dumps(details)
    assert [(n["kind"], n["stage"]) for n in details["notices"]] == [
        ("charge-notice", "-30d"),
        ("charge-failed", "-7d"),
    ]
    [intent] = details["charges"]
    assert (intent["attempt"], intent["status"], intent["decline_code"]) == (1, "hard_decline", "generic_decline")
    [order] = details["orders"]
    assert (order["status"], order["origin"], order["cycle_expires_on"]) == (
        "awaiting_payment",
        "auto_renew_failed",
        "2027-03-31",
    )
    assert order["payments"] == [] and order["line"]["old_expires_on"] == "2027-03-31"
    # After charge-failed the manual stages follow: the next one is -1d.
    assert (details["next_action"], details["next_action_on"]) == ("expiry-notice -1d", "2027-03-30")


def test_mailbox_show_agrees_with_the_report(fleet):
    report = json.loads(invoke(fleet, "report", "--date", "2027-03-25", "--days", "7", "--json").output)
    for address in (ANNA, BRUNO, ROSSI):
        details = show(fleet, address)
        kind = details["next_action"].split()[0]
        assert report["due"][details["next_action_on"]].get(kind, 0) >= 1, (address, details["next_action"])


def test_mailbox_show_reads_at_80_columns(fleet):
    for address in (ANNA, BRUNO, ROSSI, OLD):
        result = invoke(fleet, "mailbox", "show", address)
        assert result.exit_code == 0, result.output
        assert max(len(line) for line in result.output.splitlines()) <= 80, result.output
        assert f"Mailbox {address}" in result.output and "deletion on" in result.output
    text = invoke(fleet, "mailbox", "show", BRUNO).output
    assert "hard_decline" in text and "auto_renew_failed" in text and "charge-failed -7d" in text


def test_mailbox_show_of_an_unknown_address_is_one_line(fleet):
    one_line_refusal(invoke(fleet, "mailbox", "show", "nessuno@pec.provider.example.it"), "no mailbox nessuno@")
    one_line_refusal(invoke(fleet, "mailbox", "show", "nessuno@pec.provider.example.it", "--json"), "no mailbox")


# -- notices resend --------------------------------------------------------------------------------


def test_resend_after_the_reference_address_was_corrected(fleet, tmp_path, smtp_server, session_factory):
    before = show(fleet, ANNA)["notices"][-1]
    corrected = tmp_path / "corrected.csv"
    corrected.write_text(HEADER + f"{ANNA},anna@example.it,Anna Neri,private,anna@new.example.it,pro,2027-03-31,,,,,\n")
    assert invoke(fleet, "import", "mailboxes", str(corrected)).exit_code == 0

    result = invoke(fleet, "notices", "resend", ANNA)
    assert result.exit_code == 0, result.output
    assert "expiry-notice -7d" in result.output and "anna@new.example.it" in result.output
    assert "relay" in result.output
    # Queued, not sent: the relay delivers it.
    with session_factory() as session:
        queued = session.scalars(select(OutboxMessage).where(OutboxMessage.to_address == "anna@new.example.it")).all()
        assert [(m.status, m.kind, m.stage) for m in queued] == [("pending", "expiry-notice", "-7d")]
        new_id = queued[0].message_id
    assert new_id != before["message_id"]

    # A second resend before delivery queues nothing more.
    one_line_refusal(invoke(fleet, "notices", "resend", ANNA), "still waiting in the outbox")

    count = len(smtp_server.messages)
    assert invoke(fleet, "relay").output.startswith("sent 1,")
    [message] = received(smtp_server)[count:]
    assert message["To"] == "anna@new.example.it"
    assert message["Message-ID"].strip("<>") == new_id
    assert (message["X-PEC-Renewal-Kind"], message["X-PEC-Renewal-Stage"]) == ("expiry-notice", "-7d")
    assert ANNA in message["X-PEC-Renewal-Mailboxes"]

    after = show(fleet, ANNA)["notices"][-1]
    assert (after["to_address"], after["status"], after["message_id"]) == ("anna@new.example.it", "sent", new_id)
    assert [(e["to_address"], e["message_id"]) for e in after["earlier_deliveries"]] == [
        ("anna@old.example.it", before["message_id"])
    ]
    # Another resend gets yet another Message-ID.
    assert invoke(fleet, "notices", "resend", ANNA).exit_code == 0
    third = show(fleet, ANNA)["notices"][-1]
    assert third["message_id"] not in (new_id, before["message_id"])
    assert len(third["earlier_deliveries"]) == 2


def test_resend_without_a_notice_in_the_current_cycle_is_one_line(fleet):
    one_line_refusal(invoke(fleet, "notices", "resend", NEW), "no notice in its current cycle")
    one_line_refusal(invoke(fleet, "notices", "resend", OLD), "was deleted on 2027-01-31")
    one_line_refusal(invoke(fleet, "notices", "resend", "nessuno@pec.provider.example.it"), "no mailbox")


# -- orders list / cancel -------------------------------------------------------------------------------


def place_paid_order(env, tmp_path, session_factory) -> str:
    """Anna orders her renewal through the order flow; the bank transfer is registered by hand."""
    settings = make_settings(tmp_path, database_url=env["PEC_RENEWAL_DATABASE_URL"])
    now = datetime(2027, 3, 24, 9, 0, tzinfo=UTC)
    with session_factory() as session:
        mailbox = session.scalar(select(Mailbox).where(Mailbox.address == ANNA))
        order = orders.start_order(session, RenewalLink(MAILBOX, mailbox.id, mailbox.expires_on), TODAY, now)
        orders.choose_mailboxes(session, order, [MailboxChoice(mailbox.id, "pro", 0, 0)], TODAY)
        orders.set_holder(session, order, orders.holder_form_data(order))
        orders.choose_payment(session, order, "bank_transfer", 1, TODAY)
        orders.accept_terms(session, order, now)
        orders.confirm_order(session, order, now=now, today=TODAY, settings=settings)
        session.commit()
        number, total = order.order_number, order.total_cents
    paid = invoke(env, "payments", "register", number, "--amount", f"{total / 100:.2f}", "--reference", "CRO 42")
    assert paid.exit_code == 0, paid.output
    return number


def test_orders_list_and_cancel(fleet, tmp_path, session_factory):
    paid_number = place_paid_order(fleet, tmp_path, session_factory)
    listed = json.loads(invoke(fleet, "orders", "list", "--json").output)
    by_number = {order["order_number"]: order for order in listed}
    assert by_number[paid_number]["status"] == "paid" and by_number[paid_number]["mailboxes"] == [ANNA]
    [unpaid_number] = [number for number, order in by_number.items() if order["origin"] == "auto_renew_failed"]
    assert by_number[unpaid_number]["mailboxes"] == [BRUNO]
    only_paid = json.loads(invoke(fleet, "orders", "list", "--status", "paid", "--json").output)
    assert [order["order_number"] for order in only_paid] == [paid_number]
    text = invoke(fleet, "orders", "list").output
    assert paid_number in text and unpaid_number in text and "2 order(s)" in text
    one_line_refusal(
        invoke(fleet, "orders", "list", "--status", "pagato"),
        "'pagato' is not an order status",
        "draft, awaiting_payment, paid, cancelled, lapsed",
    )

    one_line_refusal(
        invoke(fleet, "orders", "cancel", paid_number), f"{paid_number} cannot be cancelled: it is paid", "CRO 42"
    )
    one_line_refusal(invoke(fleet, "orders", "cancel", "PEC-2027-999999"), "no order PEC-2027-999999")

    result = invoke(fleet, "orders", "cancel", unpaid_number.lower())
    assert result.exit_code == 0, result.output
    assert f"{unpaid_number} cancelled (it was awaiting_payment)" in result.output
    # The cancelled order frees its link's cycle: the command says what that means for the holder.
    assert "Rinnova link of the cycle expiring 2027-03-31 can start a new order" in " ".join(result.output.split())
    assert "already cancelled" in invoke(fleet, "orders", "cancel", unpaid_number).output
    with session_factory() as session:
        statuses = dict(session.execute(select(RenewalOrder.order_number, RenewalOrder.status)).all())
    assert statuses == {paid_number: "paid", unpaid_number: "cancelled"}
    # A cancelled order can no longer be paid.
    refused = invoke(fleet, "payments", "register", unpaid_number, "--amount", "6.10", "--reference", "CRO 7")
    assert refused.exit_code == 2 and "not awaiting payment" in refused.output
    assert show(fleet, BRUNO)["orders"][0]["status"] == "cancelled"


def test_an_order_with_an_unresolved_card_payment_is_not_cancelled(fleet, session_factory):
    with session_factory() as session:
        order = session.scalar(select(RenewalOrder))
        order.gateway_state = "unknown"
        number = order.order_number
        session.commit()
    one_line_refusal(invoke(fleet, "orders", "cancel", number), "no final answer yet (unknown)")
    with session_factory() as session:
        assert session.scalar(select(RenewalOrder.status)) == "awaiting_payment"


# -- links issue -----------------------------------------------------------------------------------


def test_links_issue_signs_the_current_cycle(fleet, session_factory):
    result = invoke(fleet, "links", "issue", ANNA)
    assert result.exit_code == 0, result.output
    url = result.stdout.strip()
    assert url.startswith(f"{BASE_URL}/rinnova/") and "\n" not in url
    with at(TODAY):
        link = LinkSigner(TEST_SECRET_KEYS.split(","), BASE_URL, 200).read_renewal_token(url.rpartition("/")[2])
    with session_factory() as session:
        mailbox = session.scalar(select(Mailbox).where(Mailbox.address == ANNA))
        assert (link.target, link.target_id, link.expires_on) == (MAILBOX, mailbox.id, mailbox.expires_on)


def test_links_issue_refuses_domains_deleted_and_unknown_mailboxes(fleet):
    one_line_refusal(invoke(fleet, "links", "issue", ROSSI), "customer domain rossi-srl.it", "renewed with the domain")
    one_line_refusal(invoke(fleet, "links", "issue", OLD), "was deleted on 2027-01-31")
    one_line_refusal(invoke(fleet, "links", "issue", "nessuno@pec.provider.example.it"), "no mailbox")


def test_resend_of_a_grouped_email_is_about_that_mailbox_only(env, tmp_path, smtp_server):
    first, second = "uno@pec.provider.example.it", "due@pec.provider.example.it"
    source = tmp_path / "studio.csv"
    source.write_text(
        HEADER
        + f"{first},studio@example.it,Studio Blu,private,studio@example.it,standard,2027-03-31,,,,,\n"
        + f"{second},studio@example.it,Studio Blu,private,studio@example.it,standard,2027-03-31,,,,,\n"
    )
    assert invoke(env, "import", "mailboxes", str(source)).exit_code == 0
    assert invoke(env, "run-daily", "--date", TODAY.isoformat()).exit_code == 0
    [grouped] = received(smtp_server)
    assert grouped["X-PEC-Renewal-Mailboxes"] == f"{second},{first}"

    assert invoke(env, "notices", "resend", first).exit_code == 0
    assert invoke(env, "relay").output.startswith("sent 1,")
    resent = received(smtp_server)[-1]
    assert resent["X-PEC-Renewal-Mailboxes"] == first
    assert resent["Message-ID"] != grouped["Message-ID"]
    # The other mailbox's notice is still the grouped email.
    assert show(env, second)["notices"][-1]["message_id"] == grouped["Message-ID"].strip("<>")
    assert show(env, first)["notices"][-1]["message_id"] == resent["Message-ID"].strip("<>")

"""A grouped notice's "Rinnova tutte": one link, received over SMTP on loopback, that opens one order for
all the email's mailboxes of one account, and renews them all once the payment is registered."""

from __future__ import annotations

import email
import email.policy
import re
from datetime import date, datetime, time
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select

from tests.support.factories import make_mailbox
from tests.support.link_handler import row_counts
from tests.support.settings import smtp_runtime
from tests.support.web_flow import PRIVATE_HOLDER, post_form, start
from worker.rules.links import GROUP
from worker.services import orders, payments
from worker.services.daily import run_day
from worker.store.models import Account, Mailbox, OutboxMessage, RenewalOrder
from worker.web import create_app

ROME = ZoneInfo("Europe/Rome")
EXPIRY = date(2027, 3, 31)
NOTICE_DAY = date(2026, 12, 31)  # the -3m notice
BASE_URL = "https://rinnovi.example.test"


class Clock:
    def __init__(self, day: date):
        self.now = datetime.combine(day, time(12), ROME)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def runtime(tmp_path, database_url, session_factory, smtp_server):
    rt = smtp_runtime(tmp_path, database_url, session_factory, smtp_server)
    rt.clock = Clock(NOTICE_DAY)
    yield rt
    rt.close()


def add(rt, **kwargs) -> Mailbox:
    with rt.session_factory() as session, session.begin():
        return make_mailbox(session, **kwargs)


def send_notices(rt, day: date = NOTICE_DAY):
    """The day's job for ``day``; the links are signed now, as the relay does (their age counts from then)."""
    return run_day(rt, day)


def bodies(smtp_server):
    for received in smtp_server.messages:
        message = email.message_from_bytes(received.data, policy=email.policy.default)
        yield (
            message,
            message.get_body(("plain",)).get_content(),
            message.get_body(("html",)).get_content(),
        )


def renew_all_links(text: str) -> list[str]:
    return re.findall(r"^Rinnova tutte le \d+ caselle con un unico ordine: (\S+)$", text, flags=re.M)


def test_a_grouped_notice_renews_all_its_mailboxes_in_one_order(runtime, smtp_server, session_factory):
    mailboxes = [
        add(runtime, expires_on=EXPIRY, reference_email="studio@example.it", address=f"{name}@pec.provider.example.it")
        for name in ("amministrazione", "direzione", "segreteria")
    ]
    ids = sorted(mailbox.id for mailbox in mailboxes)
    assert send_notices(runtime).delivery.sent == 1

    ((message, text, html),) = list(bodies(smtp_server))
    (url,) = renew_all_links(text)
    assert url.startswith(f"{BASE_URL}/rinnova/")
    assert f'href="{url}"' in html and ">Rinnova tutte</a>" in html
    assert len(re.findall(r"^Rinnova: ", text, flags=re.M)) == 3  # each mailbox keeps its own link
    link = runtime.signer.read_renewal_token(url.rsplit("/", 1)[1])
    assert (link.target, link.mailbox_ids, link.expires_on) == (GROUP, tuple(ids), EXPIRY)

    client = create_app(runtime).test_client()
    path = url.removeprefix(BASE_URL)
    page = client.get(path).get_data(as_text=True)
    assert all(mailbox.address in page for mailbox in mailboxes)
    order = start(client, path)
    assert start(client, path) == order  # the same link, the same order
    choices = {}
    for mailbox_id in ids:
        choices |= {f"plan-{mailbox_id}": "standard", f"renew-{mailbox_id}": "y"}
    assert post_form(client, f"{order}/caselle", choices).status_code == 303
    assert post_form(client, f"{order}/intestatario", PRIVATE_HOLDER).status_code == 303
    assert post_form(client, f"{order}/modulo", {"method": "bank_transfer", "years": "1"}).status_code == 303
    assert post_form(client, f"{order}/condizioni", {"accept": "y", "approve_clauses": "y"}).status_code == 303
    assert post_form(client, f"{order}/conferma").status_code == 303
    # The order's emails lead back to it with the same link (card and PayPal orders show it).
    with session_factory() as session:
        (stored,) = session.scalars(select(OutboxMessage).where(OutboxMessage.kind == "order-confirmation")).all()
        resume = stored.context["payment"]["resume_link"]
    assert resume == {"target": GROUP, "id": ids[0], "cycle": EXPIRY.isoformat(), "ids": ids}
    resume_url = runtime.signer.url_for(resume["target"], resume["id"], EXPIRY, resume["ids"])
    assert runtime.signer.read_renewal_token(resume_url.rsplit("/", 1)[1]) == link

    with session_factory() as session:
        (row,) = session.scalars(select(RenewalOrder)).all()
        assert row.status == "awaiting_payment"
        assert sorted(line.mailbox_id for line in row.lines if line.selected) == ids
        payments.register_payment(
            session,
            order_number=row.order_number,
            amount_cents=row.total_cents,
            method="bank_transfer",
            reference=f"BONIFICO {row.order_number}",
            now=runtime.clock(),
            today=NOTICE_DAY,
            settings=runtime.settings,
        )
        session.commit()
    with session_factory() as session:
        assert [session.get(Mailbox, mailbox_id).expires_on for mailbox_id in ids] == [date(2028, 3, 31)] * 3
    assert "Rinnovo già effettuato" in client.get(path).get_data(as_text=True)


def test_the_link_opens_only_the_mailboxes_of_that_email(runtime, smtp_server, session_factory):
    """Another holder's mailbox in the same account, with its own reference address, stays out."""
    first = add(runtime, expires_on=EXPIRY, reference_email="studio@example.it", address="a@pec.provider.example.it")
    add(runtime, expires_on=EXPIRY, reference_email="studio@example.it", address="b@pec.provider.example.it")
    other = add(runtime, expires_on=EXPIRY, reference_email="collega@example.it", address="c@pec.provider.example.it")
    with session_factory() as session, session.begin():
        session.get(Mailbox, other.id).account_id = first.account_id
    send_notices(runtime)

    by_recipient = {message["To"]: text for message, text, _html in bodies(smtp_server)}
    assert renew_all_links(by_recipient["collega@example.it"]) == []  # one mailbox: its own link is enough
    (url,) = renew_all_links(by_recipient["studio@example.it"])
    page = create_app(runtime).test_client().get(url.removeprefix(BASE_URL)).get_data(as_text=True)
    assert "a@pec.provider.example.it" in page and "b@pec.provider.example.it" in page
    assert "c@pec.provider.example.it" not in page


def test_mailboxes_of_two_accounts_get_no_renew_all_link(runtime, smtp_server, session_factory):
    first = add(runtime, expires_on=EXPIRY, reference_email="studio@example.it")
    add(runtime, expires_on=EXPIRY, reference_email="studio@example.it")
    with session_factory() as session, session.begin():
        account = Account(login="secondo-account@example.it")
        session.add(account)
        session.flush()
        session.get(Mailbox, first.id).account_id = account.id
    send_notices(runtime)
    ((_message, text, html),) = bodies(smtp_server)
    assert len(re.findall(r"^Rinnova: ", text, flags=re.M)) == 2
    assert renew_all_links(text) == [] and "Rinnova tutte" not in html


def test_an_expired_notice_carries_it_in_english_too(runtime, smtp_server):
    for name in ("one", "two"):
        add(
            runtime,
            expires_on=EXPIRY,
            reference_email="office@example.co.uk",
            address=f"{name}@pec.provider.example.it",
            language="en",
        )
    send_notices(runtime, date(2027, 4, 1))  # +1d
    ((message, text, html),) = bodies(smtp_server)
    assert message["X-PEC-Renewal-Kind"] == "expired-notice"
    (url,) = re.findall(r"^Renew all 2 mailboxes in a single order: (\S+)$", text, flags=re.M)
    assert f'href="{url}"' in html and ">Renew all</a>" in html
    page = create_app(runtime).test_client().get(url.removeprefix(BASE_URL))
    assert page.status_code == 200 and 'method="post"' in page.get_data(as_text=True)


def group_view(runtime, ids, *, today=NOTICE_DAY):
    link = runtime.signer.read_renewal_token(runtime.signer.group_token(ids, EXPIRY))
    with runtime.session_factory() as session:
        return orders.describe_link(session, link, today)


def test_a_group_link_follows_its_mailboxes(runtime, session_factory):
    """Renewed on its own, a mailbox leaves the group's page; all renewed, the link says so; moved to
    another account, the group is no longer one order; past deletion, deleted."""
    ids = [add(runtime, expires_on=EXPIRY, reference_email="studio@example.it").id for _ in range(3)]
    before = row_counts(session_factory)
    view = group_view(runtime, ids)
    assert view.state == orders.LinkState.RENEWABLE and [m.id for m in view.mailboxes] == ids
    assert (
        create_app(runtime).test_client().get("/rinnova/" + runtime.signer.group_token(ids, EXPIRY)).status_code == 200
    )
    assert row_counts(session_factory) == before  # a GET writes nothing

    with session_factory() as session, session.begin():
        session.get(Mailbox, ids[0]).expires_on = date(2028, 3, 31)
    assert [m.id for m in group_view(runtime, ids).mailboxes] == ids[1:]
    with session_factory() as session, session.begin():
        for mailbox_id in ids[1:]:
            session.get(Mailbox, mailbox_id).expires_on = date(2028, 3, 31)
    assert group_view(runtime, ids).state == orders.LinkState.ALREADY_RENEWED

    with session_factory() as session, session.begin():
        for mailbox_id in ids:
            session.get(Mailbox, mailbox_id).expires_on = EXPIRY
        account = Account(login="altro-account@example.it")
        session.add(account)
        session.flush()
        session.get(Mailbox, ids[0]).account_id = account.id
    assert group_view(runtime, ids).state == orders.LinkState.NOT_FOUND

    with session_factory() as session, session.begin():
        session.get(Mailbox, ids[0]).account_id = session.get(Mailbox, ids[1]).account_id
    assert group_view(runtime, ids, today=date(2027, 6, 30)).state == orders.LinkState.DELETED

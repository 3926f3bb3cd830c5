"""An account link renewing several mailboxes in one order, and the unpaid order of a failed auto-renew."""

from __future__ import annotations

from datetime import date, timedelta

from sqlalchemy import select

from tests.support.factories import make_mailbox
from tests.support.link_handler import account_link_path, link_path
from tests.support.web_flow import post_form, start
from worker.services import orders
from worker.store.models import RenewalOrder, RenewalOrderLine

EXPIRY = date(2027, 2, 10)


def test_an_account_order_renews_the_mailboxes_chosen(client, runtime, session_factory):
    with session_factory() as session:
        first = make_mailbox(
            session, expires_on=EXPIRY, reference_email="studio@example.it", address="a@pec.provider.example.it"
        )
        second = make_mailbox(
            session,
            expires_on=EXPIRY + timedelta(days=20),
            reference_email="studio@example.it",
            address="b@pec.provider.example.it",
        )
        session.commit()
        ids = first.id, second.id
        link = account_link_path(runtime, first.account_id, EXPIRY)
    order = start(client, link)
    html = client.get(f"{order}/caselle").get_data(as_text=True)
    assert "a@pec.provider.example.it" in html and "b@pec.provider.example.it" in html
    assert f'name="renew-{ids[0]}"' in html and f'name="renew-{ids[1]}"' in html
    # Leave the second out (an unchecked box is not sent).
    data = {f"plan-{ids[0]}": "standard", f"renew-{ids[0]}": "y", f"plan-{ids[1]}": "standard"}
    assert post_form(client, f"{order}/caselle", data).status_code == 303
    with session_factory() as session:
        lines = {line.mailbox_id: line.selected for line in session.scalars(select(RenewalOrderLine))}
    assert lines == {ids[0]: True, ids[1]: False}
    # None at all is refused.
    response = post_form(client, f"{order}/caselle", {f"plan-{ids[0]}": "standard", f"plan-{ids[1]}": "standard"})
    assert response.status_code == 422
    assert "almeno una casella" in response.get_data(as_text=True)


def test_the_unpaid_order_of_a_failed_auto_renew_can_be_paid_by_any_method(client, runtime, session_factory, clock):
    with session_factory() as session:
        mailbox = make_mailbox(
            session, expires_on=EXPIRY, auto_renew=True, payment_method="pm_card_chargeDeclined", plan="pro"
        )
        session.flush()
        orders.create_unpaid_renewal_order(session, mailbox, 1, clock(), clock.today)
        session.commit()
        link = link_path(runtime, mailbox)
    html = client.get(link).get_data(as_text=True)
    assert 'method="post"' in html and "Rinnovo automatico attivo" not in html
    order = start(client, link)
    # Confirmed already, but without a method: the order form comes first.
    response = client.get(order)
    assert response.status_code == 303 and response.headers["Location"].endswith("/modulo")
    assert post_form(client, f"{order}/modulo", {"method": "bank_transfer", "years": "1"}).status_code == 303
    html = client.get(order, follow_redirects=True).get_data(as_text=True)
    assert "Ordine confermato" in html and runtime.settings.bank_iban in html
    with session_factory() as session:
        row = session.scalar(select(RenewalOrder))
        assert row.status == "awaiting_payment" and row.payment_method == "bank_transfer"

"""The pages of a confirmed order's life: another method (after a decline too), a cancel, a new start."""

from __future__ import annotations

from datetime import date

from sqlalchemy import func, select

from tests.support.factories import make_mailbox
from tests.support.link_handler import assert_security_headers, csrf_token, link_path, row_counts
from tests.support.web_flow import post_form, start, walk_to_confirm
from worker.store.models import OutboxMessage, RenewalOrder

EXPIRY = date(2027, 2, 10)


def confirmed(client, runtime, session_factory, method: str) -> tuple[str, int, str]:
    """A confirmed order of a new mailbox: (order path, mailbox id, link path)."""
    with session_factory() as session:
        mailbox = make_mailbox(session, expires_on=EXPIRY, plan="pro")
        session.commit()
        mailbox_id, link = mailbox.id, link_path(runtime, mailbox)
    order = start(client, link)
    walk_to_confirm(client, order, mailbox_id, plan="pro", method=method)
    assert post_form(client, f"{order}/conferma").status_code == 303
    return order, mailbox_id, link


def order_row(session_factory, public_id_path: str) -> RenewalOrder:
    with session_factory() as session:
        return session.scalar(select(RenewalOrder).where(RenewalOrder.public_id == public_id_path.rsplit("/", 1)[1]))


def test_the_new_pages_change_nothing_on_get(client, runtime, session_factory):
    order, _mailbox_id, link = confirmed(client, runtime, session_factory, "card")
    before = row_counts(session_factory)
    for path in (order, f"{order}/metodo", f"{order}/annulla", f"{order}/pagamento", link):
        response = client.get(path)
        assert response.status_code == 200, path
        assert_security_headers(response)
    assert client.get(f"{order}/nuovo").status_code == 405  # POST only
    assert row_counts(session_factory) == before
    with session_factory() as session:
        assert session.scalar(select(RenewalOrder.status)) == "awaiting_payment"


def test_after_a_decline_the_checkout_offers_every_method_and_a_bank_transfer_follows(client, runtime, session_factory):
    order, _mailbox_id, _link = confirmed(client, runtime, session_factory, "card")
    html = client.get(f"{order}/pagamento").get_data(as_text=True)
    client.post(f"{order}/pagamento", data={"csrf_token": csrf_token(html), "payment_token": "pm_card_chargeDeclined"})
    html = client.get(f"{order}/pagamento").get_data(as_text=True)
    assert "rifiutato" in html
    for label in ("Carta di credito", "PayPal", "Bonifico bancario", "Bollettino postale"):
        assert label in html, label
    assert f'action="{order}/metodo"' in html
    # "Torna all'ordine" leads to the same choice.
    status_page = client.get(order).get_data(as_text=True)
    assert f"{order}/metodo" in status_page and f"{order}/annulla" in status_page

    response = client.post(f"{order}/metodo", data={"csrf_token": csrf_token(html), "method": "bank_transfer"})
    assert response.status_code == 303 and response.headers["Location"] == order
    page = client.get(order).get_data(as_text=True)
    assert runtime.settings.bank_iban in page and "Pagamento con bonifico bancario" in page
    row = order_row(session_factory, order)
    assert (row.payment_method, row.status, row.method_changes) == ("bank_transfer", "awaiting_payment", 1)
    with session_factory() as session:
        contexts = session.scalars(
            select(OutboxMessage.context).where(OutboxMessage.kind == "order-confirmation").order_by(OutboxMessage.id)
        ).all()
    assert [context["order"]["method"] for context in contexts] == ["card", "bank_transfer"]
    # The checkout of a bank-transfer order goes back to the order.
    assert client.get(f"{order}/pagamento").status_code == 303


def test_a_change_of_method_needs_csrf_and_an_offered_method(client, runtime, session_factory):
    order, _mailbox_id, _link = confirmed(client, runtime, session_factory, "bank_transfer")
    before = row_counts(session_factory)
    assert client.post(f"{order}/metodo", data={"method": "card"}).status_code == 400
    assert post_form(client, f"{order}/metodo", {"method": "cash"}).status_code == 422
    assert row_counts(session_factory) == before
    response = post_form(client, f"{order}/metodo", {"method": "card"})
    assert response.status_code == 303 and response.headers["Location"] == f"{order}/pagamento"


def test_a_cancel_then_a_new_order_from_the_same_link(client, runtime, session_factory):
    order, mailbox_id, link = confirmed(client, runtime, session_factory, "bank_transfer")
    page = client.get(f"{order}/annulla").get_data(as_text=True)
    assert "non esegua bonifici" in page
    assert client.post(f"{order}/annulla", data={}).status_code == 400  # no CSRF token: nothing changes
    assert order_row(session_factory, order).status == "awaiting_payment"
    response = post_form(client, f"{order}/annulla")
    assert response.status_code == 303 and response.headers["Location"] == order
    page = client.get(order).get_data(as_text=True)
    assert "Ordine annullato" in page and "Inizia un nuovo ordine" in page
    assert order_row(session_factory, order).status == "cancelled"
    assert client.get(f"{order}/annulla").status_code == 303  # nothing more to cancel

    # The Rinnova link offers a new order; so does the cancelled order's page.
    assert "Rinnova" in client.get(link).get_data(as_text=True)
    response = client.post(f"{order}/nuovo", data={"csrf_token": csrf_token(page)})
    assert response.status_code == 303
    new_order = response.headers["Location"]
    assert new_order != order and client.get(new_order).headers["Location"].endswith("/caselle")
    with session_factory() as session:
        assert session.scalar(select(func.count()).select_from(RenewalOrder)) == 2
        assert sorted(session.scalars(select(RenewalOrder.status))) == ["cancelled", "draft"]
    walk_to_confirm(client, new_order, mailbox_id, plan="pro", method="bank_transfer")
    assert post_form(client, f"{new_order}/conferma").status_code == 303


def test_the_link_page_shows_the_order_awaiting_payment_and_how_to_pay(app, client, runtime, session_factory):
    order, _mailbox_id, link = confirmed(client, runtime, session_factory, "postal_slip")
    number = order_row(session_factory, order).order_number
    other = app.test_client()  # the phone's mail app: no session
    html = other.get(link).get_data(as_text=True)
    assert "Ordine in attesa di pagamento" in html and number in html
    assert runtime.settings.postal_account in html and "Vai all&#39;ordine" in html
    response = post_form(other, link)
    assert response.status_code == 303 and response.headers["Location"] == order
    page = other.get(order).get_data(as_text=True)
    assert f"{order}/metodo" in page and f"{order}/annulla" in page


def test_another_browser_cannot_cancel(app, client, runtime, session_factory):
    order, _mailbox_id, _link = confirmed(client, runtime, session_factory, "bank_transfer")
    other = app.test_client()
    assert other.get(f"{order}/annulla").status_code == 404
    assert other.post(f"{order}/annulla", data={}).status_code in (400, 404)
    assert order_row(session_factory, order).status == "awaiting_payment"


def test_a_new_order_after_cancelling_a_rinnova_tutte_order_keeps_its_mailboxes(client, runtime, session_factory):
    with session_factory() as session:
        first = make_mailbox(session, expires_on=EXPIRY, reference_email="studio@example.it")
        second = make_mailbox(session, expires_on=EXPIRY, reference_email="studio@example.it")
        make_mailbox(session, expires_on=EXPIRY, reference_email="studio@example.it")  # not in the notice
        session.commit()
        ids = (first.id, second.id)
    link = "/rinnova/" + runtime.signer.group_token(ids, EXPIRY)
    order = start(client, link)
    assert post_form(client, f"{order}/annulla").status_code == 303
    page = client.get(order).get_data(as_text=True)
    response = client.post(f"{order}/nuovo", data={"csrf_token": csrf_token(page)})
    assert response.status_code == 303 and response.headers["Location"] != order
    with session_factory() as session:
        new = session.scalar(select(RenewalOrder).where(RenewalOrder.status == "draft"))
        assert new.link_target == "g" and sorted(line.mailbox_id for line in new.lines) == sorted(ids)

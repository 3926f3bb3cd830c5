"""The terms step's two approvals, what step 5 and the confirmed page show, and the pages' wording
(one support instruction, advice that fits the date, a failed charge named, the methods still in time)."""

from __future__ import annotations

import html as html_module
from datetime import date

import pytest
from sqlalchemy import select

from tests.support.factories import make_mailbox
from tests.support.link_handler import csrf_token, link_path, row_counts
from tests.support.web_flow import PRIVATE_HOLDER, post_form, start, walk_to_confirm
from worker.services import orders
from worker.store.models import RenewalOrder

EXPIRY = date(2027, 2, 10)  # the clock stands at 2027-01-10
COMPANY_HOLDER = dict(
    PRIVATE_HOLDER,
    kind="company",
    name="Rossi Costruzioni S.r.l.",
    tax_code="",
    vat_number="01114601006",
    einvoice_code="ABC1234",
    postal_address="Via dei Mille 12, 20121 Milano",
)
PUBLIC_HOLDER = dict(
    PRIVATE_HOLDER,
    kind="public_administration",
    name="Comune di Prova",
    tax_code="01114601006",
    einvoice_code="UF1234",
    cig="ABCDE12345",
    cup="A12B34567890123",
)


@pytest.fixture
def mailbox(session_factory):
    with session_factory() as session:
        mailbox = make_mailbox(session, expires_on=EXPIRY, plan="pro", address="ufficio@pec.rossi.example.it")
        session.commit()
        session.expunge(mailbox)
        return mailbox


def text_of(response) -> str:
    return html_module.unescape(response.get_data(as_text=True))


def to_terms(client, runtime, mailbox) -> str:
    order = start(client, link_path(runtime, mailbox))
    post_form(client, f"{order}/caselle", {f"plan-{mailbox.id}": "pro"})
    post_form(client, f"{order}/intestatario", PRIVATE_HOLDER)
    post_form(client, f"{order}/modulo", {"method": "bank_transfer", "years": "2"})
    return order


def test_the_terms_step_links_the_documents_and_lists_the_clauses(client, runtime, mailbox):
    order = to_terms(client, runtime, mailbox)
    page = text_of(client.get(f"{order}/condizioni"))
    settings = runtime.settings
    assert f'href="{settings.terms_url}"' in page and f'href="{settings.manual_url}"' in page
    assert "artt. 1341 e 1342 c.c." in page
    for clause in settings.unfair_terms_clauses:
        assert clause in page
    assert 'name="accept"' in page and 'name="approve_clauses"' in page


@pytest.mark.parametrize(
    "data, missing",
    [
        ({"accept": "y"}, "approve_clauses"),
        ({"approve_clauses": "y"}, "accept"),
        ({}, "accept"),
    ],
)
def test_both_approvals_are_required(client, runtime, session_factory, mailbox, data, missing):
    order = to_terms(client, runtime, mailbox)
    response = post_form(client, f"{order}/condizioni", data)
    assert response.status_code == 422
    assert f'id="{missing}-error"' in response.get_data(as_text=True)
    assert client.get(f"{order}/conferma").headers["Location"].endswith("/condizioni")
    with session_factory() as session:
        row = session.scalar(select(RenewalOrder))
        assert row.terms_accepted_at is None and row.unfair_terms_approved_at is None


def test_both_approvals_are_recorded_with_their_time(client, runtime, session_factory, clock, mailbox):
    order = to_terms(client, runtime, mailbox)
    response = post_form(client, f"{order}/condizioni", {"accept": "y", "approve_clauses": "y"})
    assert response.status_code == 303 and response.headers["Location"].endswith("/conferma")
    with session_factory() as session:
        row = session.scalar(select(RenewalOrder))
        assert row.terms_accepted_at == row.unfair_terms_approved_at == clock()


def test_the_terms_step_refuses_a_post_without_its_csrf_token(client, runtime, session_factory, mailbox):
    order = to_terms(client, runtime, mailbox)
    before = row_counts(session_factory)
    response = client.post(f"{order}/condizioni", data={"accept": "y", "approve_clauses": "y"})
    assert response.status_code == 400
    assert row_counts(session_factory) == before
    with session_factory() as session:
        assert session.scalar(select(RenewalOrder.unfair_terms_approved_at)) is None


def test_the_service_refuses_a_missing_clause_approval(session_factory, runtime, clock, mailbox):
    with session_factory() as session:
        from_link = runtime.signer.read_renewal_token(link_path(runtime, mailbox).rsplit("/", 1)[1])
        order = orders.start_order(session, from_link, clock.today, clock())
        with pytest.raises(orders.OrderValidationError) as refused:
            orders.accept_terms(session, order, clock(), accepted=True, clauses_approved=False)
        assert set(refused.value.errors) == {"clauses"}
        assert "1341" in refused.value.errors["clauses"]


def test_step_5_shows_the_new_expiry_and_every_billing_detail_of_a_company(client, runtime, mailbox):
    order = start(client, link_path(runtime, mailbox))
    walk_to_confirm(client, order, mailbox.id, plan="pro", years="2", holder=COMPANY_HOLDER)
    page = text_of(client.get(f"{order}/conferma"))
    assert "ufficio@pec.rossi.example.it" in page
    assert "10 febbraio 2029" in page  # 10 February 2027 plus two years
    for value in ("Rossi Costruzioni S.r.l.", "Azienda", "01114601006", "ABC1234", "Via dei Mille 12, 20121 Milano"):
        assert value in page, value
    assert "Partita IVA" in page and "Codice destinatario SDI" in page


def test_step_5_shows_the_office_code_cig_and_cup_of_a_public_body(client, runtime, mailbox):
    order = start(client, link_path(runtime, mailbox))
    walk_to_confirm(client, order, mailbox.id, plan="pro", holder=PUBLIC_HOLDER)
    page = text_of(client.get(f"{order}/conferma"))
    for value in (
        "Codice univoco ufficio",
        "UF1234",
        "CIG",
        "ABCDE12345",
        "CUP",
        "A12B34567890123",
        "10 febbraio 2028",
    ):
        assert value in page, value


@pytest.mark.parametrize(
    "method, instructions",
    [
        ("postal_slip", ("Conto corrente postale n.", "001234567890", "Provider PEC S.p.A.")),
        ("bank_transfer", ("IT60X0542811101000000123456", "Provider PEC S.p.A.")),
    ],
)
def test_the_confirmed_page_shows_the_new_expiry_and_every_payment_instruction(
    client, runtime, mailbox, method, instructions
):
    order = start(client, link_path(runtime, mailbox))
    walk_to_confirm(client, order, mailbox.id, plan="pro", method=method)
    confirm = client.get(f"{order}/conferma")
    client.post(f"{order}/conferma", data={"csrf_token": csrf_token(confirm.get_data(as_text=True))})
    page = text_of(client.get(order))
    assert "Ordine confermato" in page
    assert "Nuova scadenza" in page and "10 febbraio 2028" in page
    with runtime.session_factory() as session:
        number = session.scalar(select(RenewalOrder.order_number))
    for value in (*instructions, number, "30,50\u00a0€"):
        assert value in page, value


# -- Wording -----------------------------------------------------------------------------------------


def test_every_page_gives_the_support_page_and_never_asks_for_a_reply(client, runtime, mailbox):
    for path in ("/", link_path(runtime, mailbox)):
        page = text_of(client.get(path))
        assert runtime.settings.support_url in page
        assert "risponda all'email" not in page and "reply to the notice" not in page


def test_an_expired_mailbox_page_gives_no_15_day_advice(client, runtime, session_factory):
    with session_factory() as session:
        expired = make_mailbox(session, expires_on=date(2026, 12, 20))
        session.commit()
        link = link_path(runtime, expired)
    page = text_of(client.get(link))
    assert "15 giorni" not in page
    assert "prima della cancellazione" in page


def test_a_page_15_days_or_more_before_expiry_keeps_the_advice(client, runtime, mailbox):
    assert "almeno 15 giorni prima della scadenza" in text_of(client.get(link_path(runtime, mailbox)))


def test_the_page_after_a_failed_charge_on_the_expiry_day_names_the_charge_and_its_order(
    client, runtime, session_factory, clock
):
    with session_factory() as session:
        mailbox = make_mailbox(
            session, expires_on=clock.today, auto_renew=True, payment_method="pm_card_chargeDeclined", plan="pro"
        )
        session.flush()
        order = orders.create_unpaid_renewal_order(session, mailbox, 1, clock(), clock.today)
        number = order.order_number
        session.commit()
        link = link_path(runtime, mailbox)
    page = text_of(client.get(link))
    assert number and number in page
    assert "addebito automatico per il rinnovo non è riuscito" in page
    assert "rinnovo automatico non riuscito" in page and "rinnovo automatico attivo" not in page
    # The order awaits payment: the page leads to it, and gives no advice about 15 days ahead.
    assert "15 giorni" not in page and "Ordine in attesa di pagamento" in page and "Vai all'ordine" in page


def test_a_method_too_late_names_the_bank_transfer_while_it_is_offered(client, runtime, session_factory, clock):
    with session_factory() as session:
        late = make_mailbox(session, expires_on=date(2026, 10, 20))
        session.commit()
        late_id, link = late.id, link_path(runtime, late)
    clock.today = date(2027, 1, 17)  # deleted on 19 January: a postal slip is too late, a transfer is not
    order = start(client, link)
    post_form(client, f"{order}/caselle", {f"plan-{late_id}": "standard"})
    post_form(client, f"{order}/intestatario", PRIVATE_HOLDER)
    page = text_of(client.get(f"{order}/modulo"))
    assert 'value="bank_transfer"' in page
    assert "Scelga carta di credito, PayPal o bonifico bancario." in page
    assert "Scelga carta di credito o PayPal." not in page

"""The order steps: forms, validation next to the field, CSRF, the session, idempotent confirmation."""

from __future__ import annotations

import re
from datetime import date

import pytest
from sqlalchemy import func, select

from tests.support.factories import make_mailbox
from tests.support.link_handler import assert_security_headers, csrf_token, link_path, row_counts
from tests.support.tokens import tampered
from tests.support.web_flow import PRIVATE_HOLDER, post_form, start, walk_to_confirm
from worker.store.models import OutboxMessage, RenewalOrder

EXPIRY = date(2027, 2, 10)


@pytest.fixture
def mailbox(session_factory):
    with session_factory() as session:
        mailbox = make_mailbox(session, expires_on=EXPIRY, plan="pro", address="mario@pec.provider.example.it")
        mailbox.used_space_mb = 500
        session.commit()
        session.expunge(mailbox)
        return mailbox


def orders_count(session_factory) -> int:
    with session_factory() as session:
        return session.scalar(select(func.count()).select_from(RenewalOrder))


def test_the_whole_flow_with_a_bank_transfer(client, runtime, session_factory, mailbox):
    link = link_path(runtime, mailbox)
    order = start(client, link)
    assert "rinnova" not in order
    assert orders_count(session_factory) == 1
    # Every step page: headers, no-store, steps shown.
    page = client.get(f"{order}/caselle")
    assert page.status_code == 200
    assert_security_headers(page)
    html = page.get_data(as_text=True)
    assert "Gestione caselle PEC" in html and "mario@pec.provider.example.it" in html
    walk_to_confirm(client, order, mailbox.id, plan="pro", years="2")
    page = client.get(f"{order}/conferma")
    html = page.get_data(as_text=True)
    assert "Conferma e completa l&#39;ordine" in html
    assert "IVA 22%" in html
    # Double click: two POSTs with the same form.
    token = csrf_token(html)
    first = client.post(f"{order}/conferma", data={"csrf_token": token})
    second = client.post(f"{order}/conferma", data={"csrf_token": token})
    assert first.status_code == second.status_code == 303
    assert first.headers["Location"] == second.headers["Location"] == order
    assert orders_count(session_factory) == 1
    with session_factory() as session:
        row = session.scalar(select(RenewalOrder))
        assert row.status == "awaiting_payment" and re.fullmatch(r"PEC-\d{4}-\d{6,}", row.order_number)
        number = row.order_number
        emails = session.scalars(select(OutboxMessage).where(OutboxMessage.kind == "order-confirmation")).all()
        assert len(emails) == 1
    confirmation = client.get(order)
    html = confirmation.get_data(as_text=True)
    assert confirmation.status_code == 200
    assert number in html and runtime.settings.bank_iban in html
    assert "Ordine confermato" in html
    # Starting again from the link gives the same order (now confirmed).
    again = post_form(client, link)
    assert again.status_code == 303 and again.headers["Location"] == order
    assert orders_count(session_factory) == 1
    # Steps of a confirmed order cannot be changed.
    response = client.get(f"{order}/caselle")
    assert response.status_code == 303 and response.headers["Location"] == order


def test_a_second_post_of_the_link_gives_the_same_order(client, runtime, session_factory, mailbox):
    link = link_path(runtime, mailbox)
    html = client.get(link).get_data(as_text=True)
    token = csrf_token(html)
    first = client.post(link, data={"csrf_token": token})
    second = client.post(link, data={"csrf_token": token})
    assert first.headers["Location"] == second.headers["Location"]
    assert orders_count(session_factory) == 1


def test_an_order_not_in_this_browser_session_is_a_404(app, runtime, session_factory, mailbox):
    owner, stranger = app.test_client(), app.test_client()
    order = start(owner, link_path(runtime, mailbox))
    for path in (order, f"{order}/caselle", f"{order}/intestatario", f"{order}/conferma", f"{order}/pagamento"):
        response = stranger.get(path)
        assert response.status_code == 404, path
        assert_security_headers(response)
    # A forged session cookie is ignored.
    stranger.set_cookie("pec_rinnovo", tampered(owner.get_cookie("pec_rinnovo").value))
    assert stranger.get(order).status_code == 404


def test_steps_cannot_be_skipped(client, runtime, mailbox):
    order = start(client, link_path(runtime, mailbox))
    for step in ("intestatario", "modulo", "condizioni", "conferma"):
        response = client.get(f"{order}/{step}")
        assert response.status_code == 303 and response.headers["Location"].endswith("/caselle")


def test_downgrade_to_standard_needs_the_archive_deletion_confirmed(client, runtime, session_factory, mailbox):
    order = start(client, link_path(runtime, mailbox))
    html = client.get(f"{order}/caselle").get_data(as_text=True)
    assert "archivio di questa casella verrà cancellato" in html
    response = post_form(client, f"{order}/caselle", {f"plan-{mailbox.id}": "standard"})
    assert response.status_code == 422
    html = response.get_data(as_text=True)
    assert "archivio" in html and 'class="field-error"' in html
    response = post_form(
        client, f"{order}/caselle", {f"plan-{mailbox.id}": "standard", f"confirm_archive_deletion-{mailbox.id}": "y"}
    )
    assert response.status_code == 303


def test_used_space_that_does_not_fit_asks_for_extra_gb_or_to_free_space(client, runtime, session_factory):
    with session_factory() as session:
        full = make_mailbox(session, expires_on=EXPIRY, plan="pro")
        full.used_space_mb = 1500
        fuller = make_mailbox(session, expires_on=EXPIRY, plan="pro")
        fuller.used_space_mb = 2500
        session.commit()
        full_id, fuller_id = full.id, fuller.id
        full_link, fuller_link = link_path(runtime, full), link_path(runtime, fuller)
    order = start(client, full_link)
    response = post_form(
        client, f"{order}/caselle", {f"plan-{full_id}": "standard", f"confirm_archive_deletion-{full_id}": "y"}
    )
    assert response.status_code == 422
    assert "spazio aggiuntivo" in response.get_data(as_text=True)
    response = post_form(
        client,
        f"{order}/caselle",
        {f"plan-{full_id}": "standard", f"confirm_archive_deletion-{full_id}": "y", f"extra_space_gb-{full_id}": "1"},
    )
    assert response.status_code == 303
    order = start(client, fuller_link)
    response = post_form(
        client,
        f"{order}/caselle",
        {
            f"plan-{fuller_id}": "standard",
            f"confirm_archive_deletion-{fuller_id}": "y",
            f"extra_space_gb-{fuller_id}": "1",
        },
    )
    assert response.status_code == 422
    assert "Liberi spazio" in response.get_data(as_text=True)


@pytest.mark.parametrize(
    "data, field",
    [
        ({"plan-{id}": "gold"}, "plan"),
        ({"plan-{id}": "pro", "extra_space_gb-{id}": "-1"}, "extra_space_gb"),
        ({"plan-{id}": "pro", "extra_space_gb-{id}": "abc"}, "extra_space_gb"),
        ({"plan-{id}": "pro", "extra_archive_gb-{id}": "1e9"}, "extra_archive_gb"),
        (
            {"plan-{id}": "standard", "confirm_archive_deletion-{id}": "y", "extra_archive_gb-{id}": "3"},
            "extra_archive_gb",
        ),
    ],
)
def test_bad_mailbox_choices_are_refused_next_to_the_field(client, runtime, session_factory, mailbox, data, field):
    order = start(client, link_path(runtime, mailbox))
    before = row_counts(session_factory)
    response = post_form(client, f"{order}/caselle", {key.format(id=mailbox.id): value for key, value in data.items()})
    assert response.status_code == 422
    html = response.get_data(as_text=True)
    assert re.search(rf'id="{field}-{mailbox.id}-error"', html) or field == "plan" and 'class="field-error"' in html
    assert row_counts(session_factory) == before


def test_holder_data_is_checked_with_messages_next_to_the_fields(client, runtime, session_factory, mailbox):
    order = start(client, link_path(runtime, mailbox))
    post_form(client, f"{order}/caselle", {f"plan-{mailbox.id}": "pro"})
    page = client.get(f"{order}/intestatario").get_data(as_text=True)
    assert "Mario Rossi" in page  # pre-filled from the holder
    bad = dict(PRIVATE_HOLDER, kind="company", tax_code="RSSMRA80A01H501X", vat_number="12345678901", einvoice_code="")
    response = post_form(client, f"{order}/intestatario", bad)
    assert response.status_code == 422
    html = response.get_data(as_text=True)
    for field in ("tax_code", "vat_number", "einvoice_code"):
        assert f'id="{field}-error"' in html, field
    good = dict(
        PRIVATE_HOLDER,
        kind="company",
        name="Rossi S.r.l.",
        tax_code="",
        vat_number="01114601006",
        einvoice_code="ABC1234",
    )
    response = post_form(client, f"{order}/intestatario", good)
    assert response.status_code == 303


def test_public_administration_needs_an_office_code_and_may_give_cig_and_cup(client, runtime, mailbox):
    order = start(client, link_path(runtime, mailbox))
    post_form(client, f"{order}/caselle", {f"plan-{mailbox.id}": "pro"})
    holder = dict(
        PRIVATE_HOLDER,
        kind="public_administration",
        name="Comune di Prova",
        tax_code="01114601006",
        einvoice_code="ABC1234",
    )
    response = post_form(client, f"{order}/intestatario", holder)
    assert response.status_code == 422 and 'id="einvoice_code-error"' in response.get_data(as_text=True)
    holder.update(einvoice_code="UF1234", cig="ABCDE12345", cup="A12B34567890123")
    assert post_form(client, f"{order}/intestatario", holder).status_code == 303


@pytest.mark.parametrize(
    "field, value",
    [
        ("name", "Mario\r\nBcc: x@evil.example"),
        ("name", "x" * 5000),
        ("name", "Mario\u202eRossi"),
        ("name", "Mario\ufffd"),
        ("reference_email", "mario@exаmple.it"),  # Cyrillic а
        ("tax_code", "ＲＳＳＭＲＡ８０Ａ０１Ｈ５０１Ｕ"),  # fullwidth
        ("vat_number", "٠١١١٤٦٠١٠٠٦"),  # Arabic-Indic digits
        ("postal_address", "<script>alert(1)</script>\x00"),
    ],
)
def test_hostile_holder_input_is_refused_and_nothing_is_stored(client, runtime, session_factory, mailbox, field, value):
    order = start(client, link_path(runtime, mailbox))
    post_form(client, f"{order}/caselle", {f"plan-{mailbox.id}": "pro"})
    before = row_counts(session_factory)
    with session_factory() as session:
        holder_before = session.scalar(select(RenewalOrder.holder_data))
    response = post_form(client, f"{order}/intestatario", dict(PRIVATE_HOLDER, **{field: value}))
    assert response.status_code == 422
    html = response.get_data(as_text=True)
    assert f'id="{field}-error"' in html
    assert "<script>alert" not in html
    assert row_counts(session_factory) == before
    with session_factory() as session:
        assert session.scalar(select(RenewalOrder.holder_data)) == holder_before


def test_script_in_a_valid_field_is_stored_as_text_and_escaped(client, runtime, session_factory, mailbox):
    order = start(client, link_path(runtime, mailbox))
    post_form(client, f"{order}/caselle", {f"plan-{mailbox.id}": "pro"})
    response = post_form(client, f"{order}/intestatario", dict(PRIVATE_HOLDER, name="<img src=x onerror=alert(1)>"))
    assert response.status_code == 303
    html = client.get(f"{order}/intestatario").get_data(as_text=True)
    assert "<img src=x" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html


def test_payment_step_shows_the_price_and_refuses_bad_choices(client, runtime, session_factory, mailbox):
    order = start(client, link_path(runtime, mailbox))
    post_form(client, f"{order}/caselle", {f"plan-{mailbox.id}": "pro"})
    post_form(client, f"{order}/intestatario", PRIVATE_HOLDER)
    html = client.get(f"{order}/modulo").get_data(as_text=True)
    for label in ("Carta di credito", "PayPal", "Bonifico bancario", "Bollettino postale"):
        assert label in html
    assert "rinnovo automatico" in html
    assert "25,00\u00a0€" in html and "5,50\u00a0€" in html and "30,50\u00a0€" in html  # Pro, 22% VAT, total
    for data in (
        {"method": "bitcoin", "years": "1"},
        {"method": "card", "years": "6"},
        {"method": "card", "years": "0"},
        {"method": "card"},
    ):
        response = post_form(client, f"{order}/modulo", data)
        assert response.status_code == 422, data
        assert 'class="field-error"' in response.get_data(as_text=True)
    assert post_form(client, f"{order}/modulo", {"method": "card", "years": "5"}).status_code == 303
    assert "152,50\u00a0€" in client.get(f"{order}/modulo").get_data(as_text=True)  # 5 years


def test_promo_mailboxes_renew_for_one_or_two_years(client, runtime, session_factory):
    with session_factory() as session:
        promo = make_mailbox(session, expires_on=EXPIRY)
        promo.promo = True
        session.commit()
        promo_id, link = promo.id, link_path(runtime, promo)
    order = start(client, link)
    post_form(client, f"{order}/caselle", {f"plan-{promo_id}": "standard"})
    post_form(client, f"{order}/intestatario", PRIVATE_HOLDER)
    html = client.get(f"{order}/modulo").get_data(as_text=True)
    assert '<option value="2">' in html and '<option value="3">' not in html
    assert post_form(client, f"{order}/modulo", {"method": "bank_transfer", "years": "3"}).status_code == 422


def test_slow_methods_are_not_offered_close_to_deletion(client, runtime, session_factory, clock):
    with session_factory() as session:
        late = make_mailbox(session, expires_on=date(2026, 10, 20))
        session.commit()
        late_id, link = late.id, link_path(runtime, late)
    clock.today = date(2027, 1, 17)  # deletion on 2027-01-19: a postal slip would be registered too late
    order = start(client, link)
    post_form(client, f"{order}/caselle", {f"plan-{late_id}": "standard"})
    post_form(client, f"{order}/intestatario", PRIVATE_HOLDER)
    html = client.get(f"{order}/modulo").get_data(as_text=True)
    assert 'value="postal_slip"' not in html
    assert post_form(client, f"{order}/modulo", {"method": "postal_slip", "years": "1"}).status_code == 422


def test_terms_must_be_accepted(client, runtime, mailbox):
    order = start(client, link_path(runtime, mailbox))
    post_form(client, f"{order}/caselle", {f"plan-{mailbox.id}": "pro"})
    post_form(client, f"{order}/intestatario", PRIVATE_HOLDER)
    post_form(client, f"{order}/modulo", {"method": "bank_transfer", "years": "1"})
    response = post_form(client, f"{order}/condizioni", {})
    assert response.status_code == 422
    assert 'id="accept-error"' in response.get_data(as_text=True)
    assert client.get(f"{order}/conferma").headers["Location"].endswith("/condizioni")


def test_every_step_refuses_a_post_without_its_csrf_token(client, runtime, session_factory, mailbox):
    order = start(client, link_path(runtime, mailbox))
    walk_to_confirm(client, order, mailbox.id, plan="pro")
    before = row_counts(session_factory)
    for step in ("caselle", "intestatario", "modulo", "condizioni", "conferma"):
        assert client.post(f"{order}/{step}", data={"accept": "y"}).status_code == 400, step
    assert row_counts(session_factory) == before
    with session_factory() as session:
        assert session.scalar(select(RenewalOrder.status)) == "draft"


def test_auto_renew_mailbox_can_only_renew_with_a_plan_change(client, runtime, session_factory):
    with session_factory() as session:
        auto = make_mailbox(session, expires_on=EXPIRY, auto_renew=True, payment_method="pm_card_visa", plan="pro")
        session.commit()
        auto_id, link = auto.id, link_path(runtime, auto)
    order = start(client, link)
    response = post_form(client, f"{order}/caselle", {f"plan-{auto_id}": "pro"})
    assert response.status_code == 422
    assert "rinnovo automatico" in response.get_data(as_text=True)
    assert post_form(client, f"{order}/caselle", {f"plan-{auto_id}": "premium"}).status_code == 303


def test_a_link_that_cannot_start_an_order_redirects_to_its_page(client, runtime, session_factory):
    with session_factory() as session:
        on_domain = make_mailbox(session, expires_on=EXPIRY, domain="bianchi.it")
        session.commit()
        link = link_path(runtime, on_domain)
    html = client.get(link).get_data(as_text=True)
    assert 'method="post"' not in html
    # A crafted POST (with a valid CSRF token from another page) starts nothing.
    with session_factory() as session:
        other = make_mailbox(session, expires_on=EXPIRY)
        session.commit()
        token = csrf_token(client.get(link_path(runtime, other)).get_data(as_text=True))
    before = row_counts(session_factory)
    response = client.post(link, data={"csrf_token": token})
    assert response.status_code == 303 and response.headers["Location"] == link
    assert row_counts(session_factory) == before


def test_english_holder_gets_english_steps(client, runtime, session_factory):
    with session_factory() as session:
        english = make_mailbox(session, expires_on=EXPIRY, language="en")
        session.commit()
        english_id, link = english.id, link_path(runtime, english)
    order = start(client, link)
    html = client.get(f"{order}/caselle").get_data(as_text=True)
    assert "PEC mailboxes" in html and 'lang="en"' in html
    response = post_form(client, f"{order}/caselle", {f"plan-{english_id}": "gold"})
    assert "Not a valid choice" in response.get_data(as_text=True)


PA_HOLDER = {
    "name": "Comune di Esempio",
    "kind": "public_administration",
    "reference_email": "protocollo@comune.example.it",
    "tax_code": "80012340016",
    "vat_number": "",
    "postal_address": "Piazza del Municipio 1, 00100 Roma",
    "einvoice_code": "UFE7HK",
    "cig": "",
    "cup": "",
}


def test_a_public_administration_is_asked_the_taxable_amount_under_split_payment(
    client, runtime, session_factory, mailbox
):
    order = start(client, link_path(runtime, mailbox))
    walk_to_confirm(client, order, mailbox.id, plan="pro", years="1", holder=PA_HOLDER)
    html = client.get(f"{order}/conferma").get_data(as_text=True)
    split_vat = "IVA 22% (scissione dei pagamenti: la versa l&#39;ente all&#39;Erario)"
    assert split_vat in html
    assert re.search(r'<tr class="total"><td>Totale</td><td class="amount">25,00\s€</td></tr>', html)
    post_form(client, f"{order}/conferma")
    with session_factory() as session:
        row = session.scalar(select(RenewalOrder))
        assert (row.status, row.subtotal_cents, row.vat_cents, row.total_cents) == ("awaiting_payment", 2500, 550, 2500)
    html = client.get(order).get_data(as_text=True)
    assert split_vat in html and "30,50" not in html

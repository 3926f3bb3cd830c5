"""The order forms under attack: CSRF on every POST, double submits and replays that make one order
and one payment, and hostile input that is escaped everywhere it is shown or refused whole."""

from __future__ import annotations

import email
import email.policy
import re
from datetime import date
from html import unescape

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from markupsafe import escape
from sqlalchemy import func, select

from tests.support.factories import make_mailbox
from tests.support.link_handler import assert_security_headers, csrf_token, link_path, row_counts
from tests.support.web_flow import PRIVATE_HOLDER, post_form, start, walk_to_confirm
from worker.store.models import Mailbox, OutboxMessage, Payment, RenewalOrder, SandboxCharge
from worker.web import forms

EXPIRY = date(2027, 2, 10)
FUZZ = hsettings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)


@pytest.fixture
def mailbox(session_factory):
    with session_factory() as session:
        mailbox = make_mailbox(session, expires_on=EXPIRY, plan="pro", address="mario@pec.provider.example.it")
        session.commit()
        session.expunge(mailbox)
        return mailbox


def count(session_factory, model, *where) -> int:
    with session_factory() as session:
        return session.scalar(select(func.count()).select_from(model).where(*where))


def holder_data(session_factory):
    with session_factory() as session:
        return session.scalar(select(RenewalOrder.holder_data))


# -- CSRF -------------------------------------------------------------------------------------------


def test_every_post_route_refuses_a_missing_forged_or_foreign_csrf_token(
    app, client, runtime, session_factory, mailbox
):
    link = link_path(runtime, mailbox)
    reminders_path = runtime.signer.reminders_url("0123456789abcdef0123456789abcdef@pec-provider.example")
    reminders_path = reminders_path.removeprefix(runtime.settings.base_url)
    order = start(client, link)
    walk_to_confirm(client, order, mailbox.id, plan="pro", method="card")
    assert post_form(client, f"{order}/conferma").status_code == 303  # confirmed: the checkout takes a POST
    auto_renew_page = "/rinnovo-automatico/" + runtime.signer.auto_renew_token(mailbox.id)
    authentication_page = "/rinnovo-automatico/autenticazione/" + runtime.signer.charge_authentication_token(1)
    # Each POST with data that would do something, were its CSRF token not checked.
    posts = {
        "web.renewal_link": (link, {}),
        "web.step_mailboxes": (
            f"{order}/caselle",
            {f"plan-{mailbox.id}": "standard", f"confirm_archive_deletion-{mailbox.id}": "y"},
        ),
        "web.step_holder": (f"{order}/intestatario", dict(PRIVATE_HOLDER, name="Luigi Verdi")),
        "web.step_payment": (f"{order}/modulo", {"method": "postal_slip", "years": "3"}),
        "web.step_terms": (f"{order}/condizioni", {"accept": "y", "approve_clauses": "y"}),
        "web.step_confirm": (f"{order}/conferma", {}),
        "web.checkout": (f"{order}/pagamento", {"payment_token": "pm_card_visa"}),
        "hosted.start": (f"{order}/pagamento/sicuro", {}),
        "hosted.result": (f"{order}/pagamento/esito?token=5O0000000001", {}),
        # The reminders' page buttons and "Non intendo rinnovare".  (The RFC 8058 one-click POST,
        # "List-Unsubscribe=One-Click" and nothing else, is the one form request without a CSRF token:
        # tests/web/test_reminders_pages.py.)
        "reminders.reminders_page": (reminders_path, {"action": "opt-out"}),
        "reminders.renewal_page_reminders": (f"{link}/avvisi", {"action": "opt-out"}),
        "life.change_method": (f"{order}/metodo", {"method": "bank_transfer"}),
        "life.cancel": (f"{order}/annulla", {}),
        "life.start_again": (f"{order}/nuovo", {}),
        "auto_renew.switch_off": (f"{auto_renew_page}/disattiva", {"confirmed": "yes"}),
        "auto_renew.switch_on": (f"{auto_renew_page}/attiva", {"confirmed": "yes"}),
        "auto_renew.replace_method": (f"{auto_renew_page}/metodo", {}),
        "auto_renew.sandbox_method": (f"{auto_renew_page}/metodo/sandbox", {"payment_token": "pm_card_visa"}),
        "auto_renew.method_result": ("/rinnovo-automatico/metodo/esito?session_id=cs_test_000001", {}),
        "charge_authentication.start": (authentication_page, {}),
        "charge_authentication.verify": (f"{authentication_page}/esito", {}),
        "sandbox_challenge.decide": ("/sandbox/3ds/" + "A" * 32 + "/approva", {}),
    }
    # A POST route added later must be added here.  The exceptions: the renewal-links API, which a
    # bearer token authorises (tests/web/test_renewal_api.py), and the webhooks, which carry the
    # gateway's signature (tests/web/test_webhooks_stripe.py, test_webhooks_paypal.py, test_webhooks_sandbox.py).
    not_cookie_authorised = {
        "api.renewal_links",
        "webhooks.stripe_webhook",
        "webhooks.paypal_webhook",
        "webhooks.sandbox_webhook",
    }
    assert {rule.endpoint for rule in app.url_map.iter_rules() if "POST" in rule.methods} == (
        set(posts) | not_cookie_authorised
    )

    other_browser = app.test_client()
    foreign_token = csrf_token(other_browser.get(link).get_data(as_text=True))
    own_token = csrf_token(client.get(link).get_data(as_text=True))
    before = row_counts(session_factory)
    for endpoint, (path, data) in posts.items():
        attempts = {
            "no token": (data, {}),
            "empty token": (dict(data, csrf_token=""), {}),
            "forged token": (dict(data, csrf_token="IjEyMyI.ZzZzZw.forged-signature-0123456789ab"), {}),
            "another browser's token": (dict(data, csrf_token=foreign_token), {}),
            "another site's post": (dict(data, csrf_token=own_token), {"Origin": "https://evil.example"}),
        }
        for attempt, (fields, headers) in attempts.items():
            response = client.post(path, data=fields, headers=headers)
            assert response.status_code == 400, (endpoint, attempt, response.status_code)
            assert "Modulo scaduto" in response.get_data(as_text=True), (endpoint, attempt)
            assert_security_headers(response)
    assert row_counts(session_factory) == before
    with session_factory() as session:
        row = session.scalar(select(RenewalOrder))
        assert row.status == "awaiting_payment" and row.payment_method == "card" and row.years == 1
        assert row.holder_data["name"] == PRIVATE_HOLDER["name"]
    assert count(session_factory, Payment) == 0


@FUZZ
@given(forged=st.text(max_size=200))
def test_any_forged_csrf_token_is_refused(app, forged):
    client = app.test_client()
    client.get("/")
    assert client.post("/rinnova/abc", data={"csrf_token": forged}).status_code == 400


# -- Double submit and replay -------------------------------------------------------------------------


def twice(client, path: str, data: dict):
    """The same form sent twice (a double click, or the browser's "resend")."""
    fields = dict(data, csrf_token=csrf_token(client.get(path).get_data(as_text=True)))
    first = client.post(path, data=fields)
    second = client.post(path, data=fields)
    assert first.status_code == second.status_code == 303, (path, first.status_code, second.status_code)
    assert first.headers["Location"] == second.headers["Location"], path
    return first


def test_double_submits_and_replays_make_one_order_and_one_payment(app, client, runtime, session_factory, mailbox):
    link = link_path(runtime, mailbox)
    order = "/".join(twice(client, link, {}).headers["Location"].split("/")[:3])  # /ordine/<public id>
    twice(client, f"{order}/caselle", {f"plan-{mailbox.id}": "pro"})
    twice(client, f"{order}/intestatario", PRIVATE_HOLDER)
    twice(client, f"{order}/modulo", {"method": "card", "years": "2"})
    twice(client, f"{order}/condizioni", {"accept": "y", "approve_clauses": "y"})
    confirm_form = {"csrf_token": csrf_token(client.get(f"{order}/conferma").get_data(as_text=True))}
    twice(client, f"{order}/conferma", {})
    # Another browser (the phone's mail app) with the same link finds the same order.
    assert post_form(app.test_client(), link).headers["Location"] == order
    pay_form = {
        "csrf_token": csrf_token(client.get(f"{order}/pagamento").get_data(as_text=True)),
        "payment_token": "pm_card_visa",
    }
    assert twice(client, f"{order}/pagamento", {"payment_token": "pm_card_visa"}).headers["Location"] == order

    # Replays of every POST once the order is paid: the link, the confirmation, the payment.
    for path, fields in (
        (link, {"csrf_token": confirm_form["csrf_token"]}),
        (f"{order}/conferma", confirm_form),
        (f"{order}/pagamento", pay_form),
    ):
        response = client.post(path, data=fields)
        assert response.status_code == 303 and response.headers["Location"] == order, path
    html = app.test_client().get(link).get_data(as_text=True)
    assert "già stata rinnovata" in html and "csrf_token" not in html  # a paid cycle's link starts nothing more

    assert count(session_factory, RenewalOrder) == 1
    assert count(session_factory, Payment) == 1
    assert count(session_factory, SandboxCharge, SandboxCharge.outcome == "succeeded") == 1
    assert count(session_factory, OutboxMessage, OutboxMessage.kind == "order-confirmation") == 1
    with session_factory() as session:
        assert session.get(Mailbox, mailbox.id).expires_on == date(2029, 2, 10)  # moved on once, by 2 years
        assert session.scalar(select(RenewalOrder.status)) == "paid"


# -- Hostile input --------------------------------------------------------------------------------------

#: Shown as typed, escaped: markup is ordinary text in a name or an address.
SHOWN_ESCAPED = {
    "script": "<script>alert(1)</script>",
    "attribute breakout": '"><img src=x onerror=alert(1)>',
    "quotes and ampersand": "Mario 'D'Alessandro' & C. <blink>",
    "cyrillic look-alike name": "Маriо Rоssi",  # Cyrillic М, о: a name may be in any alphabet
    "fullwidth name": "ＭＡＲＩＯ",
    "encoded word": "=?utf-8?q?Mario=0D=0ABcc:_x@evil.example?=",
}

#: Refused whole, with the reason next to the field (field, value, words of the Italian message).
REFUSED = {
    "CR/LF in the name": ("name", "Mario\r\nBcc: spia@evil.example", "caratteri di controllo"),
    "LF in the name": ("name", "Mario\nRossi", "caratteri di controllo"),
    "NUL in the name": ("name", "Mario\x00Rossi", "caratteri di controllo"),
    "NUL in the address": ("postal_address", "Via Roma 1\x00<script>", "caratteri di controllo"),
    "right-to-left override": ("name", "Mario\u202eissoR", "caratteri invisibili"),
    "zero-width space": ("name", "Ma\u200brio Rossi", "caratteri invisibili"),
    "replacement character": ("name", "Mario\ufffd", "caratteri invisibili"),
    "very long name": ("name", "M" * 5000, "Al massimo 200 caratteri"),
    "very long address": ("postal_address", "Via " * 2000, "Al massimo 300 caratteri"),
    "cyrillic а in the email": ("reference_email", "mario@exаmple.it", "ASCII"),
    "CR/LF in the email": ("reference_email", "mario@example.it\r\nBcc: spia@evil.example", "ASCII"),
    "fullwidth tax code": ("tax_code", "ＲＳＳＭＲＡ８０Ａ０１Ｈ５０１Ｕ", "ASCII"),
    "arabic-indic VAT digits": ("vat_number", "٠١١١٤٦٠١٠٠٦", "ASCII"),
    "greek Ο in the SDI code": ("einvoice_code", "AΒC1234", "ASCII"),
}


def order_at_holder_step(client, runtime, mailbox) -> str:
    order = start(client, link_path(runtime, mailbox))
    assert post_form(client, f"{order}/caselle", {f"plan-{mailbox.id}": "pro"}).status_code == 303
    return order


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_hostile_holder_input_is_refused_with_a_clear_message_and_nothing_is_stored(
    client, runtime, session_factory, mailbox, case
):
    field, value, message = REFUSED[case]
    order = order_at_holder_step(client, runtime, mailbox)
    assert post_form(client, f"{order}/intestatario", PRIVATE_HOLDER).status_code == 303  # a first, good version
    before, stored = row_counts(session_factory), holder_data(session_factory)
    response = post_form(client, f"{order}/intestatario", dict(PRIVATE_HOLDER, **{field: value}))
    assert response.status_code == 422
    html = response.get_data(as_text=True)
    assert f'id="{field}-error"' in html and message in html
    assert "<script" not in html and "<img" not in html
    assert_security_headers(response)
    # Nothing half-way: not the bad field, and not the good fields sent with it.
    assert row_counts(session_factory) == before
    assert holder_data(session_factory) == stored


def rendered_emails(runtime, session_factory) -> list[email.message.EmailMessage]:
    with session_factory() as session:
        rows = session.scalars(select(OutboxMessage).order_by(OutboxMessage.id)).all()
    messages = []
    for row in rows:
        rendered = runtime.renderer.render(
            kind=row.kind,
            stage=row.stage,
            language=row.language,
            to_address=row.to_address,
            message_id=row.message_id,
            context=row.context,
            now=runtime.clock(),
        )
        messages.append(email.message_from_bytes(rendered.as_bytes(), policy=email.policy.default))
    return messages


@pytest.mark.parametrize("case", sorted(SHOWN_ESCAPED))
def test_markup_in_holder_data_is_stored_as_typed_and_escaped_on_every_page_and_email(
    client, runtime, session_factory, mailbox, case
):
    value = SHOWN_ESCAPED[case]
    order = order_at_holder_step(client, runtime, mailbox)
    holder = dict(PRIVATE_HOLDER, name=value, postal_address=f"Via {value} 1")
    assert post_form(client, f"{order}/intestatario", holder).status_code == 303
    assert holder_data(session_factory)["name"] == value  # stored exactly as typed
    assert post_form(client, f"{order}/modulo", {"method": "bank_transfer", "years": "1"}).status_code == 303
    assert post_form(client, f"{order}/condizioni", {"accept": "y", "approve_clauses": "y"}).status_code == 303
    pages = {"holder step": client.get(f"{order}/intestatario"), "confirm step": client.get(f"{order}/conferma")}
    assert post_form(client, f"{order}/conferma").status_code == 303
    pages["confirmation"] = client.get(order)
    for name, page in pages.items():
        html = page.get_data(as_text=True)
        assert page.status_code == 200, name
        assert "<script>alert" not in html and "<img src=x" not in html and "<blink>" not in html, name
    assert str(escape(value)) in pages["holder step"].get_data(as_text=True)
    assert str(escape(value)) in pages["confirm step"].get_data(as_text=True)

    (message,) = rendered_emails(runtime, session_factory)
    assert [address.addr_spec for address in message["To"].addresses] == [PRIVATE_HOLDER["reference_email"]]
    assert message["Bcc"] is None and message["Cc"] is None and not message.defects
    html_part = message.get_body(("html",)).get_content()
    assert "<script>alert" not in html_part and "<img src=x" not in html_part and "<blink>" not in html_part
    assert value in unescape(re.sub(r"<[^>]*>", "", html_part))  # shown as text (css-inline may re-encode it)
    assert value in message.get_body(("plain",)).get_content()  # the text part is plain text: as typed


def test_a_hostile_holder_name_in_the_database_is_escaped_on_the_link_page(client, runtime, session_factory):
    with session_factory() as session:
        mailbox = make_mailbox(
            session, expires_on=EXPIRY, holder_name='<script>alert(1)</script>"&\r\nBcc: x@evil.example'
        )
        session.commit()
        path = link_path(runtime, mailbox)
    html = client.get(path).get_data(as_text=True)
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;&#34;&amp;" in html


@pytest.mark.parametrize(
    "step, data",
    [
        ("caselle", {"plan-{id}": "ｐｒｏ"}),  # fullwidth look-alike of a plan
        ("caselle", {"plan-{id}": "pro\r\n"}),
        ("caselle", {"plan-{id}": "<script>"}),
        ("caselle", {"plan-{id}": "pro", "extra_space_gb-{id}": "１"}),  # fullwidth digit
        ("caselle", {"plan-{id}": "pro", "extra_space_gb-{id}": "9" * 400}),
        ("caselle", {"plan-{id}": "pro", "extra_space_gb-{id}": "-1"}),
        ("caselle", {"plan-{id}": "pro", "extra_space_gb-{id}": "1_0"}),
        ("caselle", {"plan-{id}": "pro", "extra_space_gb-{id}": "٣"}),  # Arabic-Indic 3
        ("modulo", {"method": "bank_transfer", "years": "２"}),  # fullwidth 2
        ("modulo", {"method": "bank_transfer", "years": "1\x00"}),
        ("modulo", {"method": "ｃａｒｄ", "years": "1"}),
    ],
)
def test_hostile_choices_are_refused_and_nothing_is_stored(client, runtime, session_factory, mailbox, step, data):
    order = start(client, link_path(runtime, mailbox))
    if step == "modulo":
        assert post_form(client, f"{order}/caselle", {f"plan-{mailbox.id}": "pro"}).status_code == 303
        assert post_form(client, f"{order}/intestatario", PRIVATE_HOLDER).status_code == 303
    before = row_counts(session_factory)
    with session_factory() as session:
        order_before = session.scalar(select(RenewalOrder))
        lines_before = [(line.plan, line.extra_space_gb) for line in order_before.lines]
        choice_before = (order_before.payment_method, order_before.years)
    response = post_form(client, f"{order}/{step}", {key.format(id=mailbox.id): value for key, value in data.items()})
    assert response.status_code == 422
    html = response.get_data(as_text=True)
    assert 'class="field-error"' in html and "<script>" not in html
    assert row_counts(session_factory) == before
    with session_factory() as session:
        order_after = session.scalar(select(RenewalOrder))
        assert [(line.plan, line.extra_space_gb) for line in order_after.lines] == lines_before
        assert (order_after.payment_method, order_after.years) == choice_before


@pytest.mark.parametrize("token", ["pm_card_visа", "pm_card\r\nvisa", "pm_card_visa\x00", "ｐｍ_card_visa", "x" * 500])
def test_a_hostile_payment_token_is_refused_and_charges_nothing(client, runtime, session_factory, mailbox, token):
    order = start(client, link_path(runtime, mailbox))
    walk_to_confirm(client, order, mailbox.id, plan="pro", method="card")
    assert post_form(client, f"{order}/conferma").status_code == 303
    before = row_counts(session_factory)
    response = post_form(client, f"{order}/pagamento", {"payment_token": token})
    assert response.status_code == 422
    assert "<script>" not in response.get_data(as_text=True)
    assert row_counts(session_factory) == before


def test_markup_as_a_payment_token_is_a_decline_shown_escaped(client, runtime, session_factory, mailbox):
    order = start(client, link_path(runtime, mailbox))
    walk_to_confirm(client, order, mailbox.id, plan="pro", method="card")
    assert post_form(client, f"{order}/conferma").status_code == 303
    response = post_form(client, f"{order}/pagamento", {"payment_token": "<script>alert(1)</script>"}, follow=True)
    html = response.get_data(as_text=True)
    assert response.status_code == 200 and "Il pagamento è stato rifiutato" in html
    assert "<script>alert" not in html
    assert count(session_factory, Payment) == 0


def test_a_form_over_the_size_limit_is_a_clear_413_and_changes_nothing(client, runtime, session_factory, mailbox):
    order = order_at_holder_step(client, runtime, mailbox)
    before, stored = row_counts(session_factory), holder_data(session_factory)
    response = post_form(client, f"{order}/intestatario", dict(PRIVATE_HOLDER, name="a" * 200_000))
    assert response.status_code == 413
    assert "Dati troppo lunghi" in response.get_data(as_text=True)
    assert_security_headers(response)
    assert row_counts(session_factory) == before and holder_data(session_factory) == stored


def test_non_utf8_form_bodies_are_refused_cleanly(client, runtime, session_factory, mailbox):
    order = order_at_holder_step(client, runtime, mailbox)
    path = f"{order}/intestatario"
    token = csrf_token(client.get(path).get_data(as_text=True))
    # Raw bytes that are not UTF-8: the body cannot be read as a form, so it is refused whole.
    body = b"csrf_token=" + token.encode() + b"&name=\xff\xfe\x80Mario&kind=private&reference_email=mario%40example.it"
    response = client.post(path, data=body, content_type="application/x-www-form-urlencoded")
    assert response.status_code in (400, 422)
    assert holder_data(session_factory) is None
    # Percent-escapes of bytes that are not UTF-8 are kept as the literal ASCII text typed: nothing
    # undecodable is stored, and the text is shown as it is.
    body = b"csrf_token=" + token.encode() + b"&name=%FF%FE%80Mario&kind=private&reference_email=mario%40example.it"
    response = client.post(path, data=body, content_type="application/x-www-form-urlencoded")
    assert response.status_code == 303
    assert holder_data(session_factory)["name"] == "%FF%FE%80Mario"


_hostile = st.one_of(
    st.text(max_size=400),
    st.sampled_from(list(SHOWN_ESCAPED.values()) + [value for _, value, _ in REFUSED.values()]),
)


@FUZZ
@given(field=st.sampled_from(forms.HolderForm.FIELDS), value=_hostile)
def test_holder_step_fuzz_stores_whole_clean_data_or_nothing(app, runtime, session_factory, mailbox, field, value):
    client = app.test_client()
    order = order_at_holder_step(client, runtime, mailbox)
    before = holder_data(session_factory)
    response = post_form(client, f"{order}/intestatario", dict(PRIVATE_HOLDER, **{field: value}))
    assert response.status_code in (303, 413, 422), response.status_code
    assert "<script>alert" not in response.get_data(as_text=True)
    after = holder_data(session_factory)
    if response.status_code == 303:  # stored whole, and clean
        assert all(forms.text_problem(str(v)) is None for v in after.values() if v)
    else:
        assert after == before

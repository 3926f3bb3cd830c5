"""Property and fuzz tests of the form checks: whatever is typed, a clear refusal or a clean value, never a 500."""

from __future__ import annotations

import unicodedata
from datetime import date

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from sqlalchemy import select
from werkzeug.datastructures import MultiDict

from tests.support.factories import make_mailbox
from tests.support.link_handler import csrf_token, link_path, row_counts
from tests.support.web_flow import PRIVATE_HOLDER, post_form, start
from worker.store.models import RenewalOrder
from worker.web import forms

FUZZ = hsettings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)


@given(st.text(max_size=300))
def test_text_problem_refuses_exactly_the_unsafe_characters(value):
    problem = forms.text_problem(value)
    unsafe = any(
        unicodedata.category(character) in ("Cc", "Cs", "Co", "Cn", "Cf") or character == "\ufffd"
        for character in value
    )
    assert (problem is not None) == unsafe


@given(st.text(alphabet=st.characters(blacklist_categories=("Cc", "Cs", "Co", "Cn", "Cf")), max_size=100))
def test_ordinary_text_with_accents_is_accepted(value):
    if "\ufffd" not in value:
        assert forms.text_problem(value) is None


@FUZZ
@given(st.text(max_size=60))
def test_plain_ascii_accepts_only_printable_ascii(app, value):
    with app.test_request_context(method="POST"):

        class Form(forms.FlaskForm):
            class Meta:
                csrf = False

            field = forms.StringField(validators=[forms.PlainAscii()])

        form = Form(formdata=MultiDict({"field": value}))
        form.validate()
        assert (not form.field.errors) == all(" " <= character <= "~" for character in value)


@pytest.fixture
def holder_step(app, runtime, session_factory):
    with session_factory() as session:
        mailbox = make_mailbox(session, expires_on=date(2027, 2, 10), plan="pro")
        session.commit()
        mailbox_id, link = mailbox.id, link_path(runtime, mailbox)
    client = app.test_client()
    order = start(client, link)
    assert post_form(client, f"{order}/caselle", {f"plan-{mailbox_id}": "pro"}).status_code == 303
    token = csrf_token(client.get(f"{order}/intestatario").get_data(as_text=True))
    return client, f"{order}/intestatario", token


_hostile = st.one_of(
    st.text(max_size=400),
    st.sampled_from(
        [
            "<script>alert(1)</script>",
            "\r\nBcc: x@evil",
            "'; DROP TABLE holders; --",
            "a" * 10_000,
            "\x00",
            "ｍａｒｉｏ@ｅｘａｍｐｌｅ.it",
        ]
    ),
)


@FUZZ
@given(field=st.sampled_from(forms.HolderForm.FIELDS), value=_hostile)
def test_holder_step_fuzz_never_500_and_never_half_stored(holder_step, session_factory, field, value):
    client, path, token = holder_step
    with session_factory() as session:
        before = session.scalar(select(RenewalOrder.holder_data))
    response = client.post(path, data=dict(PRIVATE_HOLDER, csrf_token=token, **{field: value}))
    assert response.status_code in (303, 413, 422), response.status_code
    html = response.get_data(as_text=True)
    assert "<script>alert" not in html
    with session_factory() as session:
        after = session.scalar(select(RenewalOrder.holder_data))
    if response.status_code == 303:
        # Stored whole and clean: every value passed the checks.
        assert all(forms.text_problem(str(v)) is None for v in (after or {}).values() if v)
    else:
        assert after == before


@FUZZ
@given(
    data=st.dictionaries(
        st.sampled_from(["method", "years", "accept", "plan-1", "x"]), st.text(max_size=50), max_size=4
    )
)
def test_random_posts_without_a_csrf_token_change_nothing(app, session_factory, data):
    client = app.test_client()
    before = row_counts(session_factory)
    for path in ("/rinnova/abc", "/ordine/abcdefghijkl/caselle", "/ordine/abcdefghijkl/conferma"):
        assert client.post(path, data=data).status_code == 400
    assert row_counts(session_factory) == before


def test_non_utf8_form_bodies_are_refused_cleanly(holder_step, session_factory):
    client, path, token = holder_step
    # Raw bytes that are not UTF-8: the body cannot be read as a form, so it is refused whole.
    body = b"csrf_token=" + token.encode() + b"&name=\xff\xfe\x80Mario&kind=private&reference_email=mario%40example.it"
    response = client.post(path, data=body, content_type="application/x-www-form-urlencoded")
    assert response.status_code in (400, 422)
    with session_factory() as session:
        holder_data = session.scalar(select(RenewalOrder.holder_data))
    assert holder_data is None or "\ufffd" not in str(holder_data)
    # Percent-escapes of bytes that are not UTF-8 stay as the literal (ASCII) text typed: nothing undecodable is stored.
    body = b"csrf_token=" + token.encode() + b"&name=%FF%FE%80Mario&kind=private&reference_email=mario%40example.it"
    response = client.post(path, data=body, content_type="application/x-www-form-urlencoded")
    assert response.status_code in (303, 422)
    with session_factory() as session:
        holder_data = session.scalar(select(RenewalOrder.holder_data))
    assert "\ufffd" not in str(holder_data) and all(ord(c) < 0x10000 for c in str(holder_data))

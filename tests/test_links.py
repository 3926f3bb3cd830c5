"""Signed renewal links: round trip, key rotation, tampering, expiry.  No database."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta

import pytest
import time_machine
from hypothesis import given, settings
from hypothesis import strategies as st
from itsdangerous import URLSafeSerializer, URLSafeTimedSerializer

from worker.rules.links import (
    ACCOUNT,
    GROUP,
    MAILBOX,
    MAX_GROUP,
    RENEWAL_SALT,
    LinkSigner,
    RenewalLink,
    TokenExpired,
    TokenInvalid,
)

OLD_KEY = "old-key-0123456789abcdef0123456789abcdef"
NEW_KEY = "new-key-0123456789abcdef0123456789abcdef"
NEWER_KEY = "newer-key-0123456789abcdef0123456789abcd"
BASE_URL = "https://rinnovi.example.test"
MAX_AGE_DAYS = 200
EXPIRES_ON = date(2027, 5, 31)
SIGNED_AT = datetime(2027, 2, 28, 6, 0, tzinfo=UTC)


def signer(*keys: str) -> LinkSigner:
    return LinkSigner(keys or (OLD_KEY, NEW_KEY), BASE_URL, MAX_AGE_DAYS)


def token_of(url: str) -> str:
    prefix = f"{BASE_URL}/rinnova/"
    assert url.startswith(prefix)
    return url[len(prefix) :]


@pytest.fixture
def frozen():
    with time_machine.travel(SIGNED_AT, tick=False) as traveller:
        yield traveller


# -- round trip ----------------------------------------------------------------------------------


def test_mailbox_link_round_trip(frozen):
    links = signer()
    url = links.renewal_url(42, EXPIRES_ON)
    token = token_of(url)
    assert re.fullmatch(r"[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+", token)
    assert links.read_renewal_token(token) == RenewalLink(MAILBOX, 42, EXPIRES_ON)


def test_account_link_round_trip(frozen):
    links = signer()
    token = token_of(links.account_renewal_url(7, date(2028, 2, 29)))
    assert links.read_renewal_token(token) == RenewalLink(ACCOUNT, 7, date(2028, 2, 29))


def test_group_link_round_trip(frozen):
    """A grouped notice's "Rinnova tutte": its mailboxes in order, keyed by the smallest."""
    links = signer()
    token = token_of(links.group_renewal_url([9, 3, 5, 3], EXPIRES_ON))
    assert links.read_renewal_token(token) == RenewalLink(GROUP, 3, EXPIRES_ON, (3, 5, 9))
    single = token_of(links.group_renewal_url([4, 4], EXPIRES_ON))
    assert links.read_renewal_token(single) == RenewalLink(GROUP, 4, EXPIRES_ON, (4,))
    assert links.url_for(GROUP, 3, EXPIRES_ON, [3, 5, 9]) == links.group_renewal_url([3, 5, 9], EXPIRES_ON)
    largest = [2**63 - 1 - n * 1_000_003 for n in range(MAX_GROUP)]
    assert len(token_of(links.group_renewal_url(largest, EXPIRES_ON))) < 1000  # what a link may be


@pytest.mark.parametrize("ids", [[], list(range(1, MAX_GROUP + 2)), [0, 4], [4, 2**63]])
def test_a_group_link_names_one_to_max_group_mailboxes(ids):
    with pytest.raises(ValueError):
        signer().group_renewal_url(ids, EXPIRES_ON)


def test_base_url_trailing_slash_is_dropped(frozen):
    links = LinkSigner((NEW_KEY,), BASE_URL + "/", MAX_AGE_DAYS)
    assert links.renewal_url(1, EXPIRES_ON).startswith(f"{BASE_URL}/rinnova/")
    assert "//rinnova" not in links.renewal_url(1, EXPIRES_ON)


def test_same_input_same_time_gives_the_same_token(frozen):
    assert signer().renewal_token(MAILBOX, 42, EXPIRES_ON) == signer().renewal_token(MAILBOX, 42, EXPIRES_ON)
    assert signer().renewal_token(MAILBOX, 42, EXPIRES_ON) != signer().renewal_token(MAILBOX, 43, EXPIRES_ON)
    assert signer().renewal_token(MAILBOX, 42, EXPIRES_ON) != signer().renewal_token(ACCOUNT, 42, EXPIRES_ON)


def test_non_string_token_is_invalid():
    for value in (None, b"abc.def.ghi", 42):
        with pytest.raises(TokenInvalid):
            signer().read_renewal_token(value)


def test_unknown_target_and_no_key_are_refused():
    with pytest.raises(ValueError, match="unknown link target 'x'"):
        signer().renewal_token("x", 1, EXPIRES_ON)
    assert signer().read_renewal_token(signer().renewal_token(MAILBOX, 2**63 - 1, EXPIRES_ON)).target_id == 2**63 - 1
    with pytest.raises(ValueError, match="at least one secret key is needed"):
        LinkSigner((), BASE_URL, MAX_AGE_DAYS)


# -- key rotation ----------------------------------------------------------------------------------


def test_link_signed_by_the_old_key_verifies_after_rotation(frozen):
    token = signer(OLD_KEY).renewal_token(MAILBOX, 42, EXPIRES_ON)
    assert signer(OLD_KEY, NEW_KEY).read_renewal_token(token) == RenewalLink(MAILBOX, 42, EXPIRES_ON)


def test_new_links_are_signed_with_the_last_key(frozen):
    token = signer(OLD_KEY, NEW_KEY).renewal_token(MAILBOX, 42, EXPIRES_ON)
    assert token == signer(NEW_KEY).renewal_token(MAILBOX, 42, EXPIRES_ON)
    assert signer(NEW_KEY).read_renewal_token(token) == RenewalLink(MAILBOX, 42, EXPIRES_ON)
    with pytest.raises(TokenInvalid):
        signer(OLD_KEY).read_renewal_token(token)


def test_link_signed_by_a_retired_key_is_invalid(frozen):
    token = signer(OLD_KEY).renewal_token(MAILBOX, 42, EXPIRES_ON)
    with pytest.raises(TokenInvalid) as caught:
        signer(NEW_KEY, NEWER_KEY).read_renewal_token(token)
    assert type(caught.value) is TokenInvalid
    assert str(caught.value) == "link invalid"


# -- bad tokens --------------------------------------------------------------------------------------


def _replace(text: str, index: int) -> str:
    return text[:index] + ("A" if text[index] != "A" else "B") + text[index + 1 :]


def bad_tokens(token: str) -> dict[str, str]:
    payload, timestamp, signature = token.split(".")
    other_payload = token_of(signer().renewal_url(43, EXPIRES_ON)).split(".")[0]
    return {
        "payload changed": _replace(payload, 0) + f".{timestamp}.{signature}",
        "payload of another mailbox": f"{other_payload}.{timestamp}.{signature}",
        "timestamp changed": f"{payload}.{_replace(timestamp, 0)}.{signature}",
        "signature changed": f"{payload}.{timestamp}.{_replace(signature, 0)}",
        "signature dropped": f"{payload}.{timestamp}",
        "signature empty": f"{payload}.{timestamp}.",
        "truncated by one": token[:-1],
        "truncated by half": token[: len(token) // 2],
        "payload only": payload,
        "extra dot": token + ".",
        "doubled": token + token,
        "empty": "",
        "blank": "   ",
        "garbage": "not-a-token",
        "dots": "...",
        "non-ASCII appended": token + "é",
        "non-ASCII": "rinnovo-è-scaduto",
        "emoji": "📧.📧.📧",
        "NUL": token[:10] + "\x00" + token[11:],
        "lone surrogate": token + "\udc80",
        "non-ASCII in the signature": token[:-3] + "é" + token[-3:],
        "space": token[:5] + " " + token[5:],
        "too long": token + "." + "A" * 1000,
    }


@pytest.mark.parametrize(
    "case",
    list(bad_tokens("cGF5bG9hZA.dGltZQ.c2lnbmF0dXJl").keys()),
)
def test_bad_token_is_invalid(frozen, case):
    links = signer()
    token = links.renewal_token(MAILBOX, 42, EXPIRES_ON)
    bad = bad_tokens(token)[case]
    assert bad != token
    with pytest.raises(TokenInvalid) as caught:
        links.read_renewal_token(bad)
    assert type(caught.value) is TokenInvalid


def test_token_for_another_purpose_is_invalid(frozen):
    payload = [MAILBOX, 42, EXPIRES_ON.isoformat()]
    other_purpose = URLSafeTimedSerializer([OLD_KEY, NEW_KEY], salt="pec-renewal.unsubscribe-link").dumps(payload)
    same_purpose = URLSafeTimedSerializer([OLD_KEY, NEW_KEY], salt=RENEWAL_SALT).dumps(payload)
    untimed = URLSafeSerializer([OLD_KEY, NEW_KEY], salt=RENEWAL_SALT).dumps(payload)
    assert signer().read_renewal_token(same_purpose) == RenewalLink(MAILBOX, 42, EXPIRES_ON)  # the control
    for token in (other_purpose, untimed):
        with pytest.raises(TokenInvalid):
            signer().read_renewal_token(token)


@pytest.mark.parametrize(
    "payload",
    [
        {"target": MAILBOX, "id": 42, "expires_on": "2027-05-31"},
        "m,42,2027-05-31",
        [MAILBOX, 42],
        [MAILBOX, 42, "2027-05-31", "extra"],
        ["x", 42, "2027-05-31"],
        [MAILBOX, "42", "2027-05-31"],
        [MAILBOX, True, "2027-05-31"],
        [MAILBOX, 42.0, "2027-05-31"],
        [MAILBOX, 42, "2027-02-30"],
        [MAILBOX, 42, 20270531],
        [MAILBOX, 42, None],
        [MAILBOX, 2**63, "2027-05-31"],  # past PostgreSQL's bigint: no row can have it
        [ACCOUNT, 2**63, "2027-05-31"],
        [MAILBOX, 10**40, "2027-05-31"],
        [MAILBOX, 0, "2027-05-31"],
        [MAILBOX, -1, "2027-05-31"],
        [MAILBOX, 42, "2027-05-31", [42, 43]],  # only a group names mailboxes
        [ACCOUNT, 42, "2027-05-31", [42, 43]],
        [GROUP, 42, "2027-05-31"],
        [GROUP, 42, "2027-05-31", []],
        [GROUP, 42, "2027-05-31", [42, 43], "extra"],
        [GROUP, 42, "2027-05-31", [43, 42]],  # out of order
        [GROUP, 42, "2027-05-31", [42, 42]],
        [GROUP, 41, "2027-05-31", [42, 43]],  # keyed by another mailbox than its smallest
        [GROUP, 42, "2027-05-31", [42, "43"]],
        [GROUP, 42, "2027-05-31", [42, True]],
        [GROUP, 42, "2027-05-31", [42, 2**63]],
        [GROUP, 42, "2027-05-31", {"42": 43}],
        [GROUP, 1, "2027-05-31", list(range(1, MAX_GROUP + 2))],
        None,
    ],
)
def test_well_signed_but_malformed_payload_is_invalid(frozen, payload):
    token = URLSafeTimedSerializer([OLD_KEY, NEW_KEY], salt=RENEWAL_SALT).dumps(payload)
    with pytest.raises(TokenInvalid) as caught:
        signer().read_renewal_token(token)
    assert type(caught.value) is TokenInvalid


@pytest.mark.parametrize("raw_payload", [b"bm90LWpzb24", b".bm90LXpsaWI", b"!!!"])
def test_well_signed_but_undecodable_payload_is_invalid(frozen, raw_payload):
    """Not JSON, not zlib, not base64: itsdangerous says BadPayload, which is not a BadSignature."""
    raw_signer = URLSafeTimedSerializer([OLD_KEY, NEW_KEY], salt=RENEWAL_SALT).make_signer(RENEWAL_SALT)
    token = raw_signer.sign(raw_payload).decode()
    with pytest.raises(TokenInvalid) as caught:
        signer().read_renewal_token(token)
    assert type(caught.value) is TokenInvalid


# -- expiry of the link itself --------------------------------------------------------------------


def test_link_expires_after_the_maximum_age():
    with time_machine.travel(SIGNED_AT, tick=False) as traveller:
        links = signer()
        token = links.renewal_token(MAILBOX, 42, EXPIRES_ON)
        traveller.move_to(SIGNED_AT + timedelta(days=MAX_AGE_DAYS))
        assert links.read_renewal_token(token) == RenewalLink(MAILBOX, 42, EXPIRES_ON)  # the last second
        traveller.move_to(SIGNED_AT + timedelta(days=MAX_AGE_DAYS, seconds=1))
        with pytest.raises(TokenExpired) as caught:
            links.read_renewal_token(token)
    assert str(caught.value) == "link expired"
    assert isinstance(caught.value, TokenInvalid)  # callers that only care about "bad link" catch both


def test_max_age_comes_from_the_signer():
    with time_machine.travel(SIGNED_AT, tick=False) as traveller:
        token = signer().renewal_token(MAILBOX, 42, EXPIRES_ON)
        traveller.move_to(SIGNED_AT + timedelta(days=10))
        assert LinkSigner((OLD_KEY, NEW_KEY), BASE_URL, 11).read_renewal_token(token).target_id == 42
        with pytest.raises(TokenExpired):
            LinkSigner((OLD_KEY, NEW_KEY), BASE_URL, 9).read_renewal_token(token)


# -- the expiry cycle -----------------------------------------------------------------------------------


def test_is_current_for_the_same_expiry_only(frozen):
    link = signer().read_renewal_token(signer().renewal_token(MAILBOX, 42, EXPIRES_ON))
    assert link.is_current_for(date(2027, 5, 31)) is True
    assert link.is_current_for(date(2028, 5, 31)) is False  # renewed: the expiry moved on
    assert link.is_current_for(date(2027, 5, 30)) is False


# -- arbitrary input ------------------------------------------------------------------------------------

ANY_TEXT = st.text(alphabet=st.characters(exclude_categories=()), max_size=300)
TOKEN_SHAPED = st.from_regex(r"[A-Za-z0-9_\-]{0,60}\.[A-Za-z0-9_\-]{0,10}\.[A-Za-z0-9_\-]{0,40}", fullmatch=True)
READER = signer()


@settings(max_examples=400, deadline=None)
@given(text=ANY_TEXT | TOKEN_SHAPED)
def test_arbitrary_strings_only_ever_raise_token_invalid(text):
    with pytest.raises(TokenInvalid):
        READER.read_renewal_token(text)


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_mutated_tokens_are_the_original_link_or_invalid(data):
    with time_machine.travel(SIGNED_AT, tick=False):
        token = READER.renewal_token(MAILBOX, 42, EXPIRES_ON)
        index = data.draw(st.integers(0, len(token) - 1))
        replacement = data.draw(st.text(alphabet=st.characters(exclude_categories=()), max_size=3))
        mutated = token[:index] + replacement + token[index + 1 :]
        try:
            link = READER.read_renewal_token(mutated)
        except TokenInvalid:
            return
    # Only a change within the token's alphabet that decodes to the same bytes (such as the
    # unused low bits of the last base64 character) may still verify, and then it is the same link.
    assert re.fullmatch(r"[A-Za-z0-9_\-.]+", mutated)
    assert link == RenewalLink(MAILBOX, 42, EXPIRES_ON)

"""Header injection: hostile names and addresses never add a header or a recipient.

Whatever the holder's name, the reference address or the mailbox addresses
hold (CR/LF, encoded words, "Bcc:" lines), the raw message must parse to
exactly the intended headers and the one intended recipient, or the renderer
must refuse the data with ValueError.  It never emits a message that says
something else.
"""

from __future__ import annotations

import email
import email.policy
from datetime import datetime, timezone

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from worker.emails import EmailRenderer, header_address
from worker.links import LinkSigner

EXPECTED_HEADERS = {
    "from", "to", "subject", "date", "message-id", "mime-version", "content-type", "auto-submitted",
    "x-pec-renewal-kind", "x-pec-renewal-stage", "x-pec-renewal-mailboxes",
}

RENDERER = EmailRenderer(
    mail_from="Rinnovi PEC <rinnovi@pec-provider.example.it>",
    signer=LinkSigner(["k" * 40], "https://rinnovi.example.it", 200),
)
NOW = datetime(2027, 1, 31, 5, 0, tzinfo=timezone.utc)

hostile_pieces = st.sampled_from([
    "\r\n", "\n", "\r", "Bcc: spia@evil.example", "\r\nBcc: spia@evil.example", "=?utf-8?q?=0D=0ABcc:_x@evil.example?=",
    "=?utf-8?b?DQpCY2M6IHhAZXZpbC5leGFtcGxl?=", ",", ";", "<", ">", "\"", " ", "\t", "\x00", "\u2028", "\u0085",
    "Cc: altro@evil.example", ":", "@", "é", "ß", "\u202e",
])
hostile_text = st.lists(st.one_of(hostile_pieces, st.text(max_size=8)), max_size=8).map("".join)


def render(holder_name, to_address, mailbox_address):
    return RENDERER.render(
        kind="expiry-notice",
        stage="-2m",
        language="it",
        to_address=to_address,
        message_id="0123456789abcdef0123456789abcdef@pec-provider.example.it",
        context={
            "holder_name": holder_name,
            "mailboxes": [{"id": 7, "address": mailbox_address, "expires_on": "2027-03-31", "plan": "pro", "domain": None}],
        },
        now=NOW,
    )


def assert_exact(raw: bytes, to_address: str, mailbox_address: str) -> None:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert {name.lower() for name in message.keys()} == EXPECTED_HEADERS
    assert len(message.get_all("To")) == 1
    assert [address.addr_spec for address in message["To"].addresses] == [to_address]
    assert message["X-PEC-Renewal-Mailboxes"] == mailbox_address
    assert message["Bcc"] is None and message["Cc"] is None
    assert not message.defects


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(holder_name=hostile_text)
def test_a_hostile_holder_name_never_reaches_a_header(holder_name):
    rendered = render(holder_name, "titolare@example.it", "casella@pec.example.it")
    assert_exact(rendered.as_bytes(), "titolare@example.it", "casella@pec.example.it")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(local=hostile_text, domain_part=hostile_text)
def test_a_hostile_address_is_refused_or_exact(local, domain_part):
    to_address = f"{local}@{domain_part}example.it"
    try:
        rendered = render("Mario Rossi", to_address, "casella@pec.example.it")
    except ValueError:
        return  # refused: nothing is sent
    assert rendered.recipient == header_address(to_address)  # as given, a Unicode domain in its IDNA form
    assert_exact(rendered.as_bytes(), rendered.recipient, "casella@pec.example.it")


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(local=hostile_text)
def test_a_hostile_mailbox_address_is_refused_or_exact(local):
    mailbox_address = f"{local}@pec.example.it"
    try:
        rendered = render("Mario Rossi", "titolare@example.it", mailbox_address)
    except ValueError:
        return
    assert_exact(rendered.as_bytes(), "titolare@example.it", mailbox_address)

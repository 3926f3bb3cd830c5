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
import re
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from worker.mail.emails import EmailRenderer
from worker.mail.headers import header_address
from worker.rules.links import LinkSigner

EXPECTED_HEADERS = {
    "from",
    "to",
    "subject",
    "date",
    "message-id",
    "mime-version",
    "content-type",
    "auto-submitted",
    "x-pec-renewal-kind",
    "x-pec-renewal-stage",
    "x-pec-renewal-mailboxes",
    # A reminder's RFC 2369 / RFC 8058 headers, signed from the Message-ID alone.
    "list-unsubscribe",
    "list-unsubscribe-post",
}

SIGNER = LinkSigner(["k" * 40], "https://rinnovi.example.it", 200)
RENDERER = EmailRenderer(
    mail_from="Rinnovi PEC <rinnovi@pec-provider.example.it>",
    signer=SIGNER,
)
NOW = datetime(2027, 1, 31, 5, 0, tzinfo=UTC)

hostile_pieces = st.sampled_from(
    [
        "\r\n",
        "\n",
        "\r",
        "Bcc: spia@evil.example",
        "\r\nBcc: spia@evil.example",
        "=?utf-8?q?=0D=0ABcc:_x@evil.example?=",
        "=?utf-8?b?DQpCY2M6IHhAZXZpbC5leGFtcGxl?=",
        ",",
        ";",
        "<",
        ">",
        '"',
        " ",
        "\t",
        "\x00",
        "\u2028",
        "\u0085",
        "Cc: altro@evil.example",
        ":",
        "@",
        "é",
        "ß",
        "\u202e",
    ]
)
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
            "mailboxes": [
                {"id": 7, "address": mailbox_address, "expires_on": "2027-03-31", "plan": "pro", "domain": None}
            ],
        },
        now=NOW,
    )


def assert_exact(raw: bytes, to_address: str, mailbox_address: str) -> None:
    """The message parses to exactly the intended headers, with the intended values, and one recipient."""
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert sorted(name.lower() for name in message.keys()) == sorted(EXPECTED_HEADERS)  # each once, no other
    assert [address.addr_spec for address in message["To"].addresses] == [to_address]
    assert message["To"].addresses[0].display_name == ""
    assert message["Bcc"] is None and message["Cc"] is None and message["Resent-To"] is None
    assert message["From"] == "Rinnovi PEC <rinnovi@pec-provider.example.it>"
    assert message["Message-ID"] == "<0123456789abcdef0123456789abcdef@pec-provider.example.it>"
    assert message["Date"] == "Sun, 31 Jan 2027 05:00:00 +0000"
    assert message["X-PEC-Renewal-Kind"] == "expiry-notice" and message["X-PEC-Renewal-Stage"] == "-2m"
    assert message["X-PEC-Renewal-Mailboxes"] == mailbox_address
    # The List-Unsubscribe URL is signed from the Message-ID alone: nothing of the input is in it.
    unsubscribe = re.fullmatch(r"<https://rinnovi\.example\.it/avvisi/([A-Za-z0-9_\-.]+)>", message["List-Unsubscribe"])
    assert SIGNER.read_reminders_token(unsubscribe.group(1)) == message["Message-ID"].strip("<>")
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    # The subject names the mailbox (blanks folded to one space) and nothing else of the input.
    assert str(message["Subject"]) == " ".join(f"La casella PEC {mailbox_address} scade il 31 marzo 2027".split())
    # Two parts, each with only its content headers: nothing reached a body's headers either.
    parts = [(part.get_content_type(), sorted(part.keys())) for part in message.iter_parts()]
    assert parts == [(kind, ["Content-Transfer-Encoding", "Content-Type"]) for kind in ("text/plain", "text/html")]
    assert not message.defects and not any(part.defects for part in message.walk())


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


#: The classic attacks, each tried for certain (hypothesis may or may not draw them).
KNOWN_ATTACKS = [
    "Mario\r\nBcc: spia@evil.example",
    "Mario\nBcc: spia@evil.example",
    "Mario\rBcc: spia@evil.example",
    "Mario\r\n\r\nCorpo falso",
    "=?utf-8?q?Mario=0D=0ABcc:_spia@evil.example?=",
    "=?utf-8?b?TWFyaW8NCkJjYzogc3BpYUBldmlsLmV4YW1wbGU=?=",
    "Mario, spia@evil.example",
    "Mario <spia@evil.example>",
    '"Mario" <spia@evil.example>, titolare@example.it',
    "Bcc: spia@evil.example",
]


@pytest.mark.parametrize("attack", KNOWN_ATTACKS)
def test_known_header_attacks_in_each_input_are_refused_or_exact(attack):
    assert_exact(
        render(attack, "titolare@example.it", "casella@pec.example.it").as_bytes(),
        "titolare@example.it",
        "casella@pec.example.it",
    )
    for to_address in (attack, f"titolare@example.it{attack}", f"{attack}@example.it"):
        try:
            rendered = render("Mario Rossi", to_address, "casella@pec.example.it")
        except ValueError:
            continue
        assert_exact(rendered.as_bytes(), rendered.recipient, "casella@pec.example.it")
        assert "evil.example" not in rendered.recipient
    for mailbox_address in (f"casella@pec.example.it{attack}", f"{attack}@pec.example.it"):
        try:
            rendered = render("Mario Rossi", "titolare@example.it", mailbox_address)
        except ValueError:
            continue
        assert_exact(rendered.as_bytes(), "titolare@example.it", mailbox_address)

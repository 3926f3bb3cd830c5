"""Email rendering: every template compiles, every kind renders for one and three mailboxes,
the headers are exact and injection-proof, links verify, dates are in the holder's language."""

from __future__ import annotations

import dataclasses
import email
import email.policy
import os
import re
import subprocess
import sys
from datetime import date, datetime, timedelta, timezone
from email.header import Header
from importlib.resources import files
from pathlib import Path

import pytest
import time_machine
from celery.signals import worker_init

import tasks.mail  # noqa: F401  (connects the worker_init handler under test, as a worker's imports do)
from worker.mail.emails import EmailRenderer
from worker.mail.headers import folded_subject
from worker.mail.kinds import KINDS
from worker.mail.message_ids import message_id_for
from worker.mail.templates import compiled_templates, format_date_with_article, format_long_date, template_environment
from worker.rules.links import MAILBOX, LinkSigner, RenewalLink
from worker.rules.notices import REMINDER_KINDS
from worker.rules.vocabulary import LANGUAGES

BASE_URL = "https://rinnovi.example.it"
MAIL_FROM = "Rinnovi PEC <rinnovi@pec-provider.example.it>"
NOW = datetime(2027, 1, 31, 6, 0, tzinfo=timezone(timedelta(hours=1)))
SECRET_KEYS = ["old-key-0123456789abcdef0123456789abcdef", "new-key-0123456789abcdef0123456789abcdef"]
INSTALLATION = "5f0c6a1e9b2d4c7e8a3f1b0d2e4c6a8b"
HOSTILE_NAME = "<script>alert(1)</script>"
STAGE_FOR = {"expiry-notice": "-2m", "expired-notice": "+30d", "domain-expiry-notice": "-1m"}
LINK_RE = re.compile(re.escape(BASE_URL) + r"/rinnova/([A-Za-z0-9_.\-]+)")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def signer() -> LinkSigner:
    return LinkSigner(SECRET_KEYS, BASE_URL, max_age_days=200)


@pytest.fixture(scope="module")
def renderer(signer) -> EmailRenderer:
    return EmailRenderer(mail_from=MAIL_FROM, signer=signer)


def mailboxes(count: int, *, kind: str = "expiry-notice", expires_on: str = "2027-03-31") -> list[dict]:
    names = ["mario", "ufficio", "fatture"]
    domain = "rossi-srl.example.it" if kind == "domain-expiry-notice" else None
    host = f"pec.{domain}" if domain else "pec.example.it"
    return [
        {
            "id": 101 + index,
            "address": f"{names[index]}@{host}",
            "expires_on": expires_on,
            "plan": plan,
            "domain": domain,
        }
        for index, plan in zip(range(count), ("standard", "pro", "premium"), strict=False)
    ]


def render(
    renderer, kind="expiry-notice", *, stage=None, language="it", count=1, holder_name="Mario Rossi", **overrides
):
    arguments = dict(
        kind=kind,
        stage=stage or STAGE_FOR.get(kind, "-2m"),
        language=language,
        to_address="mario.rossi@example.it",
        message_id="0123456789abcdef0123456789abcdef@pec-provider.example.it",
        context={"holder_name": holder_name, "mailboxes": mailboxes(count, kind=kind)},
        now=NOW,
    )
    arguments.update(overrides)
    return renderer.render(**arguments)


def parse(raw: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(raw, policy=email.policy.default)


def parts(message) -> tuple[str, str]:
    text = message.get_body(preferencelist=("plain",)).get_content()
    html = message.get_body(preferencelist=("html",)).get_content()
    return text, html


# -- Templates ------------------------------------------------------------------------------


def test_every_template_compiles():
    environment = template_environment()
    names = environment.list_templates()
    assert "_base/body.txt" in names and "_base/body.html" in names
    for name in names:
        environment.get_template(name)  # raises on a syntax error
    for kind in KINDS:
        for language in LANGUAGES:
            for file_name in (f"subject.{language}.txt", f"body.{language}.txt", f"body.{language}.html"):
                assert f"{kind}/{file_name}" in names


def test_every_kind_folder_is_a_known_kind():
    folders = {entry.name for entry in files("email_templates").iterdir() if entry.is_dir()}
    assert folders - {"_base", "__pycache__"} == set(KINDS)


def test_html_autoescapes_and_text_does_not():
    environment = template_environment()
    assert environment.autoescape("expiry-notice/body.it.html") is True
    assert environment.autoescape("expiry-notice/body.it.txt") is False


# -- Every kind, language and size --------------------------------------------------------


@pytest.mark.parametrize("count", [1, 3])
@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize("kind", tuple(STAGE_FOR))
def test_renders_with_exact_headers(renderer, signer, kind, language, count):
    rendered = render(renderer, kind, language=language, count=count)
    raw = rendered.as_bytes()
    message = parse(raw)

    addresses = [mailbox["address"] for mailbox in mailboxes(count, kind=kind)]
    assert message["From"] == MAIL_FROM
    assert message["To"] == "mario.rossi@example.it"
    assert len(message["To"].addresses) == 1
    assert message["Subject"] == rendered.subject
    assert message["Date"] == "Sun, 31 Jan 2027 06:00:00 +0100"
    assert message["Message-ID"] == "<0123456789abcdef0123456789abcdef@pec-provider.example.it>"
    assert message["Auto-Submitted"] == "auto-generated"
    assert message["X-PEC-Renewal-Kind"] == kind
    assert message["X-PEC-Renewal-Stage"] == STAGE_FOR[kind]
    assert message["X-PEC-Renewal-Mailboxes"] == ",".join(addresses)
    if kind in REMINDER_KINDS:  # RFC 2369 and RFC 8058 one-click
        unsubscribe = re.fullmatch(rf"<{re.escape(BASE_URL)}/avvisi/([A-Za-z0-9_\-.]+)>", message["List-Unsubscribe"])
        assert signer.read_reminders_token(unsubscribe.group(1)) == rendered.message_id
        assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    else:  # receipts, order and charge emails are not reminders
        assert message["List-Unsubscribe"] is None and message["List-Unsubscribe-Post"] is None
    assert message["MIME-Version"] == "1.0"
    assert message.get_content_type() == "multipart/alternative"
    assert [part.get_content_type() for part in message.iter_parts()] == ["text/plain", "text/html"]
    assert all(part.get_content_charset() == "utf-8" for part in message.iter_parts())
    assert rendered.sender == "rinnovi@pec-provider.example.it"
    assert rendered.recipient == "mario.rossi@example.it"

    # The wire format: ASCII only, CRLF line ends only, short lines, one-line subject, no defects.
    assert raw.isascii()
    # Two headers may run longer: the list of mailboxes, and the List-Unsubscribe URL (a URL is
    # not folded), within RFC 5322's 998 characters.
    long_headers = (b"X-PEC-Renewal-Mailboxes:", b"List-Unsubscribe:")
    assert all(len(line) <= 78 for line in raw.split(b"\r\n") if not line.startswith(long_headers))
    assert all(len(line) <= 998 for line in raw.split(b"\r\n"))
    assert message.defects == [] and all(part.defects == [] for part in message.iter_parts())
    assert b"\n" not in raw.replace(b"\r\n", b"")
    assert "\n" not in rendered.subject and rendered.subject.strip() == rendered.subject

    text, html = parts(message)
    assert text == rendered.text and "Mario Rossi" in text
    assert "<style" not in html and 'style="' in html  # CSS inlined
    for address in addresses:
        assert address in text and address in html
    footer = "messaggio automatico" if language == "it" else "automatic message"
    assert footer in text and footer in html

    links = LINK_RE.findall(text)
    if kind == "domain-expiry-notice":
        assert links == [] and "/rinnova/" not in html
        assert "rossi-srl.example.it" in text and "Hosting" in text
    else:
        assert len(links) == count
        assert LINK_RE.findall(html) == links
        expected = [RenewalLink(MAILBOX, mailbox["id"], date(2027, 3, 31)) for mailbox in mailboxes(count, kind=kind)]
        assert [signer.read_renewal_token(token) for token in links] == expected


@pytest.mark.parametrize(
    ("kind", "stage", "language", "count", "subject"),
    [
        ("expiry-notice", "-2m", "it", 1, "La casella PEC mario@pec.example.it scade il 31 marzo 2027"),
        ("expiry-notice", "-2m", "it", 3, "3 caselle PEC scadono il 31 marzo 2027"),
        ("expiry-notice", "0d", "it", 1, "La casella PEC mario@pec.example.it scade oggi"),
        ("expiry-notice", "0d", "it", 3, "3 caselle PEC scadono oggi"),
        ("expiry-notice", "-2m", "en", 1, "Your PEC mailbox mario@pec.example.it expires on 31 March 2027"),
        ("expiry-notice", "0d", "en", 3, "3 PEC mailboxes expire today"),
        (
            "expired-notice",
            "+1d",
            "it",
            1,
            "La casella PEC mario@pec.example.it è scaduta: può rinnovarla entro il 29 giugno 2027",
        ),
        ("expired-notice", "+83d", "it", 3, "3 caselle PEC scadute: può rinnovarle entro il 29 giugno 2027"),
        (
            "expired-notice",
            "+1d",
            "en",
            1,
            "Your PEC mailbox mario@pec.example.it has expired: you can renew it until 29 June 2027",
        ),
        (
            "domain-expiry-notice",
            "-1m",
            "it",
            1,
            "La casella PEC mario@pec.rossi-srl.example.it scade il 31 marzo 2027 con il dominio rossi-srl.example.it",
        ),
        (
            "domain-expiry-notice",
            "+30d",
            "it",
            3,
            "3 caselle PEC su dominio scadute: rinnovi il dominio rossi-srl.example.it",
        ),
        (
            "domain-expiry-notice",
            "0d",
            "en",
            1,
            "Your PEC mailbox mario@pec.rossi-srl.example.it expires today with the domain rossi-srl.example.it",
        ),
    ],
)
def test_subjects_read_well_for_one_and_several(renderer, kind, stage, language, count, subject):
    rendered = render(renderer, kind, stage=stage, language=language, count=count)
    assert rendered.subject == subject
    assert parse(rendered.as_bytes())["Subject"] == subject  # RFC 2047 round trip for "è"


def test_several_expiry_dates_make_a_generic_subject(renderer):
    boxes = mailboxes(3)
    boxes[2]["expires_on"] = "2027-03-30"
    rendered = render(renderer, context={"holder_name": None, "mailboxes": boxes})
    assert rendered.subject == "3 caselle PEC in scadenza"
    assert "Gentile Cliente," in rendered.text
    assert "30 marzo 2027" in rendered.text and "31 marzo 2027" in rendered.text


def test_expiry_notice_wording(renderer):
    early = render(renderer, stage="-1m").text
    assert "almeno 15 giorni prima della scadenza" in early
    assert "carta di credito o PayPal, si attiva il rinnovo automatico" in early
    today = render(renderer, stage="0d").text
    assert "scade oggi, 31 marzo 2027" in today
    english = render(renderer, stage="-15d", language="en").text
    assert "at least 15 days before expiry" in english and "automatic renewal is switched on" in english


def test_expired_notice_says_what_works_and_the_deletion_date(renderer):
    text = render(renderer, "expired-notice", stage="+60d").text
    assert "riceve ancora i messaggi" in text and "non può inviarne" in text
    assert "entro il 29 giugno 2027" in text  # the 90th day after 31 March: the last renewable day
    assert "sarà cancellata il 30 giugno 2027" in text  # the 91st: deletion
    assert "acquistata di nuovo" in text


def test_domain_notice_after_expiry_has_no_order_but_the_deletion_date(renderer):
    text = render(renderer, "domain-expiry-notice", stage="+1d", language="en").text
    assert "renew the domain rossi-srl.example.it in the Hosting customer area" in text
    assert "deleted on 30 June 2027" in text
    assert "/rinnova/" not in text


def test_dates_in_the_holders_language():
    assert format_long_date(date(2027, 3, 31), "it") == "31 marzo 2027"
    assert format_long_date(date(2027, 3, 31), "en") == "31 March 2027"
    assert format_long_date(date(2027, 3, 1), "it") == "1º marzo 2027"
    assert format_long_date(date(2027, 3, 1), "en") == "1 March 2027"
    assert format_date_with_article(date(2027, 12, 25), "it") == "il 25 dicembre 2027"
    assert format_date_with_article(date(2027, 8, 8), "it") == "l'8 agosto 2027"
    assert format_date_with_article(date(2027, 1, 11), "it") == "l'11 gennaio 2027"
    assert format_date_with_article(date(2027, 1, 1), "it") == "il 1º gennaio 2027"
    assert format_date_with_article(date(2027, 1, 11), "en") == "11 January 2027"


def test_english_text_has_no_italian_months_and_vice_versa(renderer):
    english = render(renderer, "expired-notice", language="en", count=3)
    italian = render(renderer, "expired-notice", language="it", count=3)
    assert "29 June 2027" in english.text and "giugno" not in english.text + english.html
    assert "29 giugno 2027" in italian.text and "June" not in italian.text + italian.html


# -- Injection and escaping ---------------------------------------------------------------


def test_hostile_holder_name_is_escaped_in_html_and_absent_from_headers(renderer):
    rendered = render(renderer, holder_name=HOSTILE_NAME + "\r\nBcc: victim@example.it")
    raw = rendered.as_bytes()
    header_block = raw.split(b"\r\n\r\n", 1)[0].decode("ascii")
    message = parse(raw)
    text, html = parts(message)

    assert "<script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "script" not in header_block.lower() and "alert" not in header_block
    assert "Bcc" not in header_block and message["Bcc"] is None
    assert all("script" not in str(value) for value in message.values())
    assert len(message["To"].addresses) == 1
    assert HOSTILE_NAME in text  # plain text needs no escaping, but stays on one line
    assert "\r\nBcc" not in text and "Bcc: victim@example.it" in text


@pytest.mark.parametrize(
    "to_address",
    [
        "mario@example.it\r\nBcc: victim@example.it",
        "mario@example.it\nBcc: victim@example.it",
        "mario@example.it\r",
        "mario@example.it, victim@example.it",
        "Mario <mario@example.it>",
        "mario",
    ],
)
def test_bad_to_address_is_refused(renderer, to_address):
    with pytest.raises(ValueError):
        render(renderer, to_address=to_address)


def test_line_breaks_anywhere_in_header_values_are_refused(renderer, signer):
    boxes = mailboxes(1)
    boxes[0]["address"] = "mario@pec.example.it\r\nX-Evil: 1"
    with pytest.raises(ValueError):
        render(renderer, context={"holder_name": None, "mailboxes": boxes})
    with pytest.raises(ValueError):
        render(renderer, message_id="abc@example.it\r\nX-Evil: 1")
    with pytest.raises(ValueError):
        render(renderer, stage="-2m\r\nX-Evil: 1")
    domain_boxes = mailboxes(1, kind="domain-expiry-notice")
    domain_boxes[0]["domain"] = "example.it\nX-Evil: 1"
    with pytest.raises(ValueError):
        render(renderer, "domain-expiry-notice", context={"holder_name": None, "mailboxes": domain_boxes})
    with pytest.raises(ValueError):
        EmailRenderer(mail_from="Rinnovi <rinnovi@example.it>\r\nBcc: x@example.it", signer=signer)


@pytest.mark.parametrize(
    ("overrides", "error"),
    [
        ({"kind": "welcome"}, "unknown email kind"),
        ({"language": "de"}, "language 'de'"),
        ({"stage": "+30d"}, "falls after expiry"),
        ({"kind": "expired-notice", "stage": "-1m"}, "falls before expiry"),
        ({"now": datetime(2027, 1, 31, 6, 0)}, "aware datetime"),
        ({"context": {"holder_name": None, "mailboxes": []}}, "no mailboxes"),
        (
            {
                "context": {
                    "holder_name": None,
                    "mailboxes": [{"id": 1, "address": "a@example.it", "expires_on": "2027-02-30", "plan": "pro"}],
                }
            },
            "not a date",
        ),
        (
            {
                "context": {
                    "holder_name": None,
                    "mailboxes": [{"id": 1, "address": "a@example.it", "expires_on": "2027-02-03", "plan": "gold"}],
                }
            },
            "plan 'gold'",
        ),
        (
            {"kind": "domain-expiry-notice", "context": {"holder_name": None, "mailboxes": mailboxes(1)}},
            "needs the domain",
        ),
    ],
)
def test_bad_input_is_refused(renderer, overrides, error):
    with pytest.raises(ValueError, match=re.escape(error)):
        render(renderer, **overrides)


def test_a_rendered_email_refuses_line_breaks_however_it_is_built(renderer):
    rendered = render(renderer)
    with pytest.raises(ValueError):
        dataclasses.replace(rendered, subject="Hello\r\nBcc: victim@example.it")
    with pytest.raises(ValueError):
        dataclasses.replace(rendered, mailbox_addresses=("a@example.it\nX: 1",))


def test_unicode_sender_name_and_domain_are_encoded(signer):
    renderer = EmailRenderer(mail_from="Rinnovi PEC Città <rinnovi@pec-provider.example.it>", signer=signer)
    rendered = render(renderer, to_address="mario@università.example.it")
    raw = rendered.as_bytes()
    assert raw.isascii()
    message = parse(raw)
    assert message["From"] == "Rinnovi PEC Città <rinnovi@pec-provider.example.it>"
    assert message["To"] == "mario@xn--universit-y1a.example.it"
    assert rendered.recipient == "mario@xn--universit-y1a.example.it"


# -- Message-ID ---------------------------------------------------------------------------


def test_message_id_is_stable_across_key_order():
    keys = [(101, "2027-03-31", "-2m"), (102, "2027-03-31", "-2m"), (103, "2027-03-30", "-2m")]
    first = message_id_for(keys, "pec-provider.example.it", installation_id=INSTALLATION)
    assert message_id_for(list(reversed(keys)), "pec-provider.example.it", installation_id=INSTALLATION) == first
    assert message_id_for([keys[1], keys[2], keys[0]], "pec-provider.example.it", installation_id=INSTALLATION) == first
    assert re.fullmatch(r"[0-9a-f]{32}@pec-provider\.example\.it", first)


def test_message_id_differs_for_other_keys():
    base = message_id_for([(101, "2027-03-31", "-2m")], "example.it", installation_id=INSTALLATION)
    assert message_id_for([(101, "2027-03-31", "-1m")], "example.it", installation_id=INSTALLATION) != base
    assert message_id_for([(102, "2027-03-31", "-2m")], "example.it", installation_id=INSTALLATION) != base
    assert message_id_for([(101, "2028-03-31", "-2m")], "example.it", installation_id=INSTALLATION) != base
    both = [(101, "2027-03-31", "-2m"), (102, "2027-03-31", "-2m")]
    assert message_id_for(both, "example.it", installation_id=INSTALLATION) != base


def test_message_id_refuses_bad_input():
    with pytest.raises(ValueError):
        message_id_for([], "example.it", installation_id=INSTALLATION)
    with pytest.raises(ValueError):
        message_id_for([(1, "2027-03-31", "-2m")], "example.it\r\nX: y", installation_id=INSTALLATION)
    with pytest.raises(ValueError):
        message_id_for([(1, "2027-02-30", "-2m")], "example.it", installation_id=INSTALLATION)


def test_rendered_message_id_is_used_as_given(renderer):
    message_id = message_id_for(
        [(102, "2027-03-31", "-2m"), (101, "2027-03-31", "-2m")],
        "pec-provider.example.it",
        installation_id=INSTALLATION,
    )
    rendered = render(renderer, count=2, message_id=message_id)
    assert parse(rendered.as_bytes())["Message-ID"] == f"<{message_id}>"


# -- Folding ------------------------------------------------------------------------------


def test_a_long_mailbox_list_folds_within_the_rfc_limit(renderer):
    boxes = [
        {
            "id": number,
            "address": f"casella-{number}@pec.studio-legale-associato-rossi-bianchi.example.it",
            "expires_on": "2027-03-31",
            "plan": "pro",
            "domain": None,
        }
        for number in range(40)
    ]
    rendered = render(renderer, "expired-notice", context={"holder_name": None, "mailboxes": boxes})
    raw = rendered.as_bytes()
    head_lines = raw.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    assert max(len(line) for line in head_lines) <= 998
    assert sum(line.startswith(b" casella-") for line in head_lines) >= 2  # folded after a comma
    message = parse(raw)
    assert [item.strip() for item in message["X-PEC-Renewal-Mailboxes"].split(",")] == [b["address"] for b in boxes]
    assert message["Subject"] == rendered.subject == "40 caselle PEC scadute: può rinnovarle entro il 29 giugno 2027"


@pytest.mark.parametrize(
    "holder_domain",
    ["università-degli-studi.example.it", "ààààààààààààààààààààààààààààààààààààààà.example.it"],
)
def test_non_ascii_subjects_encode_without_splitting_a_character(renderer, holder_domain):
    boxes = mailboxes(1, kind="domain-expiry-notice")
    boxes[0]["domain"] = holder_domain  # shown in the subject as it is
    rendered = render(renderer, "domain-expiry-notice", stage="+1d", context={"holder_name": None, "mailboxes": boxes})
    raw = rendered.as_bytes()
    assert raw.isascii()
    subject_lines = [line for line in raw.split(b"\r\n\r\n", 1)[0].split(b"\r\n") if b"=?utf-8?b?" in line]
    assert len(subject_lines) > 1 and all(len(line) <= 78 for line in subject_lines)
    assert parse(raw)["Subject"] == rendered.subject
    assert holder_domain in rendered.subject


def render_every_notice() -> bytes:
    """Every notice kind in both languages for three mailboxes, with its Message-ID from its ledger keys,
    rendered by a new renderer at ``NOW`` (also the signing time of the links: itsdangerous reads the clock)."""
    renderer = EmailRenderer(mail_from=MAIL_FROM, signer=LinkSigner(SECRET_KEYS, BASE_URL, max_age_days=200))
    emails = []
    with time_machine.travel(NOW, tick=False):
        for kind, stage in STAGE_FOR.items():
            keys = [(mailbox["id"], mailbox["expires_on"], stage) for mailbox in mailboxes(3, kind=kind)]
            message_id = message_id_for(keys, "pec-provider.example.it", installation_id=INSTALLATION)
            for language in LANGUAGES:
                emails.append(render(renderer, kind, language=language, count=3, message_id=message_id).as_bytes())
    return b"".join(emails)


#: A new interpreter that renders and writes the bytes to its standard output.
RENDER_IN_A_NEW_PROCESS = (
    "import sys; from tests.test_emails import render_every_notice; sys.stdout.buffer.write(render_every_notice())"
)


def test_the_output_is_the_same_in_two_processes():
    """Rendered twice here and once in each of two new processes (each with its own string hashes):
    the same bytes, so nothing in a message (boundary, Message-ID, links, order of parts) depends
    on the process that renders it."""
    outputs = []
    for hash_seed in ("1", "2"):
        done = subprocess.run(
            [sys.executable, "-c", RENDER_IN_A_NEW_PROCESS],
            cwd=ROOT,
            env={**os.environ, "PYTHONHASHSEED": hash_seed},
            capture_output=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr.decode(errors="replace")
        outputs.append(done.stdout)
    here = render_every_notice()
    assert here.count(b"\r\nMessage-ID: <") == len(STAGE_FOR) * len(LANGUAGES)
    assert render_every_notice() == here
    assert outputs[0] == here
    assert outputs[1] == here


@pytest.mark.parametrize(
    "subject",
    [
        "Le sue caselle PEC scadono il 26 gennaio 2027",
        "x" * 69,  # "Subject: " + 69 characters: exactly 78 columns
        "x" * 70,
        " ".join(["rinnovo"] * 20),
        'a=?b ;c: (d) "e"',
    ],
)
def test_ascii_subjects_are_folded_as_the_email_package_folds_them(subject):
    expected = "Subject: " + Header(subject, "us-ascii", header_name="Subject").encode(linesep="\r\n")
    assert folded_subject(subject) == expected


def test_a_celery_worker_compiles_the_templates_before_its_pool_forks():
    compiled_templates.cache_clear()
    worker_init.send(sender=None)
    assert compiled_templates.cache_info().currsize == 1

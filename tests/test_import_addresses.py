"""The import refuses, at the door, an address mail cannot be sent to and a date out of range.

Both paths (the normal one and PostgreSQL's bulk load into an empty fleet),
the one-line problems, exit 2 from the command, and the rule shared with the
renderer (``holder_data.sendable_address``).
"""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from email_validator import validate_email
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from tests.support.importing import count, make_csv, refusal, row, run
from tests.support.settings import TEST_SECRET_KEYS
from worker.cli.main import main
from worker.rules import holder_data
from worker.rules.holder_data import normalise_email, sendable_address
from worker.store.models import Mailbox

CYRILLIC_E = "\u0435"  # looks like "e"
FULL_WIDTH_E = "\uff45"


def domain_row(number: int, **changes: str) -> dict[str, str]:
    values = {
        "address": f"box{number}@pec.theirdomain.it",
        "expires_on": "",
        "domain": "theirdomain.it",
        "domain_expires_on": "2027-05-31",
    }
    return row(number, **{**values, **changes})


BAD_ADDRESSES = [
    (
        {"address": f"us{CYRILLIC_E}r3@pec.example.it"},
        f"line 2, column address: 'us{CYRILLIC_E}r3@pec.example.it' cannot be sent: the part before the @ has"
        f" '{CYRILLIC_E}' (U+0435 CYRILLIC SMALL LETTER IE): mail to it needs SMTPUTF8, which the relay and the"
        " mailers do not use",
    ),
    (
        {"reference_email": f"mario.ross{CYRILLIC_E}@example.it"},
        f"line 2, column reference_email: 'mario.ross{CYRILLIC_E}@example.it' cannot be sent: the part before the @"
        f" has '{CYRILLIC_E}' (U+0435 CYRILLIC SMALL LETTER IE): mail to it needs SMTPUTF8, which the relay and the"
        " mailers do not use",
    ),
    (
        {"reference_email": f"mario@{FULL_WIDTH_E}xample.it"},
        f"line 2, column reference_email: 'mario@{FULL_WIDTH_E}xample.it' cannot be sent: '{FULL_WIDTH_E}' (U+FF45"
        " FULLWIDTH LATIN SMALL LETTER E) is a compatibility form of 'e', as in a look-alike of another address:"
        " write it with plain letters",
    ),
    (
        {"reference_email": "mario@ex\u0430mple.it"},
        "line 2, column reference_email: 'mario@ex\u0430mple.it' cannot be sent: 'ex\u0430mple' mixes scripts: 'e'"
        " (U+0065 LATIN SMALL LETTER E) and '\u0430' (U+0430 CYRILLIC SMALL LETTER A) are letters of different"
        " scripts, as in a look-alike of another address",
    ),
    (
        # The same look-alike, written in Punycode.
        {"reference_email": "mario@xn--exmple-4nf.it"},
        "line 2, column reference_email: 'mario@xn--exmple-4nf.it' cannot be sent: 'ex\u0430mple' mixes scripts: 'e'"
        " (U+0065 LATIN SMALL LETTER E) and '\u0430' (U+0430 CYRILLIC SMALL LETTER A) are letters of different"
        " scripts, as in a look-alike of another address",
    ),
    (
        {"address": "u" * 65 + "@pec.example.it"},
        f"line 2, column address: '{'u' * 65}@pec.example.it' cannot be sent: the part before the @ is 65 characters"
        " long; at most 64",
    ),
    (
        {"reference_email": "\u03c1\u03bf\u03c3\u03c3\u03b9@example.it"},  # Greek letters before the @
        "line 2, column reference_email: '\u03c1\u03bf\u03c3\u03c3\u03b9@example.it' cannot be sent: the part before"
        " the @ has '\u03c1' (U+03C1 GREEK SMALL LETTER RHO): mail to it needs SMTPUTF8, which the relay and the"
        " mailers do not use",
    ),
]


@pytest.mark.parametrize(("changes", "expected"), BAD_ADDRESSES, ids=range(len(BAD_ADDRESSES)))
def test_an_address_that_cannot_be_sent_is_refused(session_factory, changes, expected):
    assert refusal(session_factory, make_csv(row(1), row(2, **changes))) == [expected.replace("line 2", "line 3")]
    assert count(session_factory, Mailbox) == 0


def test_an_address_over_254_characters_is_refused(session_factory):
    """Counted in ASCII, the form the SMTP envelope carries: an internationalised domain in Punycode."""
    ascii_address = "m" * 64 + "@" + "d" * 63 + "." + "e" * 63 + "." + "f" * 59 + ".it"
    label = "".join(chr(0x4E00 + 997 * index) for index in range(16))  # 16 characters, 52 in Punycode
    idn_address = "m" * 40 + "@" + ".".join([label] * 4) + ".jp"
    assert (len(ascii_address), len(idn_address), len(sendable_address("m@" + ".".join([label] * 4) + ".jp"))) == (
        255,
        111,
        216,
    )
    problems = refusal(
        session_factory, make_csv(row(1, reference_email=ascii_address), row(2, reference_email=idn_address))
    )
    assert problems == [
        f"line 2, column reference_email: {ascii_address!r} is not a valid email address:"
        " The email address is too long (1 character too many).",
        f"line 3, column reference_email: {idn_address!r} is not a valid email address:"
        " The email address is too long when the part after the @-sign is converted to IDNA ASCII (1 byte too many).",
    ]
    with pytest.raises(ValueError, match="it is 255 characters long in ASCII; at most 254"):
        sendable_address(idn_address)


@pytest.mark.parametrize(
    "address",
    [
        "mario@b\u00fccher.it",
        "mario@xn--bcher-kva.it",
        "mario@\u043f\u0440\u0438\u043c\u0435\u0440.\u0440\u0444",
        "mario@sony\u306e\u97f3\u697d.jp",
        "u" * 64 + "@example.it",
    ],
)
def test_single_script_and_cjk_domains_and_a_64_character_local_part_are_taken(session_factory, address):
    report = run(session_factory, make_csv(row(1, reference_email=address)))
    assert report.created == 1
    assert sendable_address(normalise_email(address)).isascii()


@pytest.mark.parametrize(
    ("changes", "column", "value"),
    [
        ({"expires_on": "0001-01-01"}, "expires_on", "'0001-01-01' is not in the years 2000 to 2199"),
        ({"expires_on": "9999-12-31"}, "expires_on", "'9999-12-31' is not in the years 2000 to 2199"),
        ({"expires_on": "1999-12-31"}, "expires_on", "'1999-12-31' is not in the years 2000 to 2199"),
        ({"expires_on": "2200-01-01"}, "expires_on", "'2200-01-01' is not in the years 2000 to 2199"),
        ({"card_expiry": "0001-01"}, "card_expiry", "'0001-01' is not in the years 2000 to 2199"),
        ({"card_expiry": "9999-12"}, "card_expiry", "'9999-12' is not in the years 2000 to 2199"),
    ],
)
def test_a_date_out_of_range_is_refused_on_its_line(session_factory, changes, column, value):
    assert refusal(session_factory, make_csv(row(1), row(2, **changes))) == [f"line 3, column {column}: {value}"]


def test_a_domain_expiry_out_of_range_is_refused(session_factory):
    assert refusal(session_factory, make_csv(domain_row(1, domain_expires_on="9999-12-31"))) == [
        "line 2, column domain_expires_on: '9999-12-31' is not in the years 2000 to 2199"
    ]


def test_the_ends_of_the_date_range_are_taken(session_factory):
    report = run(
        session_factory,
        make_csv(row(1, expires_on="2000-01-01"), row(2, expires_on="2199-12-31", card_expiry="2199-12")),
    )
    assert report.created == 2


def test_the_bulk_load_path_refuses_the_same_rows(session_factory, bulk_starts):
    """An empty fleet takes the bulk-load path: the row checks are the same, and nothing is left."""
    text = make_csv(row(1), row(2, address=f"us{CYRILLIC_E}r@pec.example.it"), row(3, expires_on="9999-12-31"))
    problems = refusal(session_factory, text)
    assert bulk_starts == [True]
    assert [problem.partition(":")[0] for problem in problems] == [
        "line 3, column address",
        "line 4, column expires_on",
    ]
    assert count(session_factory, Mailbox) == 0
    # The normal path (a fleet exists) says the same.
    run(session_factory, make_csv(row(9)))
    assert refusal(session_factory, text) == problems
    assert bulk_starts == [True, True, False]


def test_the_command_refuses_with_exit_2_and_one_line_per_problem(tmp_path, session_factory, database_url):
    source = tmp_path / "mailboxes.csv"
    source.write_text(
        make_csv(row(1, address=f"us{CYRILLIC_E}r3@pec.example.it"), row(2, expires_on="0001-01-01")), encoding="utf-8"
    )
    env = {
        "PEC_RENEWAL_VAR_DIR": str(tmp_path / "var"),
        "PEC_RENEWAL_DATABASE_URL": database_url,
        "PEC_RENEWAL_SECRET_KEYS": TEST_SECRET_KEYS,
    }
    result = CliRunner().invoke(main, ["import", "mailboxes", str(source)], env=env, catch_exceptions=False)
    assert result.exit_code == 2
    lines = result.stderr.splitlines()
    assert [line.partition(":")[0] for line in lines[:2]] == ["line 2, column address", "line 3, column expires_on"]
    assert lines[2] == f"pec-renewal: {source}: 2 problem(s); nothing was imported"
    assert "Traceback" not in result.output
    assert count(session_factory, Mailbox) == 0


# -- The rule the renderer shares ---------------------------------------------------------------


_ADDRESSES = st.one_of(
    st.emails(),
    st.builds(
        lambda local, domain: f"{local}@{domain}",
        st.text(
            st.characters(codec="utf-8", exclude_categories=("Cs", "Cc", "Zs", "Zl", "Zp")), min_size=1, max_size=70
        ),
        st.sampled_from(
            [
                "example.it",
                "b\u00fccher.it",
                "ex\u0430mple.it",
                f"{FULL_WIDTH_E}xample.it",
                "xn--exmple-4nf.it",
                "\u043f\u0440\u0438\u043c\u0435\u0440.\u0440\u0444",
                "\u4f8b\u3048.jp",
                "x" * 63 + "." + "y" * 63 + "." + "z" * 60 + ".it",
            ]
        ),
    ),
)


@given(address=_ADDRESSES)
@hypothesis_settings(max_examples=1500, deadline=None)
def test_whatever_the_import_takes_can_be_sent(address):
    """An address the import (or the order form) takes passes the renderer's rule, in an ASCII envelope."""
    try:
        taken = normalise_email(address)
    except ValueError:
        return
    envelope = sendable_address(taken)
    assert envelope.isascii() and len(envelope) <= holder_data.ADDRESS_MAX
    assert len(envelope.rpartition("@")[0]) <= holder_data.LOCAL_PART_MAX
    # email-validator agrees that it is valid, and so it is: the import is only stricter.
    assert validate_email(address.strip(), check_deliverability=False).normalized.lower() == taken


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("a\nb@example.it", "it is not one plain address"),
        ("a b@example.it", "it is not one plain address"),
        ("=?utf-8?q?x?=@example.it", "it contains '=?', the start of an encoded word"),
        (f"us{CYRILLIC_E}r@example.it", "needs SMTPUTF8"),
        ("a" * 65 + "@example.it", "at most 64"),
        (f"mario@{FULL_WIDTH_E}xample.it", "compatibility form"),
        ("mario@ex\u0430mple.it", "mixes scripts"),
    ],
)
def test_sendable_address_says_why_not(address, why):
    with pytest.raises(ValueError, match="cannot be sent: ") as refused:
        sendable_address(address)
    assert why in str(refused.value)


def test_sendable_address_gives_the_ascii_envelope_form():
    assert sendable_address("mario@b\u00fccher.it") == "mario@xn--bcher-kva.it"
    assert sendable_address("mario@fa\u00df.de") == "mario@xn--fa-hia.de"  # IDNA 2008, not 2003's "fass.de"
    assert sendable_address("Mario.Rossi@Example.IT") == "Mario.Rossi@Example.IT"

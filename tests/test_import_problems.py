"""The mailbox import's refusals: a bad value's line and column, rules across rows, the header and the file's bytes."""

from __future__ import annotations

import pytest

from tests.support.importing import (
    AGENCY_TAX_CODE,
    BASE,
    TAX_CODE,
    VAT,
    count,
    holder_of,
    make_csv,
    refusal,
    row,
    run,
)
from worker.rules.schedule import DEFAULT_STAGES
from worker.services.importer import ImportRefused, ImportReport, import_mailboxes
from worker.store.models import Account, Holder, Mailbox

# --------------------------------------------------------------------------
# One bad value: the exact line and column


DOMAIN_COLUMNS = {"domain": "", "domain_expires_on": ""}

BAD_VALUES = [
    (
        {"address": "not-an-email"},
        ["column address: 'not-an-email' is not a valid email address: An email address must have an @-sign."],
    ),
    ({"address": ""}, ["column address: is required"]),
    (
        {"address": "user2@example.test"},
        [
            "column address: 'user2@example.test' is not a valid email address: The part after the @-sign is a "
            "special-use or reserved name that cannot be used with email."
        ],
    ),
    (
        {"reference_email": "mario@example"},
        [
            "column reference_email: 'mario@example' is not a valid email address: The part after the @-sign is not "
            "valid. It should have a period."
        ],
    ),
    ({"reference_email": ""}, ["column reference_email: is required"]),
    ({"account": ""}, ["column account: is required"]),
    ({"account": "mario rossi"}, ["column account: 'mario rossi' contains a space"]),
    ({"account": "m" * 255}, ["column account: is 255 characters long; at most 254"]),
    ({"holder_name": ""}, ["column holder_name: is required"]),
    ({"holder_name": "M" * 201}, ["column holder_name: is 201 characters long; at most 200"]),
    (
        {"holder_kind": "alien"},
        [
            "column holder_kind: 'alien' is not one of private, sole_proprietor, company, professional, "
            "public_administration"
        ],
    ),
    ({"holder_kind": ""}, ["column holder_kind: is required"]),
    ({"plan": "gold"}, ["column plan: 'gold' is not a plan: one of standard, pro, premium"]),
    ({"plan": ""}, ["column plan: is required"]),
    ({"expires_on": "2027-02-29"}, ["column expires_on: '2027-02-29' is not a real date as YYYY-MM-DD"]),
    ({"expires_on": "20270301"}, ["column expires_on: '20270301' is not a real date as YYYY-MM-DD"]),
    ({"expires_on": "31/03/2027"}, ["column expires_on: '31/03/2027' is not a real date as YYYY-MM-DD"]),
    ({"expires_on": "2027-W13-1"}, ["column expires_on: '2027-W13-1' is not a real date as YYYY-MM-DD"]),
    (
        {"expires_on": ""},
        ["column expires_on: is required (for a mailbox on a customer domain: domain and domain_expires_on)"],
    ),
    ({"auto_renew": "yes"}, ["column auto_renew: 'yes' is not true or false"]),
    ({"auto_renew": "true"}, ["column auto_renew: is true but payment_method is empty"]),
    (
        {"payment_method": "pm card visa"},
        ["column payment_method: 'pm card visa' is not a payment token: 1 to 200 letters, digits, '_', '-' or '.'"],
    ),
    (
        {"payment_method": "pm/visa"},
        ["column payment_method: 'pm/visa' is not a payment token: 1 to 200 letters, digits, '_', '-' or '.'"],
    ),
    ({"card_expiry": "2027-13"}, ["column card_expiry: '2027-13' is not a month as YYYY-MM"]),
    ({"card_expiry": "07/2027"}, ["column card_expiry: '07/2027' is not a month as YYYY-MM"]),
    ({"renewal_years": "0"}, ["column renewal_years: 0 is not a number of years from 1 to 5"]),
    ({"renewal_years": "6"}, ["column renewal_years: 6 is not a number of years from 1 to 5"]),
    ({"renewal_years": "two"}, ["column renewal_years: 'two' is not a whole number of 0 or more"]),
    ({"promo": "true", "renewal_years": "3"}, ["column renewal_years: a promo mailbox renews for 1 or 2 years, not 3"]),
    ({"promo": "si"}, ["column promo: 'si' is not true or false"]),
    ({"extra_space_gb": "2"}, ["column extra_space_gb: standard allows at most 1 GB of extra space, not 2"]),
    ({"extra_space_gb": "-1"}, ["column extra_space_gb: '-1' is not a whole number of 0 or more"]),
    (
        {"extra_archive_gb": "1"},
        ["column extra_archive_gb: standard has no archive: extra archive space is only for pro and premium"],
    ),
    ({"extra_archive_gb": "1.5", "plan": "pro"}, ["column extra_archive_gb: '1.5' is not a whole number of 0 or more"]),
    ({"used_space_mb": "3000000000"}, ["column used_space_mb: 3000000000 is too large"]),
    ({"used_space_mb": "lots"}, ["column used_space_mb: 'lots' is not a whole number of 0 or more"]),
    ({"language": "fr"}, ["column language: 'fr' is not a language: it or en"]),
    ({"tax_code": "RSSMRA80A01H501A"}, ["column tax_code: 'RSSMRA80A01H501A' fails the codice fiscale checksum"]),
    (
        {"holder_kind": "company"},
        [
            "column vat_number: is required for a company: its partita IVA",
            "column einvoice_code: is required for a company: a 7-character SDI code or a PEC address",
        ],
    ),
    (
        {"holder_kind": "professional", "vat_number": "12345678901", "einvoice_code": "0000000"},
        ["column vat_number: '12345678901' fails the partita IVA checksum"],
    ),
    (
        {"holder_kind": "sole_proprietor", "vat_number": VAT, "einvoice_code": "ABC123"},
        ["column einvoice_code: 'ABC123' is neither a 7-character SDI code nor a PEC address"],
    ),
    (
        {"holder_kind": "public_administration"},
        [
            "column tax_code: is required for a public administration: its 11-digit codice fiscale",
            "column einvoice_code: is required for a public administration: its 6-character office code",
        ],
    ),
    (
        {"holder_kind": "public_administration", "tax_code": TAX_CODE, "einvoice_code": "0000000"},
        [
            "column tax_code: 'RSSMRA80A01H501U' is not the 11-digit codice fiscale of a public administration",
            "column einvoice_code: '0000000' is not an office code (codice univoco ufficio): it has 6 letters or "
            "digits",
        ],
    ),
    ({"cig": "Z1A2B3C4D5"}, ["column cig: is only for a public administration"]),
    (
        {"holder_kind": "public_administration", "tax_code": AGENCY_TAX_CODE, "einvoice_code": "UF3XQ2", "cup": "J71"},
        ["column cup: 'J71' is not a CUP: it has 15 letters or digits"],
    ),
    ({"postal_address": "V" * 301}, ["column postal_address: is 301 characters long; at most 300"]),
    ({"holder_name": "Mario\nRossi"}, ["column holder_name: contains a line break"]),
    ({"postal_address": "Via Roma 1\r00100 Roma"}, ["column postal_address: contains a line break"]),
    ({"holder_name": "Mario\tRossi"}, ["column holder_name: contains the control character U+0009"]),
    ({"payment_method": "pm_card_visa\x00"}, ["column payment_method: contains the control character U+0000"]),
    ({"account": "mario\x85"}, ["column account: contains the control character U+0085"]),
    # Mailboxes on a customer domain.
    (
        {**DOMAIN_COLUMNS, "address": "info@pec.example.it", "domain": "example.it", "domain_expires_on": "2027-05-31"},
        ["column expires_on: must be empty for a mailbox on a domain: it takes the domain's expiry, domain_expires_on"],
    ),
    (
        {**DOMAIN_COLUMNS, "domain": "example.it", "expires_on": ""},
        ["column domain_expires_on: is required for a mailbox on a domain"],
    ),
    (
        {**DOMAIN_COLUMNS, "domain_expires_on": "2027-05-31", "expires_on": ""},
        ["column domain_expires_on: is only for a mailbox on a domain: give domain too, or use expires_on"],
    ),
    (
        {**DOMAIN_COLUMNS, "domain_expires_on": "2027-05-31"},
        ["column domain_expires_on: is only for a mailbox on a domain: give domain too, or use expires_on"],
    ),
    (
        {
            **DOMAIN_COLUMNS,
            "address": "info@pec.other.it",
            "domain": "example.it",
            "domain_expires_on": "2027-05-31",
            "expires_on": "",
        },
        ["column domain: the address info@pec.other.it is not on example.it"],
    ),
    (
        {
            **DOMAIN_COLUMNS,
            "address": "info@notexample.it",
            "domain": "example.it",
            "domain_expires_on": "2027-05-31",
            "expires_on": "",
        },
        ["column domain: the address info@notexample.it is not on example.it"],
    ),
    (
        {**DOMAIN_COLUMNS, "domain": "not a domain", "domain_expires_on": "2027-05-31", "expires_on": ""},
        ["column domain: 'not a domain' is not a domain name such as example.it"],
    ),
    (
        {**DOMAIN_COLUMNS, "domain": "example.it", "domain_expires_on": "2027-06-31", "expires_on": ""},
        ["column domain_expires_on: '2027-06-31' is not a real date as YYYY-MM-DD"],
    ),
    (
        {
            **DOMAIN_COLUMNS,
            "domain": "example.it",
            "domain_expires_on": "2027-05-31",
            "expires_on": "",
            "auto_renew": "true",
            "payment_method": "pm_card_visa",
        },
        ["column auto_renew: must be false for a mailbox on a domain: it is renewed with its domain"],
    ),
]


@pytest.mark.parametrize(
    ("changes", "expected"), BAD_VALUES, ids=[f"{i}-{'-'.join(c)}" for i, (c, _) in enumerate(BAD_VALUES)]
)
def test_a_bad_value_is_refused_with_its_line_and_column(session_factory, changes, expected):
    text = make_csv(row(1), row(2, **changes), row(3))
    assert refusal(session_factory, text) == [f"line 3, {message}" for message in expected]
    assert count(session_factory, Mailbox) == 0


def test_a_file_with_one_bad_row_imports_nothing(session_factory):
    rows = [row(number) for number in range(1, 30)]
    rows[20] = row(21, plan="platinum")
    assert refusal(session_factory, make_csv(*rows)) == [
        "line 22, column plan: 'platinum' is not a plan: one of standard, pro, premium"
    ]
    assert (count(session_factory, Mailbox), count(session_factory, Account), count(session_factory, Holder)) == (
        0,
        0,
        0,
    )


def test_every_problem_is_listed_in_file_order(session_factory):
    text = make_csv(
        row(1, plan="gold"),
        row(2),
        row(3, expires_on="2027-02-30", holder_kind="company", vat_number="123"),
        row(4, language="de"),
    )
    assert refusal(session_factory, text) == [
        "line 2, column plan: 'gold' is not a plan: one of standard, pro, premium",
        "line 4, column expires_on: '2027-02-30' is not a real date as YYYY-MM-DD",
        "line 4, column vat_number: '123' is not a partita IVA: it has 11 digits",
        "line 4, column einvoice_code: is required for a company: a 7-character SDI code or a PEC address",
        "line 5, column language: 'de' is not a language: it or en",
    ]


# --------------------------------------------------------------------------
# Rules across rows


def test_a_duplicate_address_names_the_earlier_line(session_factory):
    text = make_csv(row(1), row(2), row(1, holder_name="Someone Else"), row(4, address="USER2@PEC.Example.it"))
    assert refusal(session_factory, text) == [
        "line 4, column address: user1@pec.example.it is already on line 2",
        "line 5, column address: user2@pec.example.it is already on line 3",
    ]


def test_one_domain_with_two_expiries_is_refused(session_factory):
    domain_row = {"expires_on": "", "domain": "example.it"}
    text = make_csv(
        row(1, address="a@pec.example.it", domain_expires_on="2027-05-31", **domain_row),
        row(2, address="b@pec.example.it", domain_expires_on="2027-05-31", **domain_row),
        row(3, address="c@pec.example.it", domain_expires_on="2027-06-30", **domain_row),
    )
    assert refusal(session_factory, text) == [
        "line 4, column domain_expires_on: 2027-06-30 differs from 2027-05-31 given for example.it on line 2"
    ]


# --------------------------------------------------------------------------
# The header and the bytes of the file


def test_a_missing_required_column(session_factory):
    text = make_csv(row(1), columns=[column for column in BASE if column != "plan"])
    assert refusal(session_factory, text) == ["line 1, column plan: is missing from the header"]


def test_an_unknown_column_with_a_suggestion(session_factory):
    columns = [column if column != "expires_on" else "expiry_on" for column in BASE] + ["colour"]
    assert refusal(session_factory, make_csv(row(1), columns=columns)) == [
        "line 1, column expiry_on: is not a known column; did you mean expires_on?",
        "line 1, column colour: is not a known column",
        "line 1, column expires_on: is missing from the header (or, for mailboxes on a customer domain, give domain "
        "and domain_expires_on)",
    ]


def test_a_duplicate_column(session_factory):
    assert refusal(session_factory, make_csv(row(1), columns=[*BASE, "plan"])) == [
        "line 1, column plan: is in the header twice"
    ]


def test_an_empty_header_cell(session_factory):
    assert refusal(session_factory, make_csv(row(1), columns=[*BASE, ""])) == [
        "line 1, column #8: the header cell is empty: name the column or remove it"
    ]


def test_domain_without_domain_expires_on_in_the_header(session_factory):
    columns = [column for column in BASE if column != "expires_on"] + ["domain"]
    assert refusal(session_factory, make_csv(row(1), columns=columns)) == [
        "line 1, column domain_expires_on: is missing from the header: a domain needs its expiry"
    ]


def test_domain_expires_on_without_domain_in_the_header(session_factory):
    columns = [column for column in BASE if column != "expires_on"] + ["domain_expires_on"]
    assert refusal(session_factory, make_csv(row(1), columns=columns)) == [
        "line 1, column domain: is missing from the header: domain_expires_on needs it"
    ]


@pytest.mark.parametrize("text", ["", "\n", " , ,\n"])
def test_an_empty_file(session_factory, text):
    assert refusal(session_factory, text) == ["line 1: the file is empty: the first line must name the columns"]


def test_a_header_without_rows_imports_nothing(session_factory):
    assert run(session_factory, make_csv(columns=list(BASE))) == ImportReport(
        rows=0, created=0, updated=0, domains=0, warnings=[]
    )


def test_header_names_are_trimmed_and_case_insensitive(session_factory):
    text = make_csv(row(1), columns=list(BASE)).replace("address,account", " Address ,ACCOUNT", 1)
    assert run(session_factory, text).created == 1


def test_a_record_with_too_many_or_too_few_fields(session_factory):
    header = ",".join(BASE)
    good = ",".join(row(1).values())
    too_many = f"{good.replace('user1', 'user2')},extra"
    too_few = good.replace("user1", "user3").rsplit(",", 2)[0]
    text = f"{header}\n{good}\n{too_many}\n{too_few}\n"
    assert refusal(session_factory, text) == [
        "line 3, column expires_on: the record has 8 fields but the header has 7 (quote values that contain a comma)",
        "line 4, column plan: the record has 5 fields but the header has 7 (quote values that contain a comma)",
    ]


def test_an_unclosed_quote_is_reported_on_its_line(session_factory):
    header = ",".join(BASE)
    good = ",".join(row(1).values())
    unclosed = 'user2@pec.example.it,mario.rossi,"Mario Rossi,private,m@example.it,standard,2027-03-31'
    text = f"{header}\n{good}\n{unclosed}\n{good.replace('user1', 'user3')}\n"
    assert refusal(session_factory, text) == [
        "line 3, column holder_name: contains a line break",
        "line 3, column holder_kind: the record has 3 fields but the header has 7 (quote values that contain a comma)",
    ]


def test_bytes_that_are_not_utf8_are_reported_per_cell(session_factory, tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes(make_csv(row(1), row(2, holder_name="Niccolò Rossi"), row(3)).encode("latin-1"))
    with pytest.raises(ImportRefused) as refused:
        import_mailboxes(session_factory, path, stages=DEFAULT_STAGES)
    assert [str(error) for error in refused.value.errors] == [
        "line 3, column holder_name: is not UTF-8 (byte 0xF2 at character 7): save the file as UTF-8"
    ]


def test_bytes_that_are_not_utf8_in_the_header(session_factory, tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes(make_csv(row(1)).encode().replace(b"plan", b"pl\xe0n"))
    with pytest.raises(ImportRefused) as refused:
        import_mailboxes(session_factory, path, stages=DEFAULT_STAGES)
    assert [str(error) for error in refused.value.errors] == [
        "line 1, column pl\ufffdn: is not UTF-8 (byte 0xE0 at character 3): save the file as UTF-8",
        "line 1, column plan: is missing from the header",
    ]


def test_a_file_with_a_byte_order_mark_imports(session_factory, tmp_path):
    path = tmp_path / "excel.csv"
    path.write_bytes(make_csv(row(1, holder_name="Niccolò Rossi")).encode("utf-8-sig"))
    assert import_mailboxes(session_factory, path, stages=DEFAULT_STAGES).created == 1
    assert holder_of(session_factory, "user1@pec.example.it").name == "Niccolò Rossi"


def test_blank_lines_are_skipped_but_counted(session_factory):
    header, first = make_csv(row(1)).splitlines()
    text = f"{header}\n{first}\n\n,,,,,,\n{make_csv(row(5, plan='gold')).splitlines()[1]}\n"
    assert refusal(session_factory, text) == [
        "line 5, column plan: 'gold' is not a plan: one of standard, pro, premium"
    ]


def test_a_row_with_a_control_character_is_still_checked_whole(session_factory):
    text = make_csv(row(1, holder_name="Mario\tRossi", plan="gold", expires_on="2027-13-01"))
    assert refusal(session_factory, text) == [
        "line 2, column holder_name: contains the control character U+0009",
        "line 2, column plan: 'gold' is not a plan: one of standard, pro, premium",
        "line 2, column expires_on: '2027-13-01' is not a real date as YYYY-MM-DD",
    ]


def test_a_record_the_csv_reader_refuses_is_reported_and_reading_goes_on(session_factory):
    # A bare CR in an unquoted field of a stream that was not opened with newline="".
    header, first = make_csv(row(1)).splitlines()
    broken = first.replace("user1", "user2").replace("Mario Rossi", "Mario\rRossi")
    text = f"{header}\n{first}\n{broken}\n{make_csv(row(4, plan='gold')).splitlines()[1]}\n"
    assert refusal(session_factory, text) == [
        "line 3: cannot be read as CSV: new-line character seen in unquoted field"
        " - do you need to open the file in universal-newline mode?",
        "line 4, column plan: 'gold' is not a plan: one of standard, pro, premium",
    ]

"""Holder data: the rules by holder kind, with real (generated) tax codes and VAT numbers."""

from __future__ import annotations

import pytest
from email_validator import validate_email
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from stdnum import luhn
from stdnum.it import codicefiscale

from worker.rules.holder_data import HolderData, HolderProblem, check_holder, normalise_email


def vat_number(first_ten: str) -> str:
    """A partita IVA with a correct check digit (the Luhn algorithm)."""
    return first_ten + luhn.calc_check_digit(first_ten)


def personal_tax_code(first_fifteen: str) -> str:
    """A 16-character codice fiscale with a correct check character."""
    return first_fifteen + codicefiscale.calc_check_digit(first_fifteen)


def wrong_check(code: str) -> str:
    """The same code with a wrong last character."""
    last = code[-1]
    replacement = ("1" if last != "1" else "2") if last.isdigit() else ("A" if last != "A" else "B")
    return code[:-1] + replacement


VAT = vat_number("0074311015")  # 00743110157
OTHER_VAT = vat_number("1234567001")
TAX_CODE = personal_tax_code("RSSMRA80A01H501")  # RSSMRA80A01H501U
WOMAN_TAX_CODE = personal_tax_code("BNCLRA85T41F205")
AGENCY_TAX_CODE = vat_number("8000125058")  # 80001250580, an 11-digit numeric codice fiscale


def test_generated_codes_are_valid():
    assert VAT == "00743110157"
    assert TAX_CODE == "RSSMRA80A01H501U"
    assert codicefiscale.is_valid(WOMAN_TAX_CODE)
    assert AGENCY_TAX_CODE == "80001250580"
    assert codicefiscale.is_valid(AGENCY_TAX_CODE)


def check(**fields) -> tuple[HolderData | None, list[HolderProblem]]:
    values = {"name": "Mario Rossi", "kind": "private", "reference_email": "mario@example.it"}
    values.update(fields)
    return check_holder(**values)


def problems(**fields) -> list[tuple[str, str]]:
    data, found = check(**fields)
    assert data is None
    return [(problem.field, problem.message) for problem in found]


# --- private -----------------------------------------------------------------


def test_private_needs_nothing_more():
    data, found = check(name="  Mario Rossi ", reference_email=" Mario.Rossi@Example.IT ")
    assert found == []
    assert data == HolderData(name="Mario Rossi", kind="private", reference_email="mario.rossi@example.it")


def test_private_tax_code_is_normalised():
    data, found = check(tax_code=" rssmra 80a01 h501u ")
    assert found == []
    assert data.tax_code == "RSSMRA80A01H501U"


def test_private_tax_code_of_a_woman():
    data, found = check(tax_code=WOMAN_TAX_CODE)
    assert found == []
    assert data.tax_code == WOMAN_TAX_CODE


def test_private_tax_code_with_a_wrong_check_character():
    assert problems(tax_code=wrong_check(TAX_CODE)) == [
        ("tax_code", "'RSSMRA80A01H501A' fails the codice fiscale checksum")
    ]


@pytest.mark.parametrize(
    ("tax_code", "message"),
    [
        ("RSSMRA80", "'RSSMRA80' is not a codice fiscale: it has 16 characters (a person) or 11 digits"),
        ("1RSMRA80A01H501U", "'1RSMRA80A01H501U' is not a valid codice fiscale: it should look like RSSMRA80A01H501U"),
        (
            personal_tax_code("RSSMRA80A32H501"),
            "'RSSMRA80A32H501C' is not a valid codice fiscale: its birth date does not exist",
        ),
        ("00743110158", "'00743110158' fails the codice fiscale checksum"),
        (
            vat_number("0074311000"),
            "'00743110009' is not a valid 11-digit codice fiscale:"
            " digits 8 to 10 (000) are not a provincial office code (001-100, 120, 121, 888 or 999)",
        ),
    ],
)
def test_bad_tax_codes(tax_code, message):
    assert problems(tax_code=tax_code) == [("tax_code", message)]


def test_private_may_give_an_einvoice_code():
    data, found = check(einvoice_code="abc1234")
    assert found == []
    assert data.sdi_code == "ABC1234"


# --- sole proprietor, company, professional ---------------------------------


@pytest.mark.parametrize(
    ("kind", "label"),
    [("sole_proprietor", "a sole proprietor"), ("company", "a company"), ("professional", "a professional")],
)
def test_business_kinds_need_a_vat_number_and_an_einvoice_code(kind, label):
    assert problems(kind=kind) == [
        ("vat_number", f"is required for {label}: its partita IVA"),
        ("einvoice_code", f"is required for {label}: a 7-character SDI code or a PEC address"),
    ]


def test_company_with_an_sdi_code():
    data, found = check(
        kind="company", name="ACME Srl", vat_number=f" IT {VAT} ", einvoice_code=" m5uxcr1 ", tax_code=VAT
    )
    assert found == []
    assert data == HolderData(
        name="ACME Srl",
        kind="company",
        reference_email="mario@example.it",
        tax_code=VAT,
        vat_number=VAT,
        sdi_code="M5UXCR1",
    )


def test_company_with_the_zero_sdi_code():
    data, found = check(kind="company", vat_number=VAT, einvoice_code="0000000")
    assert found == []
    assert (data.sdi_code, data.einvoice_pec, data.office_code) == ("0000000", None, None)


def test_professional_with_a_pec_address():
    data, found = check(kind="professional", vat_number=OTHER_VAT, einvoice_code="Fatture@PEC.Studio-Rossi.it")
    assert found == []
    assert (data.sdi_code, data.einvoice_pec, data.office_code) == (None, "fatture@pec.studio-rossi.it", None)


def test_sole_proprietor_with_a_personal_tax_code():
    data, found = check(kind="sole_proprietor", vat_number=VAT, einvoice_code="0000000", tax_code=TAX_CODE)
    assert found == []
    assert data.tax_code == TAX_CODE


@pytest.mark.parametrize(
    ("vat", "message"),
    [
        (wrong_check(VAT), "'00743110151' fails the partita IVA checksum"),
        ("12345678901", "'12345678901' fails the partita IVA checksum"),
        ("0074311015", "'0074311015' is not a partita IVA: it has 11 digits"),
        ("ABCDEFGHIJK", "'ABCDEFGHIJK' is not a partita IVA: it has 11 digits"),
        (
            vat_number("0074311000"),
            "'00743110009' is not a valid partita IVA:"
            " digits 8 to 10 (000) are not a provincial office code (001-100, 120, 121, 888 or 999)",
        ),
        (
            vat_number("1234567890"),
            "'12345678903' is not a valid partita IVA:"
            " digits 8 to 10 (890) are not a provincial office code (001-100, 120, 121, 888 or 999)",
        ),
        ("00000000000", "'00000000000' is not a valid partita IVA: the company number (digits 1 to 7) is zero"),
    ],
)
def test_bad_vat_numbers(vat, message):
    assert problems(kind="company", vat_number=vat, einvoice_code="0000000") == [("vat_number", message)]


def test_a_private_vat_number_is_checked_too():
    assert problems(vat_number="12345678901") == [("vat_number", "'12345678901' fails the partita IVA checksum")]


@pytest.mark.parametrize(
    ("code", "message"),
    [
        ("ABC123", "'ABC123' is neither a 7-character SDI code nor a PEC address"),
        ("ABC12345", "'ABC12345' is neither a 7-character SDI code nor a PEC address"),
        ("ABC-123", "'ABC-123' is neither a 7-character SDI code nor a PEC address"),
        (
            "fatture@pec",
            "'fatture@pec' is not a valid PEC address: The part after the @-sign is not valid. It should have a period.",
        ),
    ],
)
def test_bad_einvoice_codes_for_a_company(code, message):
    assert problems(kind="company", vat_number=VAT, einvoice_code=code) == [("einvoice_code", message)]


# --- public administration -------------------------------------------------


def test_public_administration_needs_a_numeric_tax_code_and_an_office_code():
    assert problems(kind="public_administration") == [
        ("tax_code", "is required for a public administration: its 11-digit codice fiscale"),
        ("einvoice_code", "is required for a public administration: its 6-character office code"),
    ]


def test_public_administration_with_cig_and_cup():
    data, found = check(
        kind="public_administration",
        name="Comune di Esempio",
        tax_code=AGENCY_TAX_CODE,
        einvoice_code="uf3xq2",
        cig="z1a2b3c4d5",
        cup="J71B19000010005",
        postal_address="Piazza del Municipio 1, 00100 Roma",
    )
    assert found == []
    assert data == HolderData(
        name="Comune di Esempio",
        kind="public_administration",
        reference_email="mario@example.it",
        tax_code=AGENCY_TAX_CODE,
        postal_address="Piazza del Municipio 1, 00100 Roma",
        office_code="UF3XQ2",
        cig="Z1A2B3C4D5",
        cup="J71B19000010005",
    )


def test_public_administration_refuses_a_personal_tax_code():
    assert problems(kind="public_administration", tax_code=TAX_CODE, einvoice_code="UF3XQ2") == [
        ("tax_code", "'RSSMRA80A01H501U' is not the 11-digit codice fiscale of a public administration")
    ]


def test_public_administration_tax_code_checksum():
    assert problems(kind="public_administration", tax_code=wrong_check(AGENCY_TAX_CODE), einvoice_code="UF3XQ2") == [
        ("tax_code", f"'{wrong_check(AGENCY_TAX_CODE)}' fails the codice fiscale checksum")
    ]


@pytest.mark.parametrize("code", ["0000000", "UF3XQ", "UF-3XQ", "pa@pec.comune.example.it"])
def test_public_administration_refuses_anything_but_an_office_code(code):
    assert problems(kind="public_administration", tax_code=AGENCY_TAX_CODE, einvoice_code=code) == [
        ("einvoice_code", f"{code!r} is not an office code (codice univoco ufficio): it has 6 letters or digits")
    ]


def test_cig_and_cup_only_for_a_public_administration():
    assert problems(cig="Z1A2B3C4D5", cup="J71B19000010005") == [
        ("cig", "is only for a public administration"),
        ("cup", "is only for a public administration"),
    ]


def test_bad_cig_and_cup():
    assert problems(
        kind="public_administration", tax_code=AGENCY_TAX_CODE, einvoice_code="UF3XQ2", cig="Z1", cup="J71B"
    ) == [
        ("cig", "'Z1' is not a CIG: it has 10 letters or digits"),
        ("cup", "'J71B' is not a CUP: it has 15 letters or digits"),
    ]


# --- every kind ------------------------------------------------------------


def test_required_fields():
    assert check_holder(name=" ", kind=None, reference_email="") == (
        None,
        [
            HolderProblem("name", "is required"),
            HolderProblem("kind", "is required"),
            HolderProblem("reference_email", "is required"),
        ],
    )


def test_unknown_kind():
    assert problems(kind="alien") == [
        ("kind", "'alien' is not one of private, sole_proprietor, company, professional, public_administration")
    ]


def test_kind_is_case_insensitive():
    data, _ = check(kind="Company", vat_number=VAT, einvoice_code="0000000")
    assert data.kind == "company"


@pytest.mark.parametrize(
    ("email", "message"),
    [
        ("mario", "'mario' is not a valid email address: An email address must have an @-sign."),
        (
            "mario@example.test",
            "'mario@example.test' is not a valid email address: The part after the @-sign is a special-use or reserved name that cannot be used with email.",
        ),
        (
            "mario..rossi@example.it",
            "'mario..rossi@example.it' is not a valid email address: An email address cannot have two periods in a row.",
        ),
    ],
)
def test_bad_reference_emails(email, message):
    assert problems(reference_email=email) == [("reference_email", message)]


def test_name_and_postal_address_limits():
    assert problems(name="x" * 201, postal_address="y" * 301) == [
        ("name", "is 201 characters long; at most 200"),
        ("postal_address", "is 301 characters long; at most 300"),
    ]


def test_control_characters_are_refused():
    assert problems(name="Mario\tRossi", postal_address="Via Roma 1\n00100 Roma") == [
        ("name", "contains a control character"),
        ("postal_address", "contains a control character"),
    ]


def test_holder_key_is_a_digest_of_the_normalised_data():
    first, _ = check(name="Mario Rossi", reference_email="MARIO@example.it", tax_code=TAX_CODE.lower())
    second, _ = check(name=" Mario Rossi ", reference_email="mario@EXAMPLE.IT", tax_code=TAX_CODE)
    other, _ = check(name="Mario Rossi", reference_email="mario@example.it")
    assert len(first.holder_key) == 64 and int(first.holder_key, 16) >= 0
    assert first.holder_key == second.holder_key
    assert first.holder_key != other.holder_key


@pytest.mark.parametrize(
    "address",
    [
        "Mario.Rossi@PEC.Example.IT",
        "a+b_c-d!#$%&'*/=^?`{|}~@example.it",
        "x@xn--bcher-kva.it",
        "mario@bücher.it",
        "mario.@example.it",
        ".mario@example.it",
        '"quoted local"@example.it',
        "mario@example.it.",
        "mario@-example.it",
        "mario@localhost",
        "mario@[127.0.0.1]",
        "a" * 64 + "@example.it",  # 65 is refused here, not by email-validator: tests/test_import_addresses.py
        "a@" + "b" * 250 + ".it",
        "mario@@example.it",
    ],
)
def test_normalise_email_agrees_with_email_validator(address):
    """The fast path for plain addresses gives what email-validator gives (for addresses mail can be sent to)."""
    try:
        expected = validate_email(address, check_deliverability=False).normalized.lower()
    except Exception as error:
        with pytest.raises(ValueError) as refused:
            normalise_email(address)
        assert str(refused.value) == f"{address!r} is not a valid email address: {error}"
    else:
        assert normalise_email(address) == expected


def test_an_address_with_an_encoded_word_is_refused():
    with pytest.raises(ValueError, match="contains '=\\?', the start of an encoded word"):
        normalise_email("=?utf-8?b?DQpCY2M6IHhAZXZpbC5leGFtcGxl?=@example.it")
    assert normalise_email("a=b?c@example.it") == "a=b?c@example.it"


# The fast path for plain domains must accept exactly what email-validator accepts.
_LABELS = st.one_of(
    st.text(alphabet="abcxyzABZ0189-", min_size=0, max_size=8),
    st.sampled_from(["xn--bcher-kva", "xn--", "ab--cd", "a--b", "-a", "a-", "1", "x" * 63, "x" * 64, "q"]),
)
_TLDS = st.one_of(
    _LABELS,
    st.sampled_from(
        [
            "it",
            "IT",
            "test",
            "local",
            "localhost",
            "invalid",
            "arpa",
            "onion",
            "example",
            "home",
            "lan",
            "123",
            "a1",
            "1a",
        ]
    ),
)
_DOMAINS = st.builds(
    lambda labels, tld, tail: ".".join([*labels, tld]) + tail,
    st.lists(_LABELS, min_size=0, max_size=4),
    _TLDS,
    st.sampled_from(["", "", "", ".", ".."]),
)


@given(local=st.sampled_from(["mario", "Mario.Rossi", "a+b", "x" * 64]), domain=_DOMAINS, padding=st.integers(0, 250))
@hypothesis_settings(max_examples=3000, deadline=None)
def test_normalise_email_fast_path_agrees_with_email_validator(local, domain, padding):
    """The fast path's own check of a plain domain gives email-validator's verdict, on any domain."""
    if padding > 200:  # long domains, near the 253-character limit
        domain = "d" * (padding - 200) + "." + "e" * 63 + "." + "f" * 63 + "." + "g" * 60 + "." + domain
    address = f"{local}@{domain}"
    try:
        expected = validate_email(address, check_deliverability=False).normalized.lower()
    except Exception as error:
        with pytest.raises(ValueError) as refused:
            normalise_email(address)
        assert str(refused.value) == f"{address!r} is not a valid email address: {error}"
    else:
        assert normalise_email(address) == expected

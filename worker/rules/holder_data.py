"""Holder data ("Dati intestatario"): pure validation and normalisation.

Shared by the CSV import and the order form.  Nothing here touches the
database: :func:`check_holder` takes the raw text of each field and returns
either normalised :class:`HolderData` or the list of problems, each naming the
field it is about, worded for the operator or holder who has to fix it.

Rules by holder kind:

- every kind: a name and a valid reference email; a tax code, when given,
  must pass its checksum (16 characters for a person, 11 digits otherwise);
- ``sole_proprietor``, ``company``, ``professional``: a VAT number (partita
  IVA, 11 digits with checksum) and an e-invoicing code: a 7-character SDI
  recipient code (``0000000`` allowed) or a PEC address;
- ``public_administration``: an 11-digit tax code and a 6-character office
  code (codice univoco ufficio), optionally a CIG and a CUP.

An email address is taken only if mail can be sent to it
(:func:`sendable_address`, the one definition the renderer shares): an ASCII
local part of at most 64 characters (a non-ASCII one needs SMTPUTF8, which
the relay and the mailers do not use), at most 254 characters in all, no
compatibility forms (full-width letters and the like) and, in each part of
the domain, letters of one script (or Latin with Chinese, Japanese or Korean
writing), so that a look-alike of another address is refused.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple

import idna
import regex
from email_validator import SPECIAL_USE_DOMAIN_NAMES, EmailNotValidError, validate_email
from stdnum import luhn
from stdnum.exceptions import InvalidChecksum, InvalidComponent, ValidationError
from stdnum.it import codicefiscale, iva

from worker.rules.billing_address import check_billing_address
from worker.rules.vocabulary import BUSINESS_KINDS, HOLDER_KINDS, PRIVATE, PUBLIC_ADMINISTRATION

#: Each kind by its lower-case name (one string object for every holder of a kind).
_KINDS = {kind: kind for kind in HOLDER_KINDS}

NAME_MAX = 200
POSTAL_ADDRESS_MAX = 300

_KIND_LABELS = {
    "sole_proprietor": "a sole proprietor",
    "company": "a company",
    "professional": "a professional",
    PUBLIC_ADMINISTRATION: "a public administration",
}
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")
#: An unquoted ASCII local part (RFC 5322 dot-atom), as email-validator has it.
_DOT_ATOM_RE = re.compile(r"[A-Za-z0-9_!#$%&'*+\-/=?^`{|}~]+(?:\.[A-Za-z0-9_!#$%&'*+\-/=?^`{|}~]+)*")
#: A plain lower-case ASCII domain that email-validator takes as it is: labels of 1 to 63
#: letters, digits or inner hyphens, at least two of them, the last ending with a letter.
_PLAIN_DOMAIN_RE = re.compile(r"(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+(?:[a-z]|[a-z0-9][a-z0-9-]{0,61}[a-z])")
#: Labels such as "ab--cd" (reserved, or Punycode "xn--"), which email-validator checks further.
_HYPHENS_AT_3_RE = re.compile(r"(?:^|\.)..--")
_SPECIAL_USE_DOMAINS = frozenset(SPECIAL_USE_DOMAIN_NAMES)
#: The most labels a special-use name has (1 today: ``test``, ``local`` …).
_SPECIAL_USE_LABELS = max(name.count(".") + 1 for name in _SPECIAL_USE_DOMAINS)
_SDI_CODE_RE = re.compile(r"[A-Z0-9]{7}")
_OFFICE_CODE_RE = re.compile(r"[A-Z0-9]{6}")
_CIG_RE = re.compile(r"[A-Z0-9]{10}")
_CUP_RE = re.compile(r"[A-Z0-9]{15}")

#: RFC 5321, 4.5.3.1: a local part of at most 64 octets, a path of at most 256 (the address and its "<>").
LOCAL_PART_MAX = 64
ADDRESS_MAX = 254
#: One plain address: no space, no second @, nothing a header would read as a list, a comment or a group.
_PLAIN_ADDRESS_RE = re.compile(r'[^\s@<>(),;:"\[\]\\]+@[^\s@<>(),;:"\[\]\\]+')
#: The Unicode scripts, by their ISO 15924 codes (Common and Inherited left out: digits, the
#: hyphen and combining marks go with any script).  A code the installed ``regex`` does not know
#: (a script newer than its Unicode) is passed over: such letters count as no script.
_SCRIPT_CODES = """
Adlm Aghb Ahom Arab Armi Armn Avst Bali Bamu Bass Batk Beng Berf Bhks Bopo Brah Brai Bugi Buhd Cakm
Cans Cari Cham Cher Chrs Copt Cpmn Cprt Cyrl Deva Diak Dogr Dsrt Dupl Egyp Elba Elym Ethi Gara Geor
Glag Gong Gonm Goth Gran Grek Gujr Gukh Guru Hang Hani Hano Hatr Hebr Hira Hluw Hmng Hmnp Hung Ital
Java Jurc Kali Kana Kawi Khar Khmr Khoj Kits Knda Krai Kthi Lana Laoo Latn Lepc Limb Lina Linb Lisu
Lyci Lydi Mahj Maka Mand Mani Marc Medf Mend Merc Mero Miao Mlym Modi Mong Mroo Mtei Mult Mymr Nagm
Nand Narb Nbat Newa Nkoo Nshu Ogam Olck Onao Orkh Orya Osge Osma Ougr Palm Pauc Pcun Perm Phag Phli
Phlp Phnx Prti Rjng Rohg Runr Samr Sarb Saur Seal Sgnw Shaw Shrd Sidd Sidt Sind Sinh Sogd Sogo Sora
Soyo Sund Sunu Sylo Syrc Tagb Takr Tale Talu Taml Tang Tavt Tayo Telu Tfng Tglg Thaa Thai Tibt Tirh
Tnsa Todr Tols Toto Tutg Ugar Vaii Vith Wara Wcho Xpeo Xsux Yezi Yiii Zanb
""".split()
#: The scripts one part of a domain may mix (Unicode TS #39, "highly restrictive"): Latin with
#: the scripts of Japanese, Chinese or Korean writing.  Any other mix is refused.
_SCRIPT_MIXES = (
    frozenset({"Latn", "Hani", "Hira", "Kana"}),
    frozenset({"Latn", "Hani", "Bopo"}),
    frozenset({"Latn", "Hani", "Hang"}),
)


def _script_pattern() -> regex.Pattern[str]:
    """One pattern whose matching group names the script of a character (no match: Common, Inherited)."""
    groups = []
    for code in _SCRIPT_CODES:
        try:
            regex.compile(rf"\p{{Script={code}}}")
        except regex.error:
            continue
        groups.append(rf"(?P<{code}>\p{{Script={code}}})")
    return regex.compile("|".join(groups))


_SCRIPT_RE = _script_pattern()


class HolderProblem(NamedTuple):
    """One thing wrong with one field.  ``field`` is an argument name of :func:`check_holder`."""

    field: str
    message: str


@dataclass(frozen=True, slots=True)
class HolderData:
    """Normalised holder data, with the e-invoicing code sorted into its column."""

    name: str
    kind: str
    reference_email: str
    tax_code: str | None = None
    vat_number: str | None = None
    postal_address: str | None = None
    sdi_code: str | None = None
    einvoice_pec: str | None = None
    office_code: str | None = None
    cig: str | None = None
    cup: str | None = None
    #: The billing address of the electronic invoices: street, postcode, city and country together
    #: (the province for Italy); all None when not given.
    billing_address: str | None = None
    billing_postcode: str | None = None
    billing_city: str | None = None
    billing_province: str | None = None
    billing_country: str | None = None

    @property
    def holder_key(self) -> str:
        """A sha256 hex digest of every field: equal holder data, equal key.

        The billing fields count only when given, so a holder without them keeps the key it had
        before they existed."""
        fields: tuple[str | None, ...] = (
            self.name,
            self.kind,
            self.reference_email,
            self.tax_code,
            self.vat_number,
            self.postal_address,
            self.sdi_code,
            self.einvoice_pec,
            self.office_code,
            self.cig,
            self.cup,
        )
        if self.billing_address is not None:
            fields += (
                self.billing_address,
                self.billing_postcode,
                self.billing_city,
                self.billing_province,
                self.billing_country,
            )
        text = "\x1f".join(["" if value is None else value for value in fields])
        return hashlib.sha256(text.encode()).hexdigest()


def normalise_email(text: str) -> str:
    """A valid email address that mail can be sent to, lower-cased; ValueError with the reason otherwise.

    Valid: as email-validator says.  Sendable: as :func:`sendable_address`
    says, for the address as given (a full-width letter, which email-validator
    would quietly turn into a plain one, is refused) and as normalised.  The
    common case, a plain ASCII address, takes a fast path that checks the
    domain with email-validator once per domain (such an address is always
    sendable); anything else goes through email-validator whole.  Both give
    the same answer.
    """
    if "=?" in text:
        # Valid characters, but an encoded word ("=?utf-8?…?=") in our headers
        # would be decoded by mail readers into arbitrary text.
        raise ValueError(f"{text!r} is not accepted: it contains '=?', the start of an encoded word")
    stripped = text.strip()
    local, _, domain = stripped.rpartition("@")
    if (
        len(stripped) <= ADDRESS_MAX
        and len(local) <= LOCAL_PART_MAX
        and domain.isascii()
        and _DOT_ATOM_RE.fullmatch(local)
    ):
        normalised_domain = _normalised_domain(domain)
        if normalised_domain is not None:
            normalised = f"{local}@{normalised_domain}".lower()
            if not normalised_domain.isascii():  # Punycode labels ("xn--"), now in Unicode
                _refuse_unsendable(text, normalised)
            return normalised
    try:
        normalised = validate_email(stripped, check_deliverability=False).normalized.lower()
    except EmailNotValidError as error:
        raise ValueError(f"{text!r} is not a valid email address: {error}") from None
    if not stripped.isascii():
        _refuse_unsendable(text, stripped)
    _refuse_unsendable(text, normalised)
    return normalised


def _refuse_unsendable(text: str, address: str) -> None:
    """ValueError naming ``text`` (as given) when ``address`` (a form of it) cannot be sent."""
    problem = _send_check(address)[1]
    if problem is not None:
        raise ValueError(f"{text!r} cannot be sent: {problem}")


def sendable_address(address: str) -> str:
    """``address`` as the SMTP envelope and the message headers carry it; ValueError saying why mail cannot go to it.

    The one definition of an address this worker can send to, for the import
    and the order form (which refuse any other address at the door, through
    :func:`normalise_email`) and for the renderer, which must not put any
    other in a header.  It is not a full syntax check (email-validator does
    that at the door); it refuses:

    - anything but one plain address, and ``=?`` (an encoded word, which a
      mail reader would decode into any text);
    - a local part outside ASCII: mail to it needs SMTPUTF8 (RFC 6531), which
      the relay and the mailers do not use, and which PEC providers' gateways
      commonly do not offer either;
    - a local part over 64 characters, or an address over 254 (RFC 5321) in
      its ASCII form;
    - a compatibility form (a character that NFKC normalisation changes, such
      as a full-width letter);
    - in one part of the domain (a label, Punycode decoded), letters of more
      than one script, unless Latin with Han and Hiragana or Katakana
      (Japanese), Bopomofo (Chinese) or Hangul (Korean).

    Returns the local part as it is and the domain in its ASCII (IDNA 2008)
    form.
    """
    ascii_address, problem = _send_check(address)
    if problem is not None:
        raise ValueError(f"{address!r} cannot be sent: {problem}")
    assert ascii_address is not None
    return ascii_address


def _describe(char: str) -> str:
    return f"{char!r} (U+{ord(char):04X} {unicodedata.name(char, 'unnamed character')})"


@lru_cache(maxsize=65536)
def _send_check(address: str) -> tuple[str | None, str | None]:
    """``(the ASCII form, None)``, or ``(None, why mail cannot be sent to address)``."""
    if not isinstance(address, str) or not _PLAIN_ADDRESS_RE.fullmatch(address):
        return None, "it is not one plain address"
    if "=?" in address:
        return None, "it contains '=?', the start of an encoded word"
    local, _, domain = address.rpartition("@")
    if not local.isascii():
        char = next(char for char in local if not char.isascii())
        return None, (
            f"the part before the @ has {_describe(char)}: mail to it needs SMTPUTF8,"
            " which the relay and the mailers do not use"
        )
    if len(local) > LOCAL_PART_MAX:
        return None, f"the part before the @ is {len(local)} characters long; at most {LOCAL_PART_MAX}"
    ascii_domain = domain
    if not domain.isascii():
        for char in domain:
            if not char.isascii():
                plain = unicodedata.normalize("NFKC", char)
                if plain != unicodedata.normalize("NFC", char):
                    return None, (
                        f"{_describe(char)} is a compatibility form of {plain!r}, as in a look-alike"
                        " of another address: write it with plain letters"
                    )
        try:
            ascii_domain = idna.encode(domain, uts46=True).decode("ascii")
        except idna.IDNAError as error:
            return None, f"the domain {domain!r} has no ASCII (IDNA) form: {error}"
    for label in ascii_domain.split("."):
        if label[:4].lower() != "xn--":
            continue
        try:
            unicode_label = idna.decode(label)
        except idna.IDNAError:
            return None, f"the domain has {label!r}, which is not a valid internationalised name"
        problem = _mixed_scripts(unicode_label)
        if problem is not None:
            return None, problem
    if len(local) + 1 + len(ascii_domain) > ADDRESS_MAX:
        return None, f"it is {len(local) + 1 + len(ascii_domain)} characters long in ASCII; at most {ADDRESS_MAX}"
    return f"{local}@{ascii_domain}", None


def _mixed_scripts(label: str) -> str | None:
    """What is wrong with one part of a domain whose letters mix scripts (see :data:`_SCRIPT_MIXES`), or None."""
    first: dict[str, str] = {}  # script -> its first letter in the label
    for char in label:
        match = _SCRIPT_RE.match(char)
        if match is None or match.lastgroup in first:
            continue
        script = match.lastgroup
        assert script is not None  # every alternative of the pattern is a named group
        scripts = {*first, script}
        if len(scripts) > 1 and not any(scripts <= mix for mix in _SCRIPT_MIXES):
            other = next(iter(first.values()))
            return (
                f"{label!r} mixes scripts: {_describe(other)} and {_describe(char)} are letters of different"
                " scripts, as in a look-alike of another address"
            )
        first[script] = char
    return None


def _normalise_email(text: str) -> str:
    local, _, domain = text.rpartition("@")
    if len(text) <= 254 and len(local) <= 64 and domain.isascii() and _DOT_ATOM_RE.fullmatch(local):
        normalised_domain = _normalised_domain(domain)
        if normalised_domain is not None:
            return f"{local}@{normalised_domain}".lower()
    return validate_email(text, check_deliverability=False).normalized.lower()


@lru_cache(maxsize=65536)
def _normalised_domain(domain: str) -> str | None:
    """The domain of a valid address, lower-cased, or None when email-validator refuses it.

    A plain ASCII domain (most of them) is checked here, by the rules
    email-validator applies to one; a customer's own domain is often on a
    single line, and email-validator takes about 0.2 ms per domain.
    """
    name = domain.lower()
    if (
        len(name) <= 253
        and _PLAIN_DOMAIN_RE.fullmatch(name)
        and not _HYPHENS_AT_3_RE.search(name)
        and not _is_special_use(name)
    ):
        return name
    return _validated_domain(domain)


def _is_special_use(name: str) -> bool:
    """Whether ``name`` is, or is under, a special-use or reserved name (``test``, ``local``, ``arpa`` …)."""
    if name in _SPECIAL_USE_DOMAINS:
        return True
    labels = name.rsplit(".", _SPECIAL_USE_LABELS)
    return any(".".join(labels[-count:]) in _SPECIAL_USE_DOMAINS for count in range(1, len(labels)))


@lru_cache(maxsize=65536)
def _validated_domain(domain: str) -> str | None:
    """email-validator's verdict on ``domain``, lower-cased, or None."""
    try:
        return validate_email("postmaster@" + domain, check_deliverability=False).domain.lower()
    except EmailNotValidError:
        return None


@lru_cache(maxsize=65536)
def check_tax_code(text: str, *, kind: str = PRIVATE) -> str:
    """A valid codice fiscale, compacted; ValueError with the reason otherwise.

    A public administration has the 11-digit numeric form; other kinds may give
    either form.
    """
    code = _compact(text)
    if kind == PUBLIC_ADMINISTRATION and not (len(code) == 11 and code.isdigit()):
        raise ValueError(f"{text!r} is not the 11-digit codice fiscale of a public administration")
    if len(code) == 11 and code.isdigit():
        if not luhn.is_valid(code):
            raise ValueError(f"{text!r} fails the codice fiscale checksum")
        try:
            return iva.validate(code)
        except ValidationError:
            raise ValueError(f"{text!r} is not a valid 11-digit codice fiscale: {_iva_problem(code)}") from None
    if len(code) != 16:
        raise ValueError(f"{text!r} is not a codice fiscale: it has 16 characters (a person) or 11 digits")
    try:
        return codicefiscale.validate(code)
    except InvalidChecksum:
        raise ValueError(f"{text!r} fails the codice fiscale checksum") from None
    except InvalidComponent:
        raise ValueError(f"{text!r} is not a valid codice fiscale: its birth date does not exist") from None
    except ValidationError:
        raise ValueError(f"{text!r} is not a valid codice fiscale: it should look like RSSMRA80A01H501U") from None


@lru_cache(maxsize=65536)
def check_vat_number(text: str) -> str:
    """A valid partita IVA (11 digits, an ``IT`` prefix is dropped); ValueError otherwise."""
    number = _compact(text)
    if number.startswith("IT"):
        number = number[2:]
    if not (len(number) == 11 and number.isdigit()):
        raise ValueError(f"{text!r} is not a partita IVA: it has 11 digits")
    # The checksum first: a mistyped digit is the likeliest mistake.
    if not luhn.is_valid(number):
        raise ValueError(f"{text!r} fails the partita IVA checksum")
    try:
        return iva.validate(number)
    except ValidationError:
        raise ValueError(f"{text!r} is not a valid partita IVA: {_iva_problem(number)}") from None


def _iva_problem(number: str) -> str:
    """What is wrong with 11 digits that pass the checksum but not stdnum's ``iva.validate``."""
    if int(number[:7]) == 0:
        return "the company number (digits 1 to 7) is zero"
    return f"digits 8 to 10 ({number[7:10]}) are not a provincial office code (001-100, 120, 121, 888 or 999)"


def classify_einvoice_code(text: str, *, kind: str) -> tuple[str, str]:
    """Sort an e-invoicing code into its column: ``sdi_code``, ``einvoice_pec`` or ``office_code``.

    Returns ``(column, normalised value)``; ValueError with the reason otherwise.
    """
    value = text.strip()
    if kind == PUBLIC_ADMINISTRATION:
        code = value.upper()
        if not _OFFICE_CODE_RE.fullmatch(code):
            raise ValueError(f"{text!r} is not an office code (codice univoco ufficio): it has 6 letters or digits")
        return "office_code", code
    if "@" in value:
        try:
            return "einvoice_pec", _normalise_email(value)
        except EmailNotValidError as error:
            raise ValueError(f"{text!r} is not a valid PEC address: {error}") from None
    code = value.upper()
    if not _SDI_CODE_RE.fullmatch(code):
        raise ValueError(f"{text!r} is neither a 7-character SDI code nor a PEC address")
    return "sdi_code", code


def _compact(text: str) -> str:
    """Without spaces, '-' or ':', upper-cased (stdnum's ``compact``, cheaper)."""
    return "".join(text.split()).replace("-", "").replace(":", "").upper()


def check_holder(
    *,
    name: str | None,
    kind: str | None,
    reference_email: str | None,
    tax_code: str | None = None,
    vat_number: str | None = None,
    einvoice_code: str | None = None,
    postal_address: str | None = None,
    cig: str | None = None,
    cup: str | None = None,
    billing_address: str | None = None,
    billing_postcode: str | None = None,
    billing_city: str | None = None,
    billing_province: str | None = None,
    billing_country: str | None = None,
) -> tuple[HolderData | None, list[HolderProblem]]:
    """Check and normalise holder data.

    Returns ``(data, [])`` when all is well, ``(None, problems)`` otherwise.
    Every value is stripped; an empty one counts as absent.
    """
    problems: list[HolderProblem] = []
    values: dict[str, str | None] = {}

    def problem(field: str, message: str) -> None:
        problems.append(HolderProblem(field, message))

    name = (name.strip() or None) if name else None
    if name is None:
        problem("name", "is required")
    elif len(name) > NAME_MAX:
        problem("name", f"is {len(name)} characters long; at most {NAME_MAX}")
    elif _CONTROL_RE.search(name):
        problem("name", "contains a control character")

    given_kind = (kind.strip() or None) if kind else None
    kind = _KINDS.get(given_kind.lower()) if given_kind else None
    if given_kind is None:
        problem("kind", "is required")
    elif kind is None:
        problem("kind", f"{given_kind!r} is not one of {', '.join(HOLDER_KINDS)}")

    reference_email = (reference_email.strip() or None) if reference_email else None
    if reference_email is None:
        problem("reference_email", "is required")
    else:
        try:
            reference_email = normalise_email(reference_email)
        except ValueError as error:
            problem("reference_email", str(error))

    postal_address = (postal_address.strip() or None) if postal_address else None
    if postal_address is not None:
        if len(postal_address) > POSTAL_ADDRESS_MAX:
            problem("postal_address", f"is {len(postal_address)} characters long; at most {POSTAL_ADDRESS_MAX}")
        elif _CONTROL_RE.search(postal_address):
            problem("postal_address", "contains a control character")

    label = _KIND_LABELS.get(kind or "", "")

    tax_code = (tax_code.strip() or None) if tax_code else None
    if tax_code is None:
        if kind == PUBLIC_ADMINISTRATION:
            problem("tax_code", f"is required for {label}: its 11-digit codice fiscale")
    else:
        try:
            values["tax_code"] = check_tax_code(tax_code, kind=kind or PRIVATE)
        except ValueError as error:
            problem("tax_code", str(error))

    vat_number = (vat_number.strip() or None) if vat_number else None
    if vat_number is None:
        if kind in BUSINESS_KINDS:
            problem("vat_number", f"is required for {label}: its partita IVA")
    else:
        try:
            values["vat_number"] = check_vat_number(vat_number)
        except ValueError as error:
            problem("vat_number", str(error))

    einvoice_code = (einvoice_code.strip() or None) if einvoice_code else None
    if einvoice_code is None:
        if kind in BUSINESS_KINDS:
            problem("einvoice_code", f"is required for {label}: a 7-character SDI code or a PEC address")
        elif kind == PUBLIC_ADMINISTRATION:
            problem("einvoice_code", f"is required for {label}: its 6-character office code")
    elif kind is not None:
        try:
            column, code = classify_einvoice_code(einvoice_code, kind=kind)
            values[column] = code
        except ValueError as error:
            problem("einvoice_code", str(error))

    for field, raw, pattern, length in (("cig", cig, _CIG_RE, 10), ("cup", cup, _CUP_RE, 15)) if cig or cup else ():
        value = (raw.strip() or None) if raw else None
        if value is None:
            continue
        if kind is not None and kind != PUBLIC_ADMINISTRATION:
            problem(field, "is only for a public administration")
        elif not pattern.fullmatch(value.upper()):
            problem(field, f"{value!r} is not a {field.upper()}: it has {length} letters or digits")
        else:
            values[field] = value.upper()

    if billing_address or billing_postcode or billing_city or billing_province or billing_country:
        billing = check_billing_address(
            billing_address or "",
            billing_postcode or "",
            billing_city or "",
            billing_province or "",
            billing_country or "",
        )
        for field, message in billing.problems:
            problem(field, message)
        values.update(billing.values)

    if problems:
        return None, problems
    assert name is not None and kind is not None and reference_email is not None
    holder = HolderData(name=name, kind=kind, reference_email=reference_email, postal_address=postal_address, **values)
    return holder, []

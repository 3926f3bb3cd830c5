"""The holder's billing address, as an electronic invoice (FatturaPA) needs it: pure checks.

Shared by the import (``billing_*`` columns) and the order form, through
:func:`worker.rules.holder_data.check_holder`.
"""

from __future__ import annotations

import re
from typing import NamedTuple

#: FatturaPA's limits: the street and the city in at most 60 Latin-1 characters.
BILLING_TEXT_MAX = 60
_POSTCODE_IT_RE = re.compile(r"[0-9]{5}")
_POSTCODE_RE = re.compile(r"[A-Z0-9][A-Z0-9 -]{1,9}")
_LETTERS2_RE = re.compile(r"[A-Z]{2}")


class BillingCheck(NamedTuple):
    values: dict[str, str | None]
    problems: list[tuple[str, str]]


def check_billing_address(street: str, postcode: str, city: str, province: str, country: str) -> BillingCheck:
    """The billing address: street, postcode and city together; the country (ISO 3166, default IT);
    for Italy a 5-digit postcode and, when given, the province's 2 letters (none abroad)."""
    problems: list[tuple[str, str]] = []
    street, postcode, city = street.strip(), postcode.strip().upper(), city.strip()
    province, country = province.strip().upper(), (country.strip().upper() or "IT")
    for field, value in (("billing_address", street), ("billing_city", city)):
        if not value:
            problems.append((field, "is required with the other billing address columns"))
        elif len(value) > BILLING_TEXT_MAX:
            problems.append((field, f"is {len(value)} characters long; at most {BILLING_TEXT_MAX}"))
        elif any(ord(char) > 0xFF or not char.isprintable() for char in value):
            problems.append((field, "has a character an electronic invoice cannot carry (Latin letters only)"))
    if not _LETTERS2_RE.fullmatch(country):
        problems.append(("billing_country", f"{country!r} is not a 2-letter country code (ISO 3166), such as IT"))
        return BillingCheck({}, problems)  # the postcode and the province are checked by the country
    if not postcode:
        problems.append(("billing_postcode", "is required with the other billing address columns"))
    elif country == "IT" and not _POSTCODE_IT_RE.fullmatch(postcode):
        problems.append(("billing_postcode", f"{postcode!r} is not an Italian postcode (CAP): 5 digits"))
    elif country != "IT" and not _POSTCODE_RE.fullmatch(postcode):
        problems.append(("billing_postcode", f"{postcode!r} is not a postcode: 2 to 10 letters, digits, spaces or -"))
    if province and country != "IT":
        problems.append(("billing_province", "is only for an address in Italy"))
    elif province and not _LETTERS2_RE.fullmatch(province):
        problems.append(("billing_province", f"{province!r} is not a province's 2-letter code, such as RM"))
    if problems:
        return BillingCheck({}, problems)
    values: dict[str, str | None] = {
        "billing_address": street,
        "billing_postcode": postcode,
        "billing_city": city,
        "billing_province": province or None,
        "billing_country": country,
    }
    return BillingCheck(values, [])

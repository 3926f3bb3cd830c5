"""The checks of single setting values, shared by :mod:`config.settings`: the error that names a
variable, whole numbers, numbers, choices and switches, URLs, and two groups read together, the
invoices' seller (``SELLER_*``) and a webhook's URL and secret (the platform's, the sandbox's).

Each function reads one value (or one group) and returns it parsed, or raises
:class:`SettingsError` with one line that names the variable.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from urllib.parse import urlsplit, urlunsplit

from worker.rules.einvoice import DEFAULT_FISCAL_REGIME, FISCAL_REGIMES, Address, Seller
from worker.rules.holder_data import check_vat_number

PREFIX = "PEC_RENEWAL_"


class SettingsError(Exception):
    """A setting has a bad value.  ``str()`` is one line naming the variable."""

    def __init__(self, name: str, problem: str):
        self.variable = PREFIX + name
        self.problem = problem
        super().__init__(f"{self.variable}: {problem}")


#: The seller's settings an invoice needs, and what each must be.
SELLER_SETTINGS = (
    "SELLER_NAME",
    "SELLER_VAT_NUMBER",
    "SELLER_ADDRESS",
    "SELLER_POSTCODE",
    "SELLER_CITY",
    "SELLER_PROVINCE",
)


def read_seller(raw) -> Seller | None:
    """The seller of the invoices: None when no ``SELLER_*`` is set; all six, or a SettingsError."""
    values = {name: raw(name) for name in SELLER_SETTINGS}
    regime = raw("SELLER_FISCAL_REGIME")
    if not any(values.values()) and regime is None:
        return None
    for name, value in values.items():
        if value is None:
            raise SettingsError(name, "is required with the other SELLER_* settings (the invoices' seller)")
    try:
        vat_number = check_vat_number(values["SELLER_VAT_NUMBER"])
    except ValueError as error:
        raise SettingsError("SELLER_VAT_NUMBER", str(error)) from None
    if not re.fullmatch(r"[0-9]{5}", values["SELLER_POSTCODE"]):
        raise SettingsError("SELLER_POSTCODE", "must be an Italian postcode (CAP) of 5 digits")
    province = values["SELLER_PROVINCE"].upper()
    if not re.fullmatch(r"[A-Z]{2}", province):
        raise SettingsError("SELLER_PROVINCE", "must be a province's 2-letter code, such as RM")
    for name, limit in (("SELLER_NAME", 80), ("SELLER_ADDRESS", 60), ("SELLER_CITY", 60)):
        text = values[name]
        if len(text) > limit or any(ord(char) > 0xFF or not char.isprintable() for char in text):
            raise SettingsError(name, f"must be at most {limit} Latin-1 characters (the invoice's limit)")
    regime = (regime or DEFAULT_FISCAL_REGIME).upper()
    if regime not in FISCAL_REGIMES:
        raise SettingsError("SELLER_FISCAL_REGIME", f"must be one of {', '.join(FISCAL_REGIMES)}")
    address = Address(values["SELLER_ADDRESS"], values["SELLER_POSTCODE"], values["SELLER_CITY"], province)
    return Seller(values["SELLER_NAME"], vat_number, address, regime)


def read_webhook(url: str | None, secret: str | None, name: str = "PLATFORM") -> tuple[str | None, str | None]:
    """A webhook URL (http or https, a query allowed) and its Standard Webhooks secret: ``whsec_``
    then the base64 of 24 to 64 random bytes.  A URL without a secret is refused.  ``name``: the
    settings' prefix (the platform's, the sandbox's)."""
    if url is not None:
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 (raises ValueError when out of range)
        except ValueError:
            parts = None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or parts.fragment:
            raise SettingsError(f"{name}_WEBHOOK_URL", f"{url!r} is not an http(s) URL")
        if has_space(url):
            raise SettingsError(f"{name}_WEBHOOK_URL", "must not hold spaces or control characters")
        if secret is None:
            raise SettingsError(f"{name}_WEBHOOK_SECRET", f"is required when PEC_RENEWAL_{name}_WEBHOOK_URL is set")
    if secret is not None:
        encoded = secret.removeprefix("whsec_")
        try:
            key = base64.b64decode(encoded, validate=True) if secret.startswith("whsec_") else b""
        except (binascii.Error, ValueError):
            key = b""
        if not 24 <= len(key) <= 64:
            raise SettingsError(
                f"{name}_WEBHOOK_SECRET", "must be whsec_ followed by the base64 of 24 to 64 random bytes"
            )
    return url, secret


def read_choice(value: str, name: str, allowed: tuple[str, ...]) -> str:
    value = value.lower()
    if value not in allowed:
        raise SettingsError(name, f"{value!r} is not one of {', '.join(allowed)}")
    return value


def read_switch(value: str | None, name: str, *, default: bool) -> bool:
    if value is None:
        return default
    if value.strip().lower() in ("true", "1", "yes", "on"):
        return True
    if value.strip().lower() in ("false", "0", "no", "off"):
        return False
    raise SettingsError(name, "must be true or false")


def read_integer(value: str | None, name: str, *, default: int, low: int, high: int) -> int:
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        raise SettingsError(name, f"{value!r} is not a whole number") from None
    if not low <= number <= high:
        raise SettingsError(name, f"{number} is outside {low}..{high}")
    return number


def read_number(value: str | None, name: str, *, default: float) -> float:
    if value is None:
        return default
    try:
        number = float(value)
    except ValueError:
        raise SettingsError(name, f"{value!r} is not a number") from None
    if not (math.isfinite(number) and number > 0):
        raise SettingsError(name, f"{value!r} must be a number greater than 0")
    return number


def is_base_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError when out of range
    except ValueError:
        return False
    return (
        parts.scheme in ("http", "https")
        and bool(parts.hostname)
        and port != 0
        and not parts.query
        and not parts.fragment
        and not has_space(url)
    )


def is_page_url(url: str) -> bool:
    """An http(s) address of a page: a host, no spaces; unlike BASE_URL it may carry a query or a fragment."""
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError when out of range
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname) and port != 0 and not has_space(url)


def has_space(value: str) -> bool:
    return any(character.isspace() or not character.isprintable() for character in value)


def hide_password(url: str) -> str:
    """``url`` with the password in it, if any, replaced by ``***``."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return url
    if not password:
        return url
    user = parts.netloc.rpartition("@")[0].split(":", 1)[0]
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))

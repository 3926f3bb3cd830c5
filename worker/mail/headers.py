"""What may reach a header: the checks on every value, the renderer's refusals, and folding.

Every value that reaches a header or the SMTP envelope is checked here (no CR or LF,
addresses without spaces, commas or angle brackets); a value refused is a
:class:`Refused` with a short reason, the label of the refusal metrics.  The holder's
name never reaches a header.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from email.header import Header
from typing import Any

from worker.rules.holder_data import LOCAL_PART_MAX, sendable_address

#: RFC 5322: a line must not be longer than 998 characters (78 is a recommendation).
MAX_HEADER_LINE = 998

#: An address we put in a header or an envelope: one "@", and none of the
#: characters that could add a recipient, a comment or a line to a header.
_ADDRESS_RE = re.compile(r'[^\s@<>(),;:"\[\]\\]+@[^\s@<>(),;:"\[\]\\]+')


#: Why the renderer refused a value: the ``reason`` of a :class:`Refused`, and the ``reason``
#: label of the refusal metrics (a short, fixed set).
NON_ASCII_LOCAL_PART = "non-ascii-local-part"
NOT_AN_ADDRESS = "not-an-address"
ENCODED_WORD = "encoded-word"
INVALID_DOMAIN = "invalid-domain"
INVALID_DATA = "invalid-data"
#: An email whose every mailbox was refused (each is recorded with its own reason).
NO_MAILBOX_LEFT = "no-mailbox-left"


class Refused(ValueError):
    """A value the renderer refuses, with a short ``reason`` (one of the constants above).

    ``mailboxes``: when every mailbox of an email was refused, each with its own reason.
    """

    def __init__(self, message: str, reason: str = INVALID_DATA, mailboxes: tuple[RefusedMailbox, ...] = ()):
        super().__init__(message)
        self.reason = reason
        self.mailboxes = mailboxes


def refusal_reason(error: ValueError) -> str:
    """The short reason of a refusal: a :class:`Refused`'s own, else ``invalid-data``."""
    return error.reason if isinstance(error, Refused) else INVALID_DATA


def refuse_line_breaks(value: str, what: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string, not {type(value).__name__}")
    if "\r" in value or "\n" in value:
        raise ValueError(f"{what} holds a line break")
    return value


def header_address(address: str, what: str = "address") -> str:
    """An address fit for a header and the SMTP envelope, or :class:`Refused` with the reason.

    What can be sent is :func:`worker.rules.holder_data.sendable_address`'s one rule (the import and
    the order form refuse the same addresses at the door); this adds the reason's code.
    """
    try:
        refuse_line_breaks(address, what)
    except ValueError as error:
        raise Refused(str(error), NOT_AN_ADDRESS) from None
    try:
        return sendable_address(address)
    except ValueError as error:
        raise Refused(f"{what} {error}", _refusal_code(address)) from None


def _refusal_code(address: str) -> str:
    """The metric label of an address that :func:`sendable_address` refused."""
    if not _ADDRESS_RE.fullmatch(address):
        return NOT_AN_ADDRESS
    if "=?" in address:
        return ENCODED_WORD
    local = address.rpartition("@")[0]
    if not local.isascii():
        return NON_ASCII_LOCAL_PART
    return NOT_AN_ADDRESS if len(local) > LOCAL_PART_MAX else INVALID_DOMAIN


@dataclass(frozen=True)
class RefusedMailbox:
    """A mailbox left out of its email because the renderer refused its data."""

    #: The mailbox's id, when the stored context holds a valid one (it names its ledger row).
    mailbox_id: int | None
    #: The address as stored (not fit for a header: for the ledger and the logs only).
    address: str
    #: A short code (``non-ascii-local-part``, …) and the full explanation.
    reason: str
    detail: str

    @classmethod
    def of(cls, raw: Any, error: ValueError) -> RefusedMailbox:
        mailbox_id = raw.get("id") if isinstance(raw, Mapping) else None
        address = raw.get("address") if isinstance(raw, Mapping) else None
        return cls(
            mailbox_id=mailbox_id if isinstance(mailbox_id, int) and not isinstance(mailbox_id, bool) else None,
            address=address if isinstance(address, str) else repr(address),
            reason=refusal_reason(error),
            detail=str(error),
        )


def folded_subject(subject: str) -> str:
    """``Subject: ...`` folded within 78 columns; RFC 2047 base64 encoded-words when not ASCII."""
    if subject.isascii():
        if len(subject) <= 78 - len("Subject: "):
            # Nothing to fold: what Header would return, without its cost (a fifth of a render).
            return "Subject: " + subject
        return "Subject: " + Header(subject, "us-ascii", header_name="Subject").encode(linesep="\r\n")
    # 42 bytes make 56 base64 characters: "Subject: =?utf-8?b?...?=" stays within 78 columns.
    words = (f"=?utf-8?b?{base64.b64encode(chunk).decode('ascii')}?=" for chunk in _utf8_chunks(subject, 42))
    return "Subject: " + "\r\n ".join(words)


def _utf8_chunks(text: str, size: int) -> Iterator[bytes]:
    """The UTF-8 bytes of ``text`` in pieces of at most ``size`` bytes, never splitting a character."""
    data = text.encode("utf-8")
    start = 0
    while start < len(data):
        end = min(start + size, len(data))
        while end < len(data) and data[end] & 0xC0 == 0x80:  # a continuation byte: back off
            end -= 1
        yield data[start:end]
        start = end


def folded_list(name: str, values: tuple[str, ...]) -> str:
    """``Name: a,b,c``: comma-separated, no spaces, on one line up to RFC 5322's limit of
    998 characters, so that ``value.split(",")`` reads it.  A longer list (some twenty
    mailboxes or more) folds after a comma; that unfolds to ", ", so readers should
    strip the items."""
    lines = [f"{name}: {values[0]}"]
    for value in values[1:]:
        if len(lines[-1]) + len(value) + 2 <= MAX_HEADER_LINE:  # room for "," + value + a trailing ","
            lines[-1] += f",{value}"
        else:
            lines[-1] += ","
            lines.append(f" {value}")
    return "\r\n".join(lines)


#: What a List-Unsubscribe URL may hold inside its angle brackets (one header line: a URL is not folded).
_UNSUBSCRIBE_URL_RE = re.compile(r"https?://[A-Za-z0-9\-._~:/%\[\]@!$&'()*+,;=]{1,900}")


def unsubscribe_headers(url: str | None) -> tuple[str, ...]:
    """RFC 2369's ``List-Unsubscribe`` (an http(s) URL only, no mailto) and RFC 8058's one-click
    ``List-Unsubscribe-Post``, for a reminder's ``url``; nothing for None."""
    if url is None:
        return ()
    if not _UNSUBSCRIBE_URL_RE.fullmatch(url):
        raise ValueError("the List-Unsubscribe URL is not a plain http(s) URL")
    return (f"List-Unsubscribe: <{url}>", "List-Unsubscribe-Post: List-Unsubscribe=One-Click")

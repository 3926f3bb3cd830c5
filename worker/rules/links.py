"""Signed links (itsdangerous): one salt per purpose, every key accepted, the newest signs.

A renewal link is bound to one mailbox, one account, or the mailboxes of one
grouped notice ("Rinnova tutte"), and to the expiry date it was sent for: the
expiry cycle.  Once that cycle is renewed the mailbox's expiry moves on and the
link no longer starts an order.

A group link names its mailboxes in the token (at most :data:`MAX_GROUP`), and
is keyed by the smallest of their ids: two notices about the same mailboxes
and cycle lead to the same order, and two groups never share a mailbox in one
cycle (a mailbox has one reference address).

A reminders link (``List-Unsubscribe``, RFC 2369 and 8058) names one email by its
Message-ID, under a salt of its own: the email's stored context says which
mailboxes, and which of their cycles, it reminded of.  Its length does not grow
with the mailboxes of a grouped notice, so the header stays one short line.

A token is a bearer credential: :func:`redact` takes it out of any text
before the text is logged.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from typing import Any

from itsdangerous import BadData, SignatureExpired, URLSafeTimedSerializer

RENEWAL_SALT = "pec-renewal.renewal-link"
#: The auto-renew page's link: another purpose, so neither token opens the other's page.
AUTO_RENEW_SALT = "pec-renewal.auto-renew-link"
REMINDERS_SALT = "pec-renewal.reminders-link"
#: The link to authenticate one auto-renew charge on session: a purpose of its own.
AUTHENTICATION_SALT = "pec-renewal.charge-authentication-link"
#: What an authentication token names: one charge intent.
CHARGE = "c"

MAILBOX = "m"
ACCOUNT = "a"
#: The mailboxes of one grouped notice, of one account: the "Rinnova tutte" link.
GROUP = "g"
TARGETS = (MAILBOX, ACCOUNT, GROUP)
#: The most mailboxes a group link names (its token stays well within the 1,000 characters read).
MAX_GROUP = 50

#: The ids a link may name: those of a table row (a positive 64-bit integer: PostgreSQL's bigint,
#: SQLite's integer).  Anything else names no row, and a database would refuse to compare it.
MAX_ID = 2**63 - 1

# What a token can hold: URL-safe base64 and the dots between its parts.  Checked
# first because itsdangerous drops non-ASCII characters from a signature it decodes.
_TOKEN_RE = re.compile(r"[A-Za-z0-9_\-.]{1,1000}")
#: A Message-ID as the worker writes them (``worker.mail.message_ids.message_id_for``), without brackets.
_MESSAGE_ID_RE = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.\-]{1,64}@[A-Za-z0-9.\-]{1,253}")


class TokenInvalid(Exception):
    """Tampered, truncated, malformed, for another purpose, or signed with an unknown key."""


class TokenExpired(TokenInvalid):
    """Well signed, but older than the links' maximum age."""


@dataclass(frozen=True)
class RenewalLink:
    target: str  # MAILBOX, ACCOUNT or GROUP
    target_id: int  # for GROUP: the smallest of mailbox_ids
    expires_on: date  # the expiry cycle the link was sent for
    #: GROUP only: the mailboxes of the notice, in increasing order.
    mailbox_ids: tuple[int, ...] = ()

    def is_current_for(self, current_expires_on: date) -> bool:
        """False once the cycle was renewed (or the expiry otherwise moved on)."""
        return self.expires_on == current_expires_on


class LinkSigner:
    def __init__(self, secret_keys: tuple[str, ...] | list[str], base_url: str, max_age_days: int):
        if not secret_keys:
            raise ValueError("at least one secret key is needed")
        # itsdangerous takes a list of keys, oldest first: the last one signs, all verify.
        self._serializer = URLSafeTimedSerializer(list(secret_keys), salt=RENEWAL_SALT)
        self._auto_renew_serializer = URLSafeTimedSerializer(list(secret_keys), salt=AUTO_RENEW_SALT)
        self._reminders = URLSafeTimedSerializer(list(secret_keys), salt=REMINDERS_SALT)
        self._authentication = URLSafeTimedSerializer(list(secret_keys), salt=AUTHENTICATION_SALT)
        self._base_url = base_url.rstrip("/")
        self._max_age = max_age_days * 86400

    def renewal_token(self, target: str, target_id: int, expires_on: date) -> str:
        if target not in (MAILBOX, ACCOUNT):
            raise ValueError(f"unknown link target {target!r}")
        return self._serializer.dumps([target, int(target_id), expires_on.isoformat()])

    def group_token(self, mailbox_ids: tuple[int, ...] | list[int], expires_on: date) -> str:
        """The token of a group link: ``mailbox_ids`` (1 to :data:`MAX_GROUP` distinct ids; a notice's has
        at least 2, an order's resume link may be left with one), for the cycle ``expires_on``."""
        ids = sorted({int(mailbox_id) for mailbox_id in mailbox_ids})
        if not 1 <= len(ids) <= MAX_GROUP or not all(1 <= mailbox_id <= MAX_ID for mailbox_id in ids):
            raise ValueError(f"a group link names 1 to {MAX_GROUP} mailboxes")
        return self._serializer.dumps([GROUP, ids[0], expires_on.isoformat(), ids])

    def group_renewal_url(self, mailbox_ids: tuple[int, ...] | list[int], expires_on: date) -> str:
        """The "Rinnova tutte" link of a grouped notice: one order for all of ``mailbox_ids``."""
        return f"{self._base_url}/rinnova/{self.group_token(mailbox_ids, expires_on)}"

    def renewal_url(self, mailbox_id: int, expires_on: date) -> str:
        return f"{self._base_url}/rinnova/{self.renewal_token(MAILBOX, mailbox_id, expires_on)}"

    def account_renewal_url(self, account_id: int, expires_on: date) -> str:
        return f"{self._base_url}/rinnova/{self.renewal_token(ACCOUNT, account_id, expires_on)}"

    def url_for(
        self, target: str, target_id: int, expires_on: date, mailbox_ids: tuple[int, ...] | list[int] = ()
    ) -> str:
        """The renewal link of a mailbox (``MAILBOX``), an account (``ACCOUNT``) or a group (``GROUP``,
        with its ``mailbox_ids``)."""
        if target == GROUP:
            return self.group_renewal_url(mailbox_ids, expires_on)
        return f"{self._base_url}/rinnova/{self.renewal_token(target, target_id, expires_on)}"

    def reminders_url(self, message_id: str) -> str:
        """``{BASE_URL}/avvisi/{token}``: where the holder opts out of (or back into) the reminders of one email."""
        if not isinstance(message_id, str) or not _MESSAGE_ID_RE.fullmatch(message_id):
            raise ValueError(f"{message_id!r} is not a Message-ID")
        return f"{self._base_url}/avvisi/{self._reminders.dumps(message_id)}"

    def read_reminders_token(self, token: str) -> str:
        """The Message-ID of the email a reminders token was signed for."""
        message_id = self._loads(self._reminders, token)
        if not isinstance(message_id, str) or not _MESSAGE_ID_RE.fullmatch(message_id):
            raise TokenInvalid("link invalid")
        return message_id

    def auto_renew_token(self, mailbox_id: int) -> str:
        """The token of a mailbox's auto-renew page.  Bound to the mailbox, not to a cycle: the
        receipt of a charge carries it, and the page still serves once the expiry has moved on."""
        return self._auto_renew_serializer.dumps([MAILBOX, int(mailbox_id)])

    def auto_renew_url(self, mailbox_id: int) -> str:
        return f"{self._base_url}/rinnovo-automatico/{self.auto_renew_token(mailbox_id)}"

    def read_auto_renew_token(self, token: str) -> int:
        """The mailbox id an auto-renew page's token names; :class:`TokenInvalid` or
        :class:`TokenExpired` as for a renewal link."""
        payload = self._loads(self._auto_renew_serializer, token)
        try:
            target, target_id = payload
            if target != MAILBOX or type(target_id) is not int or not 1 <= target_id <= MAX_ID:
                raise ValueError
        except (ValueError, TypeError):
            raise TokenInvalid("link invalid") from None
        return target_id

    def charge_authentication_token(self, intent_id: int) -> str:
        """The token of the page where the holder authenticates the auto-renew charge ``intent_id``."""
        return self._authentication.dumps([CHARGE, int(intent_id)])

    def charge_authentication_url(self, intent_id: int) -> str:
        return f"{self._base_url}/rinnovo-automatico/autenticazione/{self.charge_authentication_token(intent_id)}"

    def read_charge_authentication_token(self, token: str) -> int:
        """The charge intent an authentication token names; :class:`TokenInvalid` or :class:`TokenExpired`."""
        payload = self._loads(self._authentication, token)
        try:
            target, target_id = payload
            if target != CHARGE or type(target_id) is not int or not 1 <= target_id <= MAX_ID:
                raise ValueError
        except (ValueError, TypeError):
            raise TokenInvalid("link invalid") from None
        return target_id

    def _loads(self, serializer: URLSafeTimedSerializer, token: str) -> Any:
        if not isinstance(token, str) or not _TOKEN_RE.fullmatch(token):
            raise TokenInvalid("link invalid")
        try:
            return serializer.loads(token, max_age=self._max_age)
        except SignatureExpired:
            raise TokenExpired("link expired") from None
        except (BadData, UnicodeError, ValueError, TypeError):  # BadData: also a bad payload, not only a bad signature
            raise TokenInvalid("link invalid") from None

    def read_renewal_token(self, token: str) -> RenewalLink:
        payload = self._loads(self._serializer, token)
        try:
            target, target_id, expires_on, *rest = payload
            if target not in TARGETS or type(target_id) is not int or not isinstance(expires_on, str):
                raise ValueError
            if not 1 <= target_id <= MAX_ID:
                raise ValueError  # well signed, yet no row can have this id
            return RenewalLink(target, target_id, date.fromisoformat(expires_on), _group_ids(target, target_id, rest))
        except (ValueError, TypeError):
            raise TokenInvalid("link invalid") from None


def _group_ids(target: str, target_id: int, rest: list[object]) -> tuple[int, ...]:
    """The mailbox ids a payload names after its cycle: a group's, checked; nothing for the others."""
    if target != GROUP:
        if rest:
            raise ValueError
        return ()
    if len(rest) != 1 or not isinstance(rest[0], list):
        raise ValueError
    ids = rest[0]
    if not 1 <= len(ids) <= MAX_GROUP or any(type(item) is not int or not 1 <= item <= MAX_ID for item in ids):
        raise ValueError
    checked = tuple(item for item in ids if type(item) is int)
    if list(checked) != sorted(set(checked)) or checked[0] != target_id:
        raise ValueError
    return checked


#: A renewal, auto-renew or reminders path, with whatever follows it up to a space or a quote.
_TOKEN_PATH_RE = re.compile(r"(/rinnova/|/rinnovo-automatico/|/avvisi/|/sandbox/3ds/)[^\s\"'?#<>]*")
#: A signed token anywhere else (a query string, a Referer, a session cookie): payload, timestamp
#: and a signature of at least 27 base64 characters (an HMAC-SHA1), joined by dots; a compressed
#: payload starts with a dot of its own.
_SIGNED_TOKEN_RE = re.compile(r"\.?[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{4,12}\.[A-Za-z0-9_\-]{27,}")
REDACTED = "[redacted]"


def redact(text: str) -> str:
    """``text`` with every ``/rinnova/<token>`` turned into ``/rinnova/[redacted]`` (and the same for
    ``/rinnovo-automatico/<token>`` and ``/avvisi/<token>``), and any other signed token into
    ``[redacted]``."""
    return _SIGNED_TOKEN_RE.sub(REDACTED, _TOKEN_PATH_RE.sub(r"\g<1>" + REDACTED, text))

"""The "Rinnova tutte" link of a grouped notice: one order for all of its mailboxes of one account.

A notice batch stores each mailbox's account id in the email's context
(``"account"``).  When the mailboxes the email shows (those the renderer did not
refuse) are at least two and all of one account, the email carries one group
link naming them (:meth:`worker.rules.links.LinkSigner.group_renewal_url`),
signed at render time like every Rinnova link, for the earliest of their
expiry dates.  Emails stored without account ids, emails about mailboxes of
several accounts, and groups larger than :data:`worker.rules.links.MAX_GROUP`
keep only the per-mailbox links.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date
from typing import Any, Protocol

from worker.rules.links import MAX_GROUP, LinkSigner


class _Shown(Protocol):
    id: int
    expires_on: date


def renew_all_url(raw_mailboxes: Sequence[Any], shown: Sequence[_Shown], signer: LinkSigner) -> str | None:
    """The group link of ``shown`` (the mailboxes the email lists), or None when the email has none."""
    if not 2 <= len(shown) <= MAX_GROUP:
        return None
    shown_ids = {mailbox.id for mailbox in shown}
    accounts = {raw.get("account") for raw in raw_mailboxes if isinstance(raw, Mapping) and raw.get("id") in shown_ids}
    if len(accounts) != 1:
        return None
    account = accounts.pop()
    if not isinstance(account, int) or isinstance(account, bool):
        return None  # stored before the account was kept, or not an id
    return signer.group_renewal_url(sorted(shown_ids), min(mailbox.expires_on for mailbox in shown))

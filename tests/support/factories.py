"""Build accounts, holders and mailboxes directly, for tests of the scan and the relay."""

from __future__ import annotations

import hashlib
import itertools
from datetime import date

from sqlalchemy import select
from sqlalchemy.orm import Session

from worker.rules.schedule import DEFAULT_STAGES, first_action_on
from worker.store.models import Account, Domain, Holder, Mailbox

_numbers = itertools.count(1)


def make_mailbox(
    session: Session,
    *,
    expires_on: date,
    address: str | None = None,
    reference_email: str | None = None,
    holder_name: str = "Mario Rossi",
    domain: str | None = None,
    auto_renew: bool = False,
    payment_method: str | None = None,
    language: str = "it",
    plan: str = "standard",
    stages=DEFAULT_STAGES,
) -> Mailbox:
    number = next(_numbers)
    reference_email = reference_email or f"titolare{number}@example.it"
    account = session.scalar(select(Account).where(Account.login == reference_email))
    if account is None:
        account = Account(login=reference_email)
        session.add(account)
        session.flush()
    holder_key = hashlib.sha256(f"{holder_name}|{reference_email}".encode()).hexdigest()
    holder = session.scalar(select(Holder).where(Holder.account_id == account.id, Holder.holder_key == holder_key))
    if holder is None:
        holder = Holder(
            account_id=account.id,
            holder_key=holder_key,
            name=holder_name,
            kind="private",
            reference_email=reference_email,
        )
        session.add(holder)
        session.flush()
    domain_row = None
    if domain is not None:
        domain_row = session.scalar(select(Domain).where(Domain.name == domain))
        if domain_row is None:
            domain_row = Domain(name=domain, expires_on=expires_on)
            session.add(domain_row)
            session.flush()
        address = address or f"info{number}@pec.{domain}"
    mailbox = Mailbox(
        address=address or f"casella{number}@pec.provider.example.it",
        account_id=account.id,
        holder_id=holder.id,
        reference_email=holder.reference_email,
        domain_id=domain_row.id if domain_row else None,
        plan=plan,
        extra_space_gb=0,
        extra_archive_gb=0,
        used_space_mb=100,
        expires_on=expires_on,
        auto_renew=auto_renew,
        payment_method=payment_method,
        renewal_years=1,
        promo=False,
        language=language,
        next_action_on=first_action_on(stages, expires_on),
    )
    session.add(mailbox)
    session.flush()
    return mailbox

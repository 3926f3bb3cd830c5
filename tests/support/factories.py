"""Accounts, holders, domains and mailboxes written straight to the test database, with traits.

factory_boy's SQLAlchemy factories, in the caller's session and transaction (flushed, never
committed: the test's ``session.begin()`` commits).  An account is found or created by its
login, a holder by its account and key, a domain by its name, as the import stores them::

    with session_factory() as session, session.begin():
        mailbox = make_mailbox(session, expires_on=date(2027, 3, 31), card=True, company=True)

Traits (keyword flags of :func:`make_mailbox` and :class:`MailboxFactory`):

``card``
    auto-renew with a card that pays (the sandbox's ``pm_card_visa``);
``paypal``
    auto-renew with PayPal (the sandbox's ``paypal_ok``);
``card_expiring``
    auto-renew with a card that expires before its charge day (at the end of the month before);
``on_domain``
    on a customer domain (``rossi-srl.example.it`` unless ``domain`` names one);
``expired``
    expired 30 days before ``today``, the day the test stands on (2027-01-10 unless given:
    ``make_mailbox(session, expired=True, today=DAY)``);
``company`` / ``public_administration``
    a company (``Rossi S.r.l.``, VAT number and SDI code) or a public administration (its
    11-digit codice fiscale and office code) as the holder;
``english``
    the holder's language is English.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import date, timedelta
from typing import Any

import factory
from factory.alchemy import SQLAlchemyModelFactory
from sqlalchemy.orm import Session

from worker.rules.auto_renew import charge_on
from worker.rules.schedule import DEFAULT_STAGES, first_action_on
from worker.rules.vocabulary import PRIVATE, PUBLIC_ADMINISTRATION, HolderKind
from worker.store.models import Account, Domain, Holder, Mailbox

#: The session the factories write to: the one :func:`make_mailbox` (or :func:`writing_to`) was given.
_session: ContextVar[Session] = ContextVar("factory_session")

#: Valid Italian identifiers for the holder traits (check digits included).
COMPANY_VAT_NUMBER = "00743110157"
AGENCY_TAX_CODE = "80001250580"
COMPANY_NAME = "Rossi S.r.l."
AGENCY_NAME = "Comune di Roccasecca"


@contextmanager
def writing_to(session: Session) -> Iterator[Session]:
    """The factories create their rows in ``session`` within this block."""
    token = _session.set(session)
    try:
        yield session
    finally:
        _session.reset(token)


def _current_session() -> Session:
    try:
        return _session.get()
    except LookupError:
        raise RuntimeError("the factories need a session: make_mailbox(session, ...) or writing_to(session)") from None


class _ModelFactory(SQLAlchemyModelFactory):
    class Meta:
        abstract = True
        sqlalchemy_session_factory = _current_session
        sqlalchemy_session_persistence = "flush"


class AccountFactory(_ModelFactory):
    class Meta:
        model = Account
        sqlalchemy_get_or_create = ("login",)

    login = factory.Sequence(lambda n: f"titolare{n}@example.it")


class HolderFactory(_ModelFactory):
    class Meta:
        model = Holder
        sqlalchemy_get_or_create = ("account", "holder_key")

    class Params:
        company = factory.Trait(
            name=COMPANY_NAME,
            kind=HolderKind.COMPANY.value,
            vat_number=COMPANY_VAT_NUMBER,
            tax_code=COMPANY_VAT_NUMBER,
            sdi_code="M5UXCR1",
        )
        public_administration = factory.Trait(
            name=AGENCY_NAME,
            kind=PUBLIC_ADMINISTRATION,
            tax_code=AGENCY_TAX_CODE,
            office_code="UF3XQ2",
        )

    account = factory.SubFactory(AccountFactory, login=factory.SelfAttribute("..reference_email"))
    name = "Mario Rossi"
    kind = PRIVATE
    reference_email = factory.Sequence(lambda n: f"titolare{n}@example.it")
    holder_key = factory.LazyAttribute(lambda o: hashlib.sha256(f"{o.name}|{o.reference_email}".encode()).hexdigest())


class DomainFactory(_ModelFactory):
    class Meta:
        model = Domain
        sqlalchemy_get_or_create = ("name",)

    name = "rossi-srl.example.it"
    expires_on = date(2027, 3, 31)


def _end_of_previous_month(day: date) -> date:
    return day.replace(day=1) - timedelta(days=1)


class MailboxFactory(_ModelFactory):
    class Meta:
        model = Mailbox

    class Params:
        number = factory.Sequence(lambda n: n + 1)
        #: The day the ``expired`` trait counts back from.
        today = date(2027, 1, 10)
        holder_name = "Mario Rossi"
        domain_name = "rossi-srl.example.it"
        #: The schedule its first action is computed with.
        stages = DEFAULT_STAGES
        card = factory.Trait(auto_renew=True, payment_method="pm_card_visa")
        paypal = factory.Trait(auto_renew=True, payment_method="paypal_ok")
        card_expiring = factory.Trait(
            card=True, card_expires_on=factory.LazyAttribute(lambda o: _end_of_previous_month(charge_on(o.expires_on)))
        )
        on_domain = factory.Trait(
            domain=factory.SubFactory(
                DomainFactory,
                name=factory.SelfAttribute("..domain_name"),
                expires_on=factory.SelfAttribute("..expires_on"),
            )
        )
        expired = factory.Trait(expires_on=factory.LazyAttribute(lambda o: o.today - timedelta(days=30)))
        company = factory.Trait(holder__company=True, holder_name=COMPANY_NAME)
        public_administration = factory.Trait(holder__public_administration=True, holder_name=AGENCY_NAME)
        english = factory.Trait(language="en")

    reference_email = factory.LazyAttribute(lambda o: f"titolare{o.number}@example.it")
    expires_on = date(2027, 3, 31)
    domain = None
    address = factory.LazyAttribute(
        lambda o: (
            f"info{o.number}@pec.{o.domain.name}"
            if o.domain is not None
            else f"casella{o.number}@pec.provider.example.it"
        )
    )
    holder = factory.SubFactory(
        HolderFactory,
        name=factory.SelfAttribute("..holder_name"),
        reference_email=factory.SelfAttribute("..reference_email"),
    )
    account = factory.SelfAttribute("holder.account")
    plan = "standard"
    extra_space_gb = 0
    extra_archive_gb = 0
    used_space_mb = 100
    auto_renew = False
    payment_method = None
    card_expires_on = None
    renewal_years = 1
    promo = False
    language = "it"
    next_action_on = factory.LazyAttribute(lambda o: first_action_on(o.stages, o.expires_on))


def make_mailbox(
    session: Session, *, domain: str | None = None, reference_email: str | None = None, **attributes: Any
) -> Mailbox:
    """A mailbox (and its account, holder and domain), flushed in ``session``; traits and columns as keywords.

    ``domain`` names the customer domain it is on (the ``on_domain`` trait), ``holder_name`` its
    holder; ``reference_email`` is the holder's reference address and the account's login.
    """
    if domain is not None:
        attributes.update(on_domain=True, domain_name=domain)
    if reference_email is not None:
        attributes["reference_email"] = reference_email
    with writing_to(session):
        return MailboxFactory(**attributes)

"""The fleet: accounts, holders, domains, mailboxes and when the daily scan next looks at each mailbox."""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import Boolean, Date, ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.ext.associationproxy import AssociationProxy, association_proxy
from sqlalchemy.orm import Mapped, mapped_column, relationship

from worker.store.models.base import Base, Id, UTCDateTime


class Account(Base):
    """A customer login; it can own many mailboxes."""

    __tablename__ = "accounts"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    login: Mapped[str] = mapped_column(String(254), unique=True)


class Holder(Base):
    """The "Dati intestatario": who holds a mailbox, and where notices go."""

    __tablename__ = "holders"
    __table_args__ = (UniqueConstraint("account_id", "holder_key"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    #: A digest of the fields below, so identical holder data is stored once per account.
    holder_key: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(32))
    tax_code: Mapped[str | None] = mapped_column(String(16))
    vat_number: Mapped[str | None] = mapped_column(String(11))
    reference_email: Mapped[str] = mapped_column(String(254))
    postal_address: Mapped[str | None] = mapped_column(String(300))
    #: E-invoicing: a 7-character SDI recipient code, a PEC address, or a
    #: public administration's 6-character office code (with CIG and CUP).
    sdi_code: Mapped[str | None] = mapped_column(String(7))
    einvoice_pec: Mapped[str | None] = mapped_column(String(254))
    office_code: Mapped[str | None] = mapped_column(String(6))
    cig: Mapped[str | None] = mapped_column(String(10))
    cup: Mapped[str | None] = mapped_column(String(15))
    #: The billing address an electronic invoice needs (all set or all NULL; the country is ISO 3166 alpha-2).
    billing_address: Mapped[str | None] = mapped_column(String(60))
    billing_postcode: Mapped[str | None] = mapped_column(String(10))
    billing_city: Mapped[str | None] = mapped_column(String(60))
    billing_province: Mapped[str | None] = mapped_column(String(2))
    billing_country: Mapped[str | None] = mapped_column(String(2))

    account: Mapped[Account] = relationship()


class Domain(Base):
    """A customer domain; its mailboxes (name@pec.theirdomain.it) share its expiry."""

    __tablename__ = "domains"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    name: Mapped[str] = mapped_column(String(253), unique=True)
    expires_on: Mapped[date] = mapped_column(Date)


class Mailbox(Base):
    __tablename__ = "mailboxes"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    address: Mapped[str] = mapped_column(String(254), unique=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    holder_id: Mapped[int] = mapped_column(ForeignKey("holders.id"), index=True)
    #: A copy of the holder's reference address, where every notice goes: the
    #: daily scan groups the due rows by it without a lookup per row.  Holder
    #: rows never change in place (new data is a new row), so it is set
    #: wherever ``holder_id`` is.
    reference_email: Mapped[str] = mapped_column(String(254))
    domain_id: Mapped[int | None] = mapped_column(ForeignKey("domains.id"), index=True)
    plan: Mapped[str] = mapped_column(String(16))
    extra_space_gb: Mapped[int] = mapped_column(Integer, default=0)
    extra_archive_gb: Mapped[int] = mapped_column(Integer, default=0)
    used_space_mb: Mapped[int] = mapped_column(Integer, default=0)
    #: For a mailbox on a domain, a copy of the domain's expiry, kept in step.  Indexed for the
    #: day's platform events (the mailboxes that expired or were deleted in the last days).
    expires_on: Mapped[date] = mapped_column(Date, index=True)
    auto_renew: Mapped[bool] = mapped_column(Boolean, default=False)
    payment_method: Mapped[str | None] = mapped_column(String(200))
    #: The last day of the stored card's expiry month.
    card_expires_on: Mapped[date | None] = mapped_column(Date)
    renewal_years: Mapped[int] = mapped_column(Integer, default=1)
    promo: Mapped[bool] = mapped_column(Boolean, default=False)
    language: Mapped[str] = mapped_column(String(2), default="it")
    #: The holder opted out of the expiry reminders for the cycle ending on this date (the
    #: ``List-Unsubscribe`` link, or "Non intendo rinnovare"); once ``expires_on`` moves on
    #: (a renewal, the next cycle) it no longer applies.  Written only by the holder's choice,
    #: never by the scan; not indexed.  ``_at`` and ``_via`` say when and how.
    reminders_opt_out_for: Mapped[date | None] = mapped_column(Date)
    reminders_opt_out_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    reminders_opt_out_via: Mapped[str | None] = mapped_column(String(16))

    account: Mapped[Account] = relationship()
    holder: Mapped[Holder] = relationship()
    domain: Mapped[Domain | None] = relationship()
    schedule: Mapped[MailboxSchedule | None] = relationship(
        back_populates="mailbox", cascade="all, delete-orphan", passive_deletes=True
    )
    #: The mailbox's ``MailboxSchedule.next_action_on``, read and set on its schedule row (created
    #: when first set).  For the ORM's single rows; statements name ``MailboxSchedule`` itself.
    next_action_on: AssociationProxy[date | None] = association_proxy(
        "schedule", "next_action_on", creator=lambda on: MailboxSchedule(next_action_on=on)
    )

    @property
    def holder_kind(self) -> str:
        """The holder's kind, as the scan's and the charge service's selects name it (``holder_kind``)."""
        return self.holder.kind


class MailboxSchedule(Base):
    """When the daily scan must next look at a mailbox: one narrow row per mailbox.

    Apart from ``mailboxes`` so that a day's churn stays off the wide row: the
    scan, a notice batch, a charge and a registered payment move the date, and
    each move of an indexed column writes a new row version and an entry into
    every index of its table.  Here that is a 40-byte row and two small
    indexes (the key and ``next_action_on``), where ``mailboxes`` has six, the
    address's unique index among them.  The scan reads only rows with
    ``next_action_on <= today``.  NULL: never again (a deleted mailbox).

    Every writer of a mailbox writes its schedule row with it (the import, the
    demo); a mailbox without one is never looked at, as with NULL.
    """

    __tablename__ = "mailbox_schedule"
    __table_args__ = (
        # Autovacuum after every peak day, not after 20 % of the fleet has moved (see 0009's docstring
        # and docs/operations.md); a free tenth of each page for the moves' new row versions.
        {
            "postgresql_with": {
                "fillfactor": "90",
                "autovacuum_vacuum_scale_factor": "0.01",
                "autovacuum_analyze_scale_factor": "0.02",
            }
        },
    )

    mailbox_id: Mapped[int] = mapped_column(ForeignKey("mailboxes.id", ondelete="CASCADE"), primary_key=True)
    next_action_on: Mapped[date | None] = mapped_column(Date, index=True)

    mailbox: Mapped[Mailbox] = relationship(back_populates="schedule")

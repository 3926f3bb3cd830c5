"""sandbox_methods: the sandbox gateway's stored payment methods

The sandbox kept the test token the holder picked (``pm_card_visa``) on the mailbox.  It now
stores a method as Stripe does: its checkout (with auto-renew) and its page for a new method
create a ``pm_sbx_…`` (or ``paypal_sbx_…``) row with the card's brand, last 4 digits and expiry
and the test token it was made from; off-session charges of that id answer as the test card
would.  Tokens that came in through the import keep working as before.

A new, empty table: no lock on any existing one.

Revision ID: 0018
Revises: 0016
"""

import sqlalchemy as sa
from alembic import op

import worker.store.models

revision = "0018"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sandbox_methods",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("method_id", sa.String(length=64), nullable=False),
        sa.Column("behaviour", sa.String(length=200), nullable=False),
        sa.Column("brand", sa.String(length=32), nullable=False),
        sa.Column("last4", sa.String(length=4), nullable=True),
        sa.Column("exp_month", sa.Integer(), nullable=True),
        sa.Column("exp_year", sa.Integer(), nullable=True),
        sa.Column("source_key", sa.String(length=200), nullable=True),
        sa.Column("created_at", worker.store.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sandbox_methods")),
        sa.UniqueConstraint("method_id", name=op.f("uq_sandbox_methods_method_id")),
    )


def downgrade() -> None:
    op.drop_table("sandbox_methods")

"""sandbox_methods and sandbox_webhooks: the sandbox gateway's stored methods and its webhooks

The sandbox kept the test token the holder picked (``pm_card_visa``) on the mailbox.  It now
stores a method as Stripe does: its checkout (with auto-renew) and its page for a new method
create a ``pm_sbx_…`` (or ``paypal_sbx_…``) row with the card's brand, last 4 digits and expiry
and the test token it was made from; off-session charges of that id answer as the test card
would.  Tokens that came in through the import keep working as before.

``sandbox_webhooks`` holds the events the sandbox posts to our own ``/webhooks/sandbox`` (a
payment, an off-session charge, a refund), written with its record and sent afterwards by the
platform events' sender.

New, empty tables: no lock on any existing one.

Revision ID: 0018
Revises: 0017
"""

import sqlalchemy as sa
from alembic import op

import worker.store.models

revision = "0018"
down_revision = "0017"
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


    op.create_table(
        "sandbox_webhooks",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("webhook_id", sa.String(length=64), nullable=False),
        sa.Column("type", sa.String(length=40), nullable=False),
        sa.Column("stream_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("occurred_at", worker.store.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(length=10), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", worker.store.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("retrying_since", worker.store.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("delivered_at", worker.store.models.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sandbox_webhooks")),
        sa.UniqueConstraint("webhook_id", name=op.f("uq_sandbox_webhooks_webhook_id")),
    )
    op.create_index(
        "ix_sandbox_webhooks_pending",
        "sandbox_webhooks",
        ["stream_id", "id"],
        unique=False,
        postgresql_where=sa.text("status = 'pending'"),
        sqlite_where=sa.text("status = 'pending'"),
    )


def downgrade() -> None:
    op.drop_index("ix_sandbox_webhooks_pending", table_name="sandbox_webhooks")
    op.drop_table("sandbox_webhooks")
    op.drop_table("sandbox_methods")

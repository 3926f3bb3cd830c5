"""platform_events: the outbox of the changes the PEC platform must act on

One row per event (``mailbox.renewed``, ``mailbox.expired``, …), written in the transaction of
the change; delivered as signed webhooks, in ``id`` order per mailbox.  The partial index of
pending events serves the sender's claim and the check that an earlier event of the same
mailbox is still pending; that of failed events, their count.  ``mailboxes.expires_on`` gets an index for the day's step that
writes the expired and deleted events of the last days.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-06 08:00:00
"""
from alembic import op
import sqlalchemy as sa

import worker.store.models


revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'platform_events',
        sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
        sa.Column('webhook_id', sa.String(length=64), nullable=False),
        sa.Column('event_key', sa.String(length=200), nullable=False),
        sa.Column('type', sa.String(length=40), nullable=False),
        sa.Column('mailbox_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
        sa.Column('data', sa.JSON(), nullable=False),
        sa.Column('occurred_at', worker.store.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column('business_date', sa.Date(), nullable=False),
        sa.Column('status', sa.String(length=10), nullable=False),
        sa.Column('attempts', sa.Integer(), nullable=False),
        sa.Column('next_attempt_at', worker.store.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column('retrying_since', worker.store.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column('last_error', sa.Text(), nullable=True),
        sa.Column('delivered_at', worker.store.models.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_platform_events')),
        sa.UniqueConstraint('event_key', name=op.f('uq_platform_events_event_key')),
        sa.UniqueConstraint('webhook_id', name=op.f('uq_platform_events_webhook_id')),
    )
    with op.batch_alter_table('platform_events') as batch_op:
        batch_op.create_index(batch_op.f('ix_platform_events_business_date'), ['business_date'], unique=False)
        batch_op.create_index(
            'ix_platform_events_pending',
            ['mailbox_id', 'id'],
            unique=False,
            postgresql_where=sa.text("status = 'pending'"),
            sqlite_where=sa.text("status = 'pending'"),
        )
        batch_op.create_index(
            'ix_platform_events_failed',
            ['id'],
            unique=False,
            postgresql_where=sa.text("status = 'failed'"),
            sqlite_where=sa.text("status = 'failed'"),
        )
    with op.batch_alter_table('mailboxes') as batch_op:
        batch_op.create_index(batch_op.f('ix_mailboxes_expires_on'), ['expires_on'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('mailboxes') as batch_op:
        batch_op.drop_index(batch_op.f('ix_mailboxes_expires_on'))
    op.drop_table('platform_events')

"""outbox indexes: a partial index of pending messages and one of failed ones; none on to_address

A message is written three times (the insert, the relay's lease, the outcome), and each write
adds an entry to every index of the table (the lease and the outcome change an indexed column,
so PostgreSQL cannot update in place).  ``(status, next_attempt_at)`` held every message ever
sent; the pending index holds only what is still to send, so an outcome adds nothing to it.
``to_address`` was indexed but no query looks messages up by address.

Building the indexes reads the whole outbox and holds off writes to it meanwhile (seconds per
few million messages): run the upgrade when no relay is delivering, as for any migration.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-26 06:30:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        'ix_outbox_messages_pending', 'outbox_messages', ['next_attempt_at'], unique=False,
        postgresql_where=sa.text("status = 'pending'"), sqlite_where=sa.text("status = 'pending'"),
    )
    op.create_index(
        'ix_outbox_messages_failed', 'outbox_messages', ['id'], unique=False,
        postgresql_where=sa.text("status = 'failed'"), sqlite_where=sa.text("status = 'failed'"),
    )
    op.drop_index('ix_outbox_messages_due', table_name='outbox_messages')
    op.drop_index('ix_outbox_messages_to_address', table_name='outbox_messages')


def downgrade() -> None:
    op.create_index('ix_outbox_messages_to_address', 'outbox_messages', ['to_address'], unique=False)
    op.create_index('ix_outbox_messages_due', 'outbox_messages', ['status', 'next_attempt_at'], unique=False)
    op.drop_index('ix_outbox_messages_failed', table_name='outbox_messages')
    op.drop_index('ix_outbox_messages_pending', table_name='outbox_messages')

"""charge intents

Revision ID: 0005
Revises: 0004
"""
from alembic import op
import sqlalchemy as sa
import worker.store.models


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('charge_intents',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('mailbox_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('cycle_expires_on', sa.Date(), nullable=False),
    sa.Column('attempt', sa.Integer(), nullable=False),
    sa.Column('idempotency_key', sa.String(length=200), nullable=False),
    sa.Column('amount_cents', sa.Integer(), nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('payment_method', sa.String(length=200), nullable=False),
    sa.Column('years', sa.Integer(), nullable=False),
    sa.Column('status', sa.String(length=32), nullable=False),
    sa.Column('reference', sa.String(length=200), nullable=True),
    sa.Column('decline_code', sa.String(length=64), nullable=True),
    sa.Column('business_date', sa.Date(), nullable=False),
    sa.Column('created_at', worker.store.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('resolved_at', worker.store.models.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['mailbox_id'], ['mailboxes.id'], name=op.f('fk_charge_intents_mailbox_id_mailboxes'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_charge_intents')),
    sa.UniqueConstraint('idempotency_key', name=op.f('uq_charge_intents_idempotency_key')),
    sa.UniqueConstraint('mailbox_id', 'cycle_expires_on', 'attempt', name='uq_charge_intents_attempt'),
    )
    op.create_index(op.f('ix_charge_intents_mailbox_id'), 'charge_intents', ['mailbox_id'], unique=False)
    op.create_index('ix_charge_intents_unresolved', 'charge_intents', ['status'], unique=False,
                    postgresql_where=sa.text("status IN ('started', 'unknown')"))


def downgrade() -> None:
    op.drop_index('ix_charge_intents_unresolved', table_name='charge_intents')
    op.drop_index(op.f('ix_charge_intents_mailbox_id'), table_name='charge_intents')
    op.drop_table('charge_intents')

"""gateway_events (webhook events, each processed once) and gateway_refunds

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06 08:00:00
"""
from alembic import op
import sqlalchemy as sa
import worker.store.models


revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def upgrade() -> None:
    op.create_table('gateway_events',
    sa.Column('id', _ID, nullable=False),
    sa.Column('gateway', sa.String(length=16), nullable=False),
    sa.Column('event_id', sa.String(length=255), nullable=False),
    sa.Column('event_type', sa.String(length=64), nullable=False),
    sa.Column('outcome', sa.String(length=32), nullable=False),
    sa.Column('order_number', sa.String(length=24), nullable=True),
    sa.Column('payment_reference', sa.String(length=200), nullable=True),
    sa.Column('amount_cents', sa.Integer(), nullable=True),
    sa.Column('currency', sa.String(length=3), nullable=True),
    sa.Column('detail', sa.Text(), nullable=True),
    sa.Column('received_at', worker.store.models.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_gateway_events')),
    sa.UniqueConstraint('gateway', 'event_id', name='uq_gateway_events_event'),
    )
    op.create_index(op.f('ix_gateway_events_outcome'), 'gateway_events', ['outcome'], unique=False)
    op.create_index(op.f('ix_gateway_events_order_number'), 'gateway_events', ['order_number'], unique=False)
    op.create_index(op.f('ix_gateway_events_payment_reference'), 'gateway_events', ['payment_reference'], unique=False)
    op.create_table('gateway_refunds',
    sa.Column('id', _ID, nullable=False),
    sa.Column('gateway', sa.String(length=16), nullable=False),
    sa.Column('order_id', _ID, nullable=True),
    sa.Column('payment_reference', sa.String(length=200), nullable=False),
    sa.Column('idempotency_key', sa.String(length=200), nullable=False),
    sa.Column('amount_cents', sa.Integer(), nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('reason', sa.String(length=200), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('refund_reference', sa.String(length=200), nullable=True),
    sa.Column('created_at', worker.store.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('resolved_at', worker.store.models.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['order_id'], ['renewal_orders.id'], name=op.f('fk_gateway_refunds_order_id_renewal_orders')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_gateway_refunds')),
    sa.UniqueConstraint('idempotency_key', name=op.f('uq_gateway_refunds_idempotency_key')),
    )
    op.create_index(op.f('ix_gateway_refunds_order_id'), 'gateway_refunds', ['order_id'], unique=False)
    op.create_index(op.f('ix_gateway_refunds_payment_reference'), 'gateway_refunds', ['payment_reference'], unique=False)
    op.create_index(op.f('ix_gateway_refunds_status'), 'gateway_refunds', ['status'], unique=False)


def downgrade() -> None:
    op.drop_table('gateway_refunds')
    op.drop_table('gateway_events')

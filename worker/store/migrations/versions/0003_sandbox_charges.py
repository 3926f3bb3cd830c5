"""sandbox charges

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25 23:21:07.131758
"""
from alembic import op
import sqlalchemy as sa
import worker.store.models


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('sandbox_charges',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('idempotency_key', sa.String(length=200), nullable=False),
    sa.Column('payment_method', sa.String(length=200), nullable=False),
    sa.Column('amount_cents', sa.Integer(), nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('outcome', sa.String(length=32), nullable=False),
    sa.Column('reference', sa.String(length=64), nullable=False),
    sa.Column('description', sa.Text(), nullable=True),
    sa.Column('at', worker.store.models.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_sandbox_charges')),
    sa.UniqueConstraint('idempotency_key', name=op.f('uq_sandbox_charges_idempotency_key')),
    sa.UniqueConstraint('reference', name=op.f('uq_sandbox_charges_reference'))
    )


def downgrade() -> None:
    op.drop_table('sandbox_charges')

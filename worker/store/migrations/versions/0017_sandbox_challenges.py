"""sandbox_challenges: the sandbox gateway's 3-D Secure challenges and the holder's answers

A small table of the sandbox gateway (never written with another gateway): one row per
challenge page opened for a charge that asked for the holder's authentication.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-06 10:40:00
"""
from alembic import op
import sqlalchemy as sa

import worker.store.models


revision = '0017'
down_revision = '0016'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'sandbox_challenges',
        sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
        sa.Column('public_id', sa.String(length=64), nullable=False),
        sa.Column('charge_reference', sa.String(length=64), nullable=False),
        sa.Column('return_path', sa.String(length=500), nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('created_at', worker.store.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column('decided_at', worker.store.models.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_sandbox_challenges')),
        sa.UniqueConstraint('public_id', name=op.f('uq_sandbox_challenges_public_id')),
    )
    with op.batch_alter_table('sandbox_challenges') as batch_op:
        batch_op.create_index(
            batch_op.f('ix_sandbox_challenges_charge_reference'), ['charge_reference'], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table('sandbox_challenges') as batch_op:
        batch_op.drop_index(batch_op.f('ix_sandbox_challenges_charge_reference'))
    op.drop_table('sandbox_challenges')

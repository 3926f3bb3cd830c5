"""worker state

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 23:19:37.201577
"""
from alembic import op
import sqlalchemy as sa
import worker.store.models


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('worker_state',
    sa.Column('key', sa.String(length=60), nullable=False),
    sa.Column('value', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('key', name=op.f('pk_worker_state'))
    )


def downgrade() -> None:
    op.drop_table('worker_state')

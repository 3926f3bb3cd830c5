"""renewal orders: when the holder approved the clauses of artt. 1341-1342 c.c. specifically

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06 07:15:00.000000
"""
from alembic import op
import sqlalchemy as sa

import worker.store.models


revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('renewal_orders', sa.Column('unfair_terms_approved_at', worker.store.models.UTCDateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('renewal_orders', schema=None) as batch_op:
        batch_op.drop_column('unfair_terms_approved_at')

"""mailbox reference email: a copy of the holder's reference address, the scan's grouping key

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26 00:16:26.595446
"""
from alembic import op
import sqlalchemy as sa


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('mailboxes', sa.Column('reference_email', sa.String(length=254), nullable=True))
    op.execute(
        "UPDATE mailboxes SET reference_email = "
        "(SELECT holders.reference_email FROM holders WHERE holders.id = mailboxes.holder_id)"
    )
    with op.batch_alter_table('mailboxes', schema=None) as batch_op:
        batch_op.alter_column('reference_email', existing_type=sa.String(length=254), nullable=False)


def downgrade() -> None:
    with op.batch_alter_table('mailboxes', schema=None) as batch_op:
        batch_op.drop_column('reference_email')

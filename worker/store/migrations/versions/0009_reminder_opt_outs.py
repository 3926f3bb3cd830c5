"""mailboxes.reminders_opt_out_for / _at / _via: the holder's "no more reminders" for one cycle

``reminders_opt_out_for`` is the expiry date the holder's choice applies to: while it equals
the mailbox's ``expires_on`` the scan sends no expiry reminders; a renewal, or an import that
starts the next cycle, moves ``expires_on`` on and the choice ends by itself.  Written only
when a holder opts out of the reminders or back in, never by the scan, and not indexed (nothing
looks mailboxes up by it).  Nullable columns without a default: on PostgreSQL adding them
rewrites no row.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06 08:00:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('mailboxes', sa.Column('reminders_opt_out_for', sa.Date(), nullable=True))
    op.add_column('mailboxes', sa.Column('reminders_opt_out_at', sa.DateTime(timezone=True), nullable=True))
    op.add_column('mailboxes', sa.Column('reminders_opt_out_via', sa.String(length=16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('mailboxes') as batch:
        batch.drop_column('reminders_opt_out_via')
        batch.drop_column('reminders_opt_out_at')
        batch.drop_column('reminders_opt_out_for')

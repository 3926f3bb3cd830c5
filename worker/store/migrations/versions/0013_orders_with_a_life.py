"""orders: a cancelled or lapsed order frees its link's cycle; a partial index of the open orders

``uq_renewal_orders_link`` made an order unique per link and cycle whatever its status, so a
cancelled order blocked its link for the rest of the cycle.  The unique index now holds only
the live orders (draft, awaiting payment, paid): never two of them for one link and cycle, and
after a cancel or a lapse the holder can start again.  The new status ``lapsed`` (an unpaid
order on its mailboxes' deletion date) needs no schema change; the open orders (draft, awaiting
payment), which the daily run reads to lapse them, get a partial index.  ``method_changes``
counts the payment-method changes of a confirmed order (each re-sends its confirmation).

The downgrade restores the old constraint, and fails if a link and cycle hold more than one
order by then (cancel or delete the extra ones first).

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06 07:30:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None

_LIVE = "status IN ('draft', 'awaiting_payment', 'paid')"
_OPEN = "status IN ('draft', 'awaiting_payment')"


def upgrade() -> None:
    with op.batch_alter_table('renewal_orders') as batch:
        batch.drop_constraint('uq_renewal_orders_link', type_='unique')
        batch.add_column(sa.Column('method_changes', sa.Integer(), server_default='0', nullable=False))
    op.create_index(
        'uq_renewal_orders_live_link', 'renewal_orders', ['link_target', 'link_target_id', 'link_cycle'],
        unique=True, postgresql_where=sa.text(_LIVE), sqlite_where=sa.text(_LIVE),
    )
    op.create_index(
        'ix_renewal_orders_open', 'renewal_orders', ['id'], unique=False,
        postgresql_where=sa.text(_OPEN), sqlite_where=sa.text(_OPEN),
    )


def downgrade() -> None:
    op.drop_index('ix_renewal_orders_open', table_name='renewal_orders')
    op.drop_index('uq_renewal_orders_live_link', table_name='renewal_orders')
    with op.batch_alter_table('renewal_orders') as batch:
        batch.drop_column('method_changes')
        batch.create_unique_constraint('uq_renewal_orders_link', ['link_target', 'link_target_id', 'link_cycle'])

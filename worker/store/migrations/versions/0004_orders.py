"""orders

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25 23:34:12.325445
"""
from alembic import op
import sqlalchemy as sa
import worker.store.models


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('renewal_orders',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('public_id', sa.String(length=64), nullable=False),
    sa.Column('order_number', sa.String(length=24), nullable=True),
    sa.Column('account_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('holder_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('origin', sa.String(length=20), nullable=False),
    sa.Column('link_target', sa.String(length=1), nullable=False),
    sa.Column('link_target_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('link_cycle', sa.Date(), nullable=False),
    sa.Column('language', sa.String(length=2), nullable=False),
    sa.Column('holder_data', sa.JSON(), nullable=True),
    sa.Column('mailboxes_confirmed', sa.Boolean(), nullable=False),
    sa.Column('payment_method', sa.String(length=20), nullable=True),
    sa.Column('years', sa.Integer(), nullable=True),
    sa.Column('terms_accepted_at', worker.store.models.UTCDateTime(timezone=True), nullable=True),
    sa.Column('subtotal_cents', sa.Integer(), nullable=True),
    sa.Column('vat_cents', sa.Integer(), nullable=True),
    sa.Column('total_cents', sa.Integer(), nullable=True),
    sa.Column('gateway_attempts', sa.Integer(), nullable=False),
    sa.Column('gateway_state', sa.String(length=32), nullable=True),
    sa.Column('gateway_token', sa.String(length=200), nullable=True),
    sa.Column('created_at', worker.store.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('confirmed_at', worker.store.models.UTCDateTime(timezone=True), nullable=True),
    sa.Column('paid_at', worker.store.models.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['account_id'], ['accounts.id'], name=op.f('fk_renewal_orders_account_id_accounts')),
    sa.ForeignKeyConstraint(['holder_id'], ['holders.id'], name=op.f('fk_renewal_orders_holder_id_holders')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_renewal_orders')),
    sa.UniqueConstraint('link_target', 'link_target_id', 'link_cycle', name='uq_renewal_orders_link'),
    sa.UniqueConstraint('order_number', name=op.f('uq_renewal_orders_order_number')),
    sa.UniqueConstraint('public_id', name=op.f('uq_renewal_orders_public_id'))
    )
    with op.batch_alter_table('renewal_orders', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_renewal_orders_account_id'), ['account_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_renewal_orders_holder_id'), ['holder_id'], unique=False)

    op.create_table('payments',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('order_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('method', sa.String(length=20), nullable=False),
    sa.Column('amount_cents', sa.Integer(), nullable=False),
    sa.Column('reference', sa.String(length=200), nullable=False),
    sa.Column('registered_at', worker.store.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('business_date', sa.Date(), nullable=False),
    sa.ForeignKeyConstraint(['order_id'], ['renewal_orders.id'], name=op.f('fk_payments_order_id_renewal_orders')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_payments')),
    sa.UniqueConstraint('order_id', 'reference', name='uq_payments_order_reference')
    )
    with op.batch_alter_table('payments', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_payments_order_id'), ['order_id'], unique=False)

    op.create_table('renewal_order_lines',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('order_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('mailbox_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('old_expires_on', sa.Date(), nullable=False),
    sa.Column('old_plan', sa.String(length=16), nullable=False),
    sa.Column('selected', sa.Boolean(), nullable=False),
    sa.Column('plan', sa.String(length=16), nullable=False),
    sa.Column('extra_space_gb', sa.Integer(), nullable=False),
    sa.Column('extra_archive_gb', sa.Integer(), nullable=False),
    sa.Column('archive_deletion_confirmed', sa.Boolean(), nullable=False),
    sa.Column('price_cents', sa.Integer(), nullable=True),
    sa.Column('new_expires_on', sa.Date(), nullable=True),
    sa.ForeignKeyConstraint(['mailbox_id'], ['mailboxes.id'], name=op.f('fk_renewal_order_lines_mailbox_id_mailboxes')),
    sa.ForeignKeyConstraint(['order_id'], ['renewal_orders.id'], name=op.f('fk_renewal_order_lines_order_id_renewal_orders'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_renewal_order_lines')),
    sa.UniqueConstraint('order_id', 'mailbox_id', name='uq_renewal_order_lines_mailbox')
    )
    with op.batch_alter_table('renewal_order_lines', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_renewal_order_lines_mailbox_id'), ['mailbox_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_renewal_order_lines_order_id'), ['order_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('renewal_order_lines', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_renewal_order_lines_order_id'))
        batch_op.drop_index(batch_op.f('ix_renewal_order_lines_mailbox_id'))

    op.drop_table('renewal_order_lines')
    with op.batch_alter_table('payments', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_payments_order_id'))

    op.drop_table('payments')
    with op.batch_alter_table('renewal_orders', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_renewal_orders_holder_id'))
        batch_op.drop_index(batch_op.f('ix_renewal_orders_account_id'))

    op.drop_table('renewal_orders')

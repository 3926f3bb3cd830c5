"""electronic invoices: invoices, invoice_counters, and the holders' billing address

``invoices``: one electronic invoice (TD01) per paid order and per successful auto-renew
charge, and one credit note (TD04) per refund, with the data that render its XML;
numbered without gaps per calendar year from ``invoice_counters``.  ``holders`` gains
the billing address the invoices need (NULL for every holder until an import gives it).

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-06 08:30:00
"""
from alembic import op
import sqlalchemy as sa
import worker.store.models


revision = '0015'
down_revision = '0014'
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')
_BILLING = (
    ('billing_address', 60),
    ('billing_postcode', 10),
    ('billing_city', 60),
    ('billing_province', 2),
    ('billing_country', 2),
)


def upgrade() -> None:
    with op.batch_alter_table('holders') as batch:
        for name, length in _BILLING:
            batch.add_column(sa.Column(name, sa.String(length=length), nullable=True))
    op.create_table('invoice_counters',
    sa.Column('year', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('last_number', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('year', name=op.f('pk_invoice_counters')),
    )
    op.create_table('invoices',
    sa.Column('id', _ID, nullable=False),
    sa.Column('kind', sa.String(length=4), nullable=False),
    sa.Column('status', sa.String(length=10), nullable=False),
    sa.Column('waiting_reason', sa.String(length=100), nullable=True),
    sa.Column('year', sa.Integer(), nullable=True),
    sa.Column('number', sa.Integer(), nullable=True),
    sa.Column('document_number', sa.String(length=20), nullable=True),
    sa.Column('issued_on', sa.Date(), nullable=True),
    sa.Column('order_id', _ID, nullable=True),
    sa.Column('charge_intent_id', _ID, nullable=True),
    sa.Column('corrects_invoice_id', _ID, nullable=True),
    sa.Column('refund_key', sa.String(length=200), nullable=True),
    sa.Column('mailbox_id', _ID, nullable=False),
    sa.Column('payment_method', sa.String(length=20), nullable=False),
    sa.Column('paid_cents', sa.Integer(), nullable=False),
    sa.Column('reference', sa.String(length=200), nullable=False),
    sa.Column('paid_on', sa.Date(), nullable=False),
    sa.Column('buyer', sa.JSON(), nullable=False),
    sa.Column('lines', sa.JSON(), nullable=False),
    sa.Column('subtotal_cents', sa.Integer(), nullable=False),
    sa.Column('vat_cents', sa.Integer(), nullable=False),
    sa.Column('created_at', worker.store.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('exported_at', worker.store.models.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['order_id'], ['renewal_orders.id'], name=op.f('fk_invoices_order_id_renewal_orders')),
    sa.ForeignKeyConstraint(['charge_intent_id'], ['charge_intents.id'], name=op.f('fk_invoices_charge_intent_id_charge_intents')),
    sa.ForeignKeyConstraint(['corrects_invoice_id'], ['invoices.id'], name=op.f('fk_invoices_corrects_invoice_id_invoices')),
    sa.ForeignKeyConstraint(['mailbox_id'], ['mailboxes.id'], name=op.f('fk_invoices_mailbox_id_mailboxes')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_invoices')),
    sa.UniqueConstraint('year', 'number', name='uq_invoices_year_number'),
    sa.UniqueConstraint('order_id', name=op.f('uq_invoices_order_id')),
    sa.UniqueConstraint('charge_intent_id', name=op.f('uq_invoices_charge_intent_id')),
    sa.UniqueConstraint('refund_key', name=op.f('uq_invoices_refund_key')),
    )
    op.create_index(op.f('ix_invoices_issued_on'), 'invoices', ['issued_on'], unique=False)
    op.create_index(op.f('ix_invoices_corrects_invoice_id'), 'invoices', ['corrects_invoice_id'], unique=False)
    op.create_index(op.f('ix_invoices_mailbox_id'), 'invoices', ['mailbox_id'], unique=False)
    op.create_index('ix_invoices_waiting', 'invoices', ['id'], unique=False,
                    postgresql_where=sa.text("status = 'waiting'"), sqlite_where=sa.text("status = 'waiting'"))
    op.create_index('ix_invoices_unnumbered', 'invoices', ['id'], unique=False,
                    postgresql_where=sa.text("status = 'issued' AND number IS NULL"),
                    sqlite_where=sa.text("status = 'issued' AND number IS NULL"))


def downgrade() -> None:
    op.drop_index('ix_invoices_unnumbered', table_name='invoices')
    op.drop_index('ix_invoices_waiting', table_name='invoices')
    op.drop_index(op.f('ix_invoices_mailbox_id'), table_name='invoices')
    op.drop_index(op.f('ix_invoices_corrects_invoice_id'), table_name='invoices')
    op.drop_index(op.f('ix_invoices_issued_on'), table_name='invoices')
    op.drop_table('invoices')
    op.drop_table('invoice_counters')
    with op.batch_alter_table('holders') as batch:
        for name, _length in reversed(_BILLING):
            batch.drop_column(name)

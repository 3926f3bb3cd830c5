"""initial schema

Revision ID: 0001
Revises: 
Create Date: 2026-11-25 22:50:18.057179
"""
from alembic import op
import sqlalchemy as sa
import worker.store.models


revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('accounts',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('login', sa.String(length=254), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_accounts')),
    sa.UniqueConstraint('login', name=op.f('uq_accounts_login'))
    )
    op.create_table('bounced_addresses',
    sa.Column('address', sa.String(length=254), nullable=False),
    sa.Column('first_bounced_at', worker.store.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('last_bounced_at', worker.store.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('bounces', sa.Integer(), nullable=False),
    sa.Column('last_reply', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('address', name=op.f('pk_bounced_addresses'))
    )
    op.create_table('daily_runs',
    sa.Column('business_date', sa.Date(), nullable=False),
    sa.Column('started_at', worker.store.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('finished_at', worker.store.models.UTCDateTime(timezone=True), nullable=True),
    sa.Column('summary', sa.JSON(), nullable=True),
    sa.PrimaryKeyConstraint('business_date', name=op.f('pk_daily_runs'))
    )
    op.create_table('domains',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('name', sa.String(length=253), nullable=False),
    sa.Column('expires_on', sa.Date(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_domains')),
    sa.UniqueConstraint('name', name=op.f('uq_domains_name'))
    )
    op.create_table('outbox_messages',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('message_id', sa.String(length=200), nullable=False),
    sa.Column('kind', sa.String(length=40), nullable=False),
    sa.Column('stage', sa.String(length=8), nullable=False),
    sa.Column('language', sa.String(length=2), nullable=False),
    sa.Column('to_address', sa.String(length=254), nullable=False),
    sa.Column('business_date', sa.Date(), nullable=False),
    sa.Column('context', sa.JSON(), nullable=False),
    sa.Column('status', sa.String(length=10), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('next_attempt_at', worker.store.models.UTCDateTime(timezone=True), nullable=True),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('created_at', worker.store.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('sent_at', worker.store.models.UTCDateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_outbox_messages')),
    sa.UniqueConstraint('message_id', name=op.f('uq_outbox_messages_message_id'))
    )
    with op.batch_alter_table('outbox_messages', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_outbox_messages_business_date'), ['business_date'], unique=False)
        batch_op.create_index('ix_outbox_messages_due', ['status', 'next_attempt_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_outbox_messages_to_address'), ['to_address'], unique=False)

    op.create_table('holders',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('account_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('holder_key', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('tax_code', sa.String(length=16), nullable=True),
    sa.Column('vat_number', sa.String(length=11), nullable=True),
    sa.Column('reference_email', sa.String(length=254), nullable=False),
    sa.Column('postal_address', sa.String(length=300), nullable=True),
    sa.Column('sdi_code', sa.String(length=7), nullable=True),
    sa.Column('einvoice_pec', sa.String(length=254), nullable=True),
    sa.Column('office_code', sa.String(length=6), nullable=True),
    sa.Column('cig', sa.String(length=10), nullable=True),
    sa.Column('cup', sa.String(length=15), nullable=True),
    sa.ForeignKeyConstraint(['account_id'], ['accounts.id'], name=op.f('fk_holders_account_id_accounts')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_holders')),
    sa.UniqueConstraint('account_id', 'holder_key', name=op.f('uq_holders_account_id'))
    )
    with op.batch_alter_table('holders', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_holders_account_id'), ['account_id'], unique=False)

    op.create_table('mailboxes',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('address', sa.String(length=254), nullable=False),
    sa.Column('account_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('holder_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('domain_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('plan', sa.String(length=16), nullable=False),
    sa.Column('extra_space_gb', sa.Integer(), nullable=False),
    sa.Column('extra_archive_gb', sa.Integer(), nullable=False),
    sa.Column('used_space_mb', sa.Integer(), nullable=False),
    sa.Column('expires_on', sa.Date(), nullable=False),
    sa.Column('auto_renew', sa.Boolean(), nullable=False),
    sa.Column('payment_method', sa.String(length=200), nullable=True),
    sa.Column('card_expires_on', sa.Date(), nullable=True),
    sa.Column('renewal_years', sa.Integer(), nullable=False),
    sa.Column('promo', sa.Boolean(), nullable=False),
    sa.Column('language', sa.String(length=2), nullable=False),
    sa.Column('next_action_on', sa.Date(), nullable=True),
    sa.ForeignKeyConstraint(['account_id'], ['accounts.id'], name=op.f('fk_mailboxes_account_id_accounts')),
    sa.ForeignKeyConstraint(['domain_id'], ['domains.id'], name=op.f('fk_mailboxes_domain_id_domains')),
    sa.ForeignKeyConstraint(['holder_id'], ['holders.id'], name=op.f('fk_mailboxes_holder_id_holders')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_mailboxes')),
    sa.UniqueConstraint('address', name=op.f('uq_mailboxes_address'))
    )
    with op.batch_alter_table('mailboxes', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_mailboxes_account_id'), ['account_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_mailboxes_domain_id'), ['domain_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_mailboxes_holder_id'), ['holder_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_mailboxes_next_action_on'), ['next_action_on'], unique=False)

    op.create_table('notice_ledger',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('mailbox_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('cycle_expires_on', sa.Date(), nullable=False),
    sa.Column('stage', sa.String(length=8), nullable=False),
    sa.Column('kind', sa.String(length=40), nullable=False),
    sa.Column('business_date', sa.Date(), nullable=False),
    sa.Column('outbox_message_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.ForeignKeyConstraint(['mailbox_id'], ['mailboxes.id'], name=op.f('fk_notice_ledger_mailbox_id_mailboxes'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['outbox_message_id'], ['outbox_messages.id'], name=op.f('fk_notice_ledger_outbox_message_id_outbox_messages')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_notice_ledger')),
    sa.UniqueConstraint('mailbox_id', 'cycle_expires_on', 'stage', name='uq_notice_ledger_key')
    )
    with op.batch_alter_table('notice_ledger', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_notice_ledger_business_date'), ['business_date'], unique=False)
        batch_op.create_index(batch_op.f('ix_notice_ledger_outbox_message_id'), ['outbox_message_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('notice_ledger', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_notice_ledger_outbox_message_id'))
        batch_op.drop_index(batch_op.f('ix_notice_ledger_business_date'))

    op.drop_table('notice_ledger')
    with op.batch_alter_table('mailboxes', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_mailboxes_next_action_on'))
        batch_op.drop_index(batch_op.f('ix_mailboxes_holder_id'))
        batch_op.drop_index(batch_op.f('ix_mailboxes_domain_id'))
        batch_op.drop_index(batch_op.f('ix_mailboxes_account_id'))

    op.drop_table('mailboxes')
    with op.batch_alter_table('holders', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_holders_account_id'))

    op.drop_table('holders')
    with op.batch_alter_table('outbox_messages', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_outbox_messages_to_address'))
        batch_op.drop_index('ix_outbox_messages_due')
        batch_op.drop_index(batch_op.f('ix_outbox_messages_business_date'))

    op.drop_table('outbox_messages')
    op.drop_table('domains')
    op.drop_table('daily_runs')
    op.drop_table('bounced_addresses')
    op.drop_table('accounts')

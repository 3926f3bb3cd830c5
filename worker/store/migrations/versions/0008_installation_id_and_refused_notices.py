"""the installation id (worker_state) and notice_ledger.refused_reason

``installation_id``: a random id of this installation, part of every Message-ID, so two
installations, or one rebuilt from scratch, never give one Message-ID to different emails.
Created here once; the downgrade keeps it, so an upgrade after a downgrade is still the same
installation (the worker also creates it at first use if the row is missing).

``refused_reason``: why the renderer refused a mailbox's notice (it was left out of its
email, or the whole email was refused); NULL for every notice until now.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 09:00:00
"""
import uuid

from alembic import op
import sqlalchemy as sa


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('notice_ledger', sa.Column('refused_reason', sa.Text(), nullable=True))
    worker_state = sa.table('worker_state', sa.column('key', sa.String), sa.column('value', sa.Text))
    exists = op.get_bind().execute(
        sa.select(worker_state.c.key).where(worker_state.c.key == 'installation_id')
    ).first()
    if exists is None:
        op.bulk_insert(worker_state, [{'key': 'installation_id', 'value': uuid.uuid4().hex}])


def downgrade() -> None:
    with op.batch_alter_table('notice_ledger') as batch:
        batch.drop_column('refused_reason')

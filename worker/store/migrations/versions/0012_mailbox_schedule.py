"""mailbox_schedule: the scan's next date of each mailbox, moved off the wide mailboxes row

``mailboxes.next_action_on`` moved on every peak day for every due mailbox, and as an indexed
column it made each move a new version of the widest row with an entry in each of its six
indexes (``uq_mailboxes_address`` alone 837 MB at 10M rows); no update of it was ever HOT.
The date now lives in ``mailbox_schedule`` (mailbox id, date): a narrow row with its key and
one index on the date, autovacuumed after every peak day (``autovacuum_vacuum_scale_factor``
0.01: 100,000 dead rows at 10M, where the default 0.2 waits for 2M, ten peak days) and with
a tenth of each page free for the moves' new row versions (``fillfactor`` 90).

The move is set-based: the table is created bare, filled with one ``INSERT … SELECT`` of
every mailbox (NULL dates included), then its primary key, its index on the date and its
foreign key are built once over the full table, and the old index and column are dropped.

``notice_ledger.mailbox_id`` now refers to ``mailbox_schedule`` (one row per mailbox,
deleted with it) instead of ``mailboxes``: the key check of every new ledger row takes a
``KEY SHARE`` lock on the row it refers to, and on ``mailboxes`` that lock was a WAL record
per notice and a full-page image of each mailboxes page touched (measured with
``pg_waldump``: 6 % of a peak day's WAL, 3.3 MB of full-page images per 20,000 notices,
for rows the day never changes).  On the schedule row the notice batch already holds the
row locked, so the check writes nothing.  The new foreign key is checked over the whole
ledger once (one join of the ledger with the new table).

Locks and time (PostgreSQL, which runs the whole upgrade in one transaction):

- ``mailboxes`` is locked ``SHARE`` from the start: the link pages and every read go on,
  every write to ``mailboxes`` (an import, a registered payment, a notice batch, a charge)
  waits until the end.  Stop beat and the workers for the upgrade, as for any migration;
  the link handler may stay up (a payment registered meanwhile waits, then goes through).
- ``mailbox_schedule`` is new: nothing else sees it before the commit.
- ``notice_ledger``: its new foreign key is checked in one pass over the ledger under
  ``SHARE ROW EXCLUSIVE`` (reads go on, writes wait), then the old one is dropped under
  ``ACCESS EXCLUSIVE`` on the ledger and on ``mailboxes``, held to the commit.
- At the end, dropping ``ix_mailboxes_next_action_on`` and the column takes ``ACCESS
  EXCLUSIVE`` on ``mailboxes`` (a catalog change, no rewrite) until the commit, a few
  milliseconds later: reads wait that long.
- Measured on 1M mailboxes (2 vCPU, PostgreSQL 15, default settings): see
  docs/operations.md, "Upgrading a live fleet to migration 0012"; it grows linearly, about ten
  times that at 10M.  The dropped column's space is reused by later row versions, not
  given back (``VACUUM FULL`` would rewrite the table under an exclusive lock: not needed).

On SQLite the same steps run, ``batch_alter_table`` rebuilding the tables where SQLite
cannot alter them.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06 07:30:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None

_STORAGE = {
    'fillfactor': '90',
    'autovacuum_vacuum_scale_factor': '0.01',
    'autovacuum_analyze_scale_factor': '0.02',
}


def upgrade() -> None:
    if op.get_context().dialect.name == 'postgresql':
        # No write to mailboxes between the copy and the drop of the column; reads go on.
        op.execute('LOCK TABLE mailboxes IN SHARE MODE')
        # The index builds below sort the whole table: in memory, not in temporary files.
        op.execute("SET LOCAL maintenance_work_mem = '256MB'")
    op.create_table(
        'mailbox_schedule',
        sa.Column('mailbox_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
        sa.Column('next_action_on', sa.Date(), nullable=True),
        postgresql_with=_STORAGE,
    )
    op.execute('INSERT INTO mailbox_schedule (mailbox_id, next_action_on) SELECT id, next_action_on FROM mailboxes')
    with op.batch_alter_table('mailbox_schedule') as batch_op:
        batch_op.create_primary_key('pk_mailbox_schedule', ['mailbox_id'])
        batch_op.create_foreign_key(
            'fk_mailbox_schedule_mailbox_id_mailboxes', 'mailboxes', ['mailbox_id'], ['id'], ondelete='CASCADE'
        )
    op.create_index('ix_mailbox_schedule_next_action_on', 'mailbox_schedule', ['next_action_on'], unique=False)
    # The new key first (checked while the link pages still read mailboxes), the old one dropped
    # last with the column: those two take ACCESS EXCLUSIVE on mailboxes until the commit.
    with op.batch_alter_table('notice_ledger') as batch_op:
        batch_op.create_foreign_key(
            'fk_notice_ledger_mailbox_id_mailbox_schedule', 'mailbox_schedule', ['mailbox_id'], ['mailbox_id'],
            ondelete='CASCADE',
        )
        batch_op.drop_constraint('fk_notice_ledger_mailbox_id_mailboxes', type_='foreignkey')
    with op.batch_alter_table('mailboxes') as batch_op:
        batch_op.drop_index('ix_mailboxes_next_action_on')
        batch_op.drop_column('next_action_on')


def downgrade() -> None:
    op.add_column('mailboxes', sa.Column('next_action_on', sa.Date(), nullable=True))
    op.execute(
        'UPDATE mailboxes SET next_action_on = '
        '(SELECT next_action_on FROM mailbox_schedule WHERE mailbox_schedule.mailbox_id = mailboxes.id)'
    )
    op.create_index('ix_mailboxes_next_action_on', 'mailboxes', ['next_action_on'], unique=False)
    with op.batch_alter_table('notice_ledger') as batch_op:
        batch_op.drop_constraint('fk_notice_ledger_mailbox_id_mailbox_schedule', type_='foreignkey')
        batch_op.create_foreign_key(
            'fk_notice_ledger_mailbox_id_mailboxes', 'mailboxes', ['mailbox_id'], ['id'], ondelete='CASCADE'
        )
    op.drop_table('mailbox_schedule')
